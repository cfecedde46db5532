"""EDC exports: CDISC-style CSV per domain, ODM 1.3.2 (schema-valid, partial dates kept), coverage."""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson
import pytest
import xmlschema

from fhir_adapter.crf.models import (
    AdverseEvent,
    ConMed,
    Demographics,
    Exposure,
    Finding,
    SourceRef,
    SubjectCRF,
    VisitRecord,
)
from fhir_adapter.export import ExportWriter, cdisc
from fhir_adapter.export.cdisc import COLUMNS, DOMAINS, num
from fhir_adapter.export.ct import load_terminology
from fhir_adapter.export.odm import schema_path, validate
from fhir_adapter.export.writer import ExportRenderer
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from tests.feedkit import CLIN, Feed, at

DAY1 = dt.date(2024, 2, 1)
NS = "{http://www.cdisc.org/ns/odm/v1.3}"
PEOPLE = [
    ("p1", "101-001", "Alice Smithson", "MRN-7731001", "1985-04-17"),
    ("p2", "101-002", "Bob Jonesworth", "MRN-7731002", "1979-11-02"),
]


def _feed() -> Feed:
    f = Feed()
    for pid, sid, name, mrn, birth in PEOPLE:
        f.subject(pid, sid, name=name, mrn=mrn, birth=birth, day1=DAY1)
    f.obs("p1", "777-3", at(DAY1, 29), value=150, unit="10*3/uL", id_="plt-29")
    # a result dated to the month only (transcribed from an outside lab): in no visit, still a record of LB
    f.obs("p1", "4485-9", "2024-04", value=0.7, unit="g/L", id_="c3-month")
    f.obs("p1", "777-3", at(DAY1, 27), value=120, unit="10*3/uL", id_="plt-27", meta={"versionId": "2"})
    f.obs(
        "p1",
        "718-7",
        at(DAY1, 29),
        value=12.5,
        unit="g/dL",
        id_="hgb-29",
        referenceRange=[{"low": {"value": 12, "unit": "g/dL"}, "high": {"value": 16, "unit": "g/dL"}}],
    )
    f.obs(
        "p1",
        "4485-9",
        at(DAY1, 29),
        value=95,
        unit="mg/dL",
        id_="c3-29",
        referenceRange=[{"low": {"value": 90, "unit": "mg/dL"}, "high": {"value": 180, "unit": "mg/dL"}}],
    )
    f.obs("p1", "8310-5", at(DAY1, 29), value=38.5, unit="Cel", id_="temp-29")
    f.descriptor("p1", "arthritis", at(DAY1, 29, "11:00:00+00:00"), True, id_="arth-29")
    f.obs(
        "p1", "sle-pga", at(DAY1, 29, "11:00:00+00:00"), system=CLIN, value=1.5, unit="{score}", id_="pga-29"
    )
    f.obs("p1", "777-3", at(DAY1, 57), value=5000, unit="10*9/L", id_="plt-57-bad")
    f.obs("p1", "9999-9", at(DAY1, 29), value=1, unit="mg/L")
    f.obs("p1", "9999-9", at(DAY1, 57), value=2, unit="mg/L")
    f.obs(
        "p1",
        "car-transgene-copies",
        at(DAY1, 200),
        system=CLIN,
        value=3500,
        unit="{copies}/ug{DNA}",
        id_="cart-200",
    )
    f.add(
        {
            "resourceType": "MedicationAdministration",
            "id": "ld2-p1",
            "status": "completed",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "3002"}],
                "text": "Cyclophosphamide",
            },
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-01",
        }
    )
    f.obs("p2", "777-3", at(DAY1, 29), value=200, unit="10*9/L", id_="plt-p2")
    return f


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory, study: Any) -> Path:
    base = tmp_path_factory.mktemp("export")
    feed = _feed().write(base / "feed")
    log = RunLog()
    run(FileSource(feed, log), study, base / "out", log)
    return base / "out"


def _rows(out: Path, domain: str) -> list[dict[str, str]]:
    with (out / "export" / f"{domain}.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_one_csv_per_domain_with_cdisc_columns(out: Path) -> None:
    for domain in DOMAINS:
        with (out / "export" / f"{domain}.csv").open(encoding="utf-8") as fh:
            header = fh.readline().strip().split(",")
        assert header == list(COLUMNS[domain])
        assert header[:5] == ["STUDYID", "DOMAIN", "USUBJID", "SUBJID", "SITEID"]
    dm = _rows(out, "DM")
    assert [r["SUBJID"] for r in dm] == ["101-001", "101-002"]
    assert dm[0]["USUBJID"] == "LCAR-AIO-SLE-101-001" and dm[0]["SEX"] == "F" and dm[0]["AGE"] == "38"
    assert dm[0]["RFSTDTC"] == "2024-02-01" and dm[0]["SITEID"] == "site-01"


def test_findings_rows_are_the_values_selected_per_visit(out: Path) -> None:
    lb = [r for r in _rows(out, "LB") if r["SUBJID"] == "101-001"]
    plt = [r for r in lb if r["LBTESTCD"] == "PLAT"]
    assert len(plt) == 1, "one row per subject/visit/item: W4 keeps the minimum (select: min)"
    (w4,) = plt
    assert w4["VISIT"] == "Week 4 (day 29)" and w4["VISITNUM"] == "8" and w4["VISITDY"] == "29"
    assert w4["LBORRES"] == "120" and w4["LBORRESU"] == "10^9/L" and w4["LBORUCUM"] == "10*3/uL"
    assert w4["LBSTRESN"] == "120" and w4["LBSTRESU"] == "10^9/L" and w4["LBSTUCUM"] == "10*9/L"
    assert w4["LBDY"] == "27" and w4["LBLOINC"] == "777-3" and w4["EPOCH"] == "FOLLOW-UP"
    assert w4["LBDTC"] == "2024-02-27T09:00:00+00:00"
    assert w4["SRCREF"] == "Observation/plt-27/_history/2" and w4["SRCSTAT"] == "final"
    (c3,) = [r for r in lb if r["LBTESTCD"] == "C3" and r["VISIT"]]  # (and one dated to the month: below)
    assert c3["LBORRES"] == "95" and c3["LBORRESU"] == "mg/dL" and c3["LBSTRESN"] == "0.95"
    assert c3["LBSTNRLO"] == "0.9" and c3["LBORNRLO"] == "90", "original-unit range kept beside the standard one"
    assert c3["LBNRIND"] == "NORMAL"
    (hgb,) = [r for r in lb if r["LBTESTCD"] == "HGB"]
    assert (hgb["LBORNRLO"], hgb["LBORNRHI"], hgb["LBNRIND"]) == ("12", "16", "NORMAL")
    vs = _rows(out, "VS")
    assert [(r["VSTESTCD"], r["VSSTRESN"], r["VSSTRESU"], r["VSSTUCUM"]) for r in vs] == [
        ("TEMP", "38.5", "C", "Cel")]
    qs = {r["QSTESTCD"]: r for r in _rows(out, "QS")}
    assert qs["ARTHRIT"]["QSORRES"] == "Y" and qs["PGA"]["QSSTRESN"] == "1.5"
    assert [r["LBSEQ"] for r in lb] == [str(i) for i in range(1, len(lb) + 1)]


def test_unscheduled_visit_numbers_follow_the_previous_scheduled_visit(out: Path) -> None:
    (pc,) = _rows(out, "PC")
    assert pc["PCTESTCD"] == "CARTRNS" and pc["VISITNUM"] == "11.01" and pc["VISITDY"] == ""
    assert pc["VISIT"].startswith("Unscheduled") and pc["PCDY"] == "200"


def test_partial_dates_stay_partial_in_csv(out: Path) -> None:
    ex = _rows(out, "EX")
    partial = [r for r in ex if r["SRCREF"] == "MedicationAdministration/ld2-p1"]
    assert partial and partial[0]["EXSTDTC"] == "2024-01" and partial[0]["EXSTDY"] == ""
    infusion = [r for r in ex if r["EXCAT"] == "INFUSION" and r["SUBJID"] == "101-001"]
    # the infusion's time of day, as the EHR records it (kinetics time 0), as the lymphodepletion rows keep theirs
    assert infusion[0]["EXSTDTC"] == "2024-02-01T10:00:00+00:00" and infusion[0]["EXSTDY"] == "1"


def test_a_result_with_a_partial_date_is_a_record_of_its_domain_in_no_visit(out: Path) -> None:
    """SDTM holds every result collected: one dated to the month is kept as it came (LBDTC 2024-04), with no
    visit and no study day (never imputed: docs/clinical-rules.md#dates)."""
    [row] = [r for r in _rows(out, "LB") if r["SRCREF"] == "Observation/c3-month"]
    assert (row["LBTESTCD"], row["LBSTRESN"], row["LBDTC"]) == ("C3", "0.7", "2024-04")
    assert (row["VISITNUM"], row["VISIT"], row["LBDY"], row["LBBLFL"]) == ("", "", "", "")


def test_no_name_mrn_address_or_birth_date_in_any_export(out: Path) -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((out / "export").iterdir()))
    assert "Alice" not in text  # sanity: the grep below is meaningful only if the outputs are not empty
    assert "101-001" in text
    for _pid, _sid, name, mrn, birth in PEOPLE:
        for needle in (*name.split(), mrn, birth, "Hospital Lane", "Springfield"):
            assert needle not in text, needle


def test_odm_validates_against_the_odm_1_3_2_schema(out: Path) -> None:
    assert schema_path().name == "ODM1-3-2.xsd" and schema_path().exists()
    validate(out / "export" / "odm.xml")
    root = ET.parse(out / "export" / "odm.xml").getroot()
    assert root.tag == f"{NS}ODM" and root.get("ODMVersion") == "1.3.2" and root.get("FileType") == "Snapshot"


def _item_values(path: Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    root = ET.parse(path).getroot()
    types = {i.get("OID", ""): i.get("DataType", "") for i in root.iter(f"{NS}ItemDef")}
    values = [(d.get("ItemOID", ""), d.get("Value", "")) for d in root.iter(f"{NS}ItemData")]
    return types, values


def test_odm_values_conform_to_their_itemdef_datatype(out: Path) -> None:
    """The XSD types ItemData/@Value as text: check each value against its ItemDef's DataType as the ODM
    schema defines it (partialDate, partialDatetime, float = xs:decimal, integer, date)."""
    schema = xmlschema.XMLSchema(str(schema_path()))
    types, values = _item_values(out / "export" / "odm.xml")
    assert values
    checked = set()
    for oid, value in values:
        dtype = types[oid]
        simple = schema.maps.types[f"{NS}{dtype}"] if dtype != "string" else None
        assert simple is None or simple.is_valid(value), (oid, dtype, value)
        checked.add(dtype)
    assert {"float", "integer", "partialDatetime", "text", "date"} <= checked
    assert ("IT.EX.EXSTDTC", "2024-01") in values, "a partial date is exported as it came, not imputed"


def test_odm_metadata_matches_the_schedule_and_domains(out: Path, study: Any) -> None:
    root = ET.parse(out / "export" / "odm.xml").getroot()
    events = [e.get("OID") for e in root.iter(f"{NS}StudyEventDef")]
    assert events == ["SE.SUBJECT", *(f"SE.{v.id}" for v in study.schedule.visits), "SE.UNS"]
    assert [f.get("OID") for f in root.iter(f"{NS}FormDef")] == [f"F.{d}" for d in DOMAINS]
    lbtest = next(c for c in root.iter(f"{NS}CodeList") if c.get("OID") == "CL.LBTESTCD")
    assert "PLAT" in {i.get("CodedValue") for i in lbtest.iter(f"{NS}CodeListItem")}
    subjects = [s.get("SubjectKey") for s in root.iter(f"{NS}SubjectData")]
    assert subjects == ["101-001", "101-002"]
    w4 = next(e for e in root.iter(f"{NS}StudyEventData") if e.get("StudyEventOID") == "SE.W4")
    groups = [g.get("ItemGroupRepeatKey") for g in w4.iter(f"{NS}ItemGroupData")]
    assert "PLAT" in groups
    stresn = next(d for d in w4.iter(f"{NS}ItemData") if d.get("ItemOID") == "IT.LB.LBSTRESN")
    unit = stresn.find(f"{NS}MeasurementUnitRef")
    assert unit is not None and unit.get("MeasurementUnitOID", "").startswith("MU.")


def test_odm_measurement_units_are_the_cdisc_unit_terms_of_the_csv(out: Path) -> None:
    """MeasurementUnit/@Name is the CDISC UNIT term the CSV's --STRESU holds (the UCUM code an Alias), and every
    --STRESN with a unit names the MeasurementUnit of that term."""
    root = ET.parse(out / "export" / "odm.xml").getroot()
    units = {u.get("OID"): u for u in root.iter(f"{NS}MeasurementUnit")}
    names = {oid: u.get("Name") for oid, u in units.items()}
    aliases = {u.get("Name"): a.get("Name") for u in units.values() for a in u.iter(f"{NS}Alias")
               if a.get("Context") == "UCUM"}
    assert aliases["mmHg"] == "mm[Hg]" and aliases["10^9/L"] == "10*9/L" and aliases["g/g"] == "mg/mg"
    terms = set(load_terminology().codelists["UNIT"].terms)
    assert set(names.values()) <= terms, set(names.values()) - terms
    assert len(set(names)) == len(names) and all(oid and oid.startswith("MU.") for oid in names)
    csv_units = {r[f"{d}STRESU"] for d in ("LB", "VS", "PC", "QS") for r in _rows(out, d)} - {""}
    assert csv_units <= set(names.values()), csv_units - set(names.values())
    seen = set()
    for group in root.iter(f"{NS}ItemGroupData"):
        items = {d.get("ItemOID", "").rsplit(".", 1)[-1][2:]: d for d in group.iter(f"{NS}ItemData")}
        if "STRESN" not in items or "STRESU" not in items:
            continue
        ref = items["STRESN"].find(f"{NS}MeasurementUnitRef")
        assert ref is not None, items["STRESU"].get("Value")
        assert names[ref.get("MeasurementUnitOID")] == items["STRESU"].get("Value")
        seen.add(items["STRESU"].get("Value"))
    assert {"10^9/L", "C", "POINT"} <= seen, "units whose UCUM code differs from the CDISC term"


def _crf_with_partial_dates() -> SubjectCRF:
    src = SourceRef(resource_type="MedicationStatement", id="ms1")
    return SubjectCRF(
        subject_id="T-9",
        day1=DAY1,
        dm=Demographics(subject_id="T-9", status="on-study", age=40, sex="M"),
        ex=[
            Exposure(
                treatment="LCAR-AIO",
                kind="infusion",
                start_date=DAY1,
                end_date=DAY1,
                study_day=1,
                source=SourceRef(resource_type="Procedure", id="inf"),
            )
        ],
        cm=[
            ConMed(
                drug="prednisone",
                rxnorm="8640",
                drug_class="glucocorticoid",
                dose=10,
                dose_unit="mg",
                frequency_per_day=0.5,
                daily_dose_mg=5,
                partial_start="2023-11",
                source=src,
            )
        ],
        ae=[
            AdverseEvent(
                term='Cytokine release syndrome <grade 2> & "fever"\nnoted',
                grade=2,
                onset_partial="2024-02",
                crs=True,
                teae=True,
                source=SourceRef(resource_type="AdverseEvent", id="ae1", version="3"),
            )
        ],
    )


def test_an_as_needed_medication_is_prn_whatever_its_most_per_day(tmp_path: Path, study: Any) -> None:
    crf = _crf_with_partial_dates()
    crf.cm = [crf.cm[0].model_copy(update={"frequency_per_day": 1.0, "as_needed": True}),
              crf.cm[0].model_copy(update={"frequency_per_day": 1.0}),
              crf.cm[0].model_copy(update={"frequency_per_day": 10.0})]
    w = ExportWriter(tmp_path, study)
    w.add(crf, [])
    w.close({})
    rows = list(csv.DictReader((tmp_path / "CM.csv").open(encoding="utf-8")))
    assert [r["CMDOSFRQ"] for r in rows] == ["PRN", "QD", ""]
    # a count with no FREQ term is listed as what it is, not as a bare number
    assert {"column": "CMDOSFRQ", "value": "10 per day", "rows": 1} in w.cdisc_report()["no_ct_term"]


def test_a_fixed_interval_is_named_as_such_not_as_a_count(tmp_path: Path, study: Any) -> None:
    """Every 6 hours is CDISC Q6H, not QID (four times a day, as the patient likes); every 4 hours Q4H, not
    "6 TIMES PER DAY"; a count the interval does not say stays a count (mappings/cdisc/ct.yaml FREQ)."""
    crf = _crf_with_partial_dates()
    base = crf.cm[0]
    crf.cm = [base.model_copy(update={"frequency_per_day": 4.0, "interval_hours": 6.0}),
              base.model_copy(update={"frequency_per_day": 6.0, "interval_hours": 4.0}),
              base.model_copy(update={"frequency_per_day": 2.0, "interval_hours": 12.0}),
              base.model_copy(update={"frequency_per_day": 24.0, "interval_hours": 1.0}),
              base.model_copy(update={"frequency_per_day": 6.0}),
              base.model_copy(update={"frequency_per_day": 16.0, "interval_hours": 1.5}),
              base.model_copy(update={"frequency_per_day": 6.0, "interval_hours": 4.0, "as_needed": True})]
    w = ExportWriter(tmp_path, study)
    w.add(crf, [])
    w.close({})
    rows = list(csv.DictReader((tmp_path / "CM.csv").open(encoding="utf-8")))
    assert [r["CMDOSFRQ"] for r in rows] == ["Q6H", "Q4H", "Q12H", "QH", "6 TIMES PER DAY", "", "PRN"]
    assert {"column": "CMDOSFRQ", "value": "Q1.5H", "rows": 1} in w.cdisc_report()["no_ct_term"]


def test_cm_and_ae_partial_dates_in_csv_and_odm(tmp_path: Path, study: Any) -> None:
    w = ExportWriter(tmp_path, study)
    w.add(_crf_with_partial_dates(), [])
    report = w.close({"unmapped.http://loinc.org|1-8": 3})
    (cm,) = list(csv.DictReader((tmp_path / "CM.csv").open(encoding="utf-8")))
    assert (cm["CMSTDTC"], cm["CMDOSFRQ"], cm["CMDOSTOT"], cm["CMCLAS"]) == (
        "2023-11",
        "QOD",
        "5",
        "GLUCOCORTICOID",
    )
    (ae,) = list(csv.DictReader((tmp_path / "AE.csv").open(encoding="utf-8")))
    assert (ae["AESTDTC"], ae["AETOXGR"], ae["AECAT"], ae["AETRTEM"]) == ("2024-02", "2", "CRS", "Y")
    assert ae["SRCREF"] == "AdverseEvent/ae1/_history/3"
    validate(tmp_path / "odm.xml")
    types, values = _item_values(tmp_path / "odm.xml")
    assert ("IT.CM.CMSTDTC", "2023-11") in values and types["IT.CM.CMSTDTC"].startswith("partialDate")
    assert ("IT.AE.AETERM", 'Cytokine release syndrome <grade 2> & "fever"\nnoted') in values, "escaped"
    assert ("IT.AE.AESTDTC", "2024-02") in values and types["IT.AE.AESTDTC"].startswith("partialDate")
    assert report["unmapped_codes"] == [{"system": "http://loinc.org", "code": "1-8", "count": 3}]
    assert report["export_rows"]["CM"] == 1 and report["export_rows"]["AE"] == 1


def test_lb_study_day_and_epoch_follow_the_specimen_collection(study: Any) -> None:
    """SDTM derives --DY from --DTC: an LB result dated by its Specimen's collection (LBDTC) takes LBDY and EPOCH
    from that date, not from the Observation's effective date — a 24-hour urine begun the day before Day 1 and
    reported on Day 1 is on day -1, in SCREENING; its end (LBENDTC) is on Day 1."""
    begun = dt.datetime.combine(DAY1 - dt.timedelta(days=1), dt.time(7, 30), dt.UTC)
    result = Finding(domain="LB", item="creatinine", value=0.9, unit="mg/dL", date=DAY1, study_day=1, visit="D1",
                     datetime=begun + dt.timedelta(hours=25), collected=begun,
                     collected_end=begun + dt.timedelta(hours=24),
                     source=SourceRef(resource_type="Observation", id="cr-24h"))
    crf = SubjectCRF(subject_id="T-9", day1=DAY1, findings=[result],
                     dm=Demographics(subject_id="T-9", status="on-study", consent_date=DAY1 - dt.timedelta(days=20)),
                     visits=[VisitRecord(visit="D1", date=DAY1, study_day=1, values={"creatinine": result})])
    (cells,) = cdisc.RowBuilder(study).findings(crf)["LB"].cells
    row = dict(zip(COLUMNS["LB"], cells, strict=True))
    assert (row["LBDTC"], row["LBDY"], row["EPOCH"]) == ("2024-01-31T07:30:00+00:00", "-1", "SCREENING")
    assert (row["LBENDTC"], row["LBENDY"], row["VISIT"]) == ("2024-02-01T07:30:00+00:00", "1", "D1")


def test_ae_start_and_end_carry_the_times_the_ehr_sent(tmp_path: Path, study: Any) -> None:
    """AESTDTC/AEENDTC: the dateTime in the study time zone when the EHR sent one, else the date."""
    crf = _crf_with_partial_dates()
    utc = dt.UTC
    timed = AdverseEvent(term="Cytokine release syndrome", grade=3, crs=True, teae=True,
                         onset_date=dt.date(2024, 2, 2), onset_datetime=dt.datetime(2024, 2, 2, 20, 0, tzinfo=utc),
                         resolution_date=dt.date(2024, 2, 5),
                         resolution_datetime=dt.datetime(2024, 2, 5, 8, 0, tzinfo=utc),
                         source=SourceRef(resource_type="AdverseEvent", id="ae2"))
    dated = AdverseEvent(term="Headache", grade=1, onset_date=dt.date(2024, 2, 3),
                         resolution_date=dt.date(2024, 2, 4), source=SourceRef(resource_type="AdverseEvent", id="ae3"))
    w = ExportWriter(tmp_path, study)
    w.add(crf.model_copy(update={"ae": [timed, dated]}), [])
    w.close({})
    rows = list(csv.DictReader((tmp_path / "AE.csv").open(encoding="utf-8")))
    assert [(r["AESTDTC"], r["AEENDTC"]) for r in rows] == [
        ("2024-02-02T20:00:00+00:00", "2024-02-05T08:00:00+00:00"), ("2024-02-03", "2024-02-04")]
    validate(tmp_path / "odm.xml")
    types, values = _item_values(tmp_path / "odm.xml")
    assert ("IT.AE.AEENDTC", "2024-02-05T08:00:00+00:00") in values
    assert types["IT.AE.AEENDTC"] == types["IT.AE.AESTDTC"] == "partialDatetime"


def test_coverage_counts_filled_quarantined_and_no_data(out: Path, study: Any) -> None:
    report = orjson.loads((out / "run-report.json").read_bytes())
    cov = report["coverage"]
    assert cov["subjects"] == 2 and cov["subjects_without_day1"] == []
    plt = next(i for i in cov["items"] if i["item"] == "platelets")
    assert plt["visits"]["W4"] == {"filled": 2, "quarantined": 0, "no-data": 0}
    assert plt["visits"]["W8"] == {"filled": 0, "quarantined": 1, "no-data": 1}
    assert plt["visits"]["SCR"] == {"filled": 0, "quarantined": 0, "no-data": 2}
    assert cov["per_subject"]["101-001"]["quarantined_cells"] == ["platelets@W8"]
    n_cells = len(study.items) * len(study.schedule.visits)
    p1 = cov["per_subject"]["101-001"]
    assert p1["filled"] + p1["quarantined"] + p1["no-data"] == n_cells
    assert "urine_heme_granular_casts" in cov["never_filled"] and "platelets" not in cov["never_filled"]
    assert {"system": "http://loinc.org", "code": "9999-9", "count": 2} in cov["unmapped_codes"]
    with (out / "export" / "coverage.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n_cells
    w8 = next(r for r in rows if r["ITEM"] == "platelets" and r["VISIT"] == "W8")
    assert (w8["SUBJECTS"], w8["FILLED"], w8["QUARANTINED"], w8["NO_DATA"], w8["PCT_FILLED"]) == (
        "2",
        "0",
        "1",
        "1",
        "0.0",
    )
    with (out / "export" / "coverage-subjects.csv").open(encoding="utf-8") as fh:
        per_subject = list(csv.DictReader(fh))
    row = next(r for r in per_subject if r["SUBJID"] == "101-001" and r["ITEM"] == "platelets")
    assert (row["W4"], row["W8"], row["SCR"]) == ("filled", "quarantined", "no-data")


def test_coverage_cells_count_every_subject_whose_states_repeat(tmp_path: Path, study: Any) -> None:
    """Subjects with the same states over the visits (the common case) each count in every cell."""
    from fhir_adapter.export.coverage import FILLED, NO_DATA, Coverage, SubjectCoverage

    cov = Coverage(study, tmp_path)
    visits, first = cov.visits, cov.items[0]
    same = [FILLED] + [NO_DATA] * (len(visits) - 1)
    for n in range(3):
        cov.merge(SubjectCoverage(subject_id=f"101-00{n}", states=[same] * len(cov.items), summary={"day1": "x"}))
    cov.merge(SubjectCoverage(subject_id="101-009", states=[[NO_DATA] * len(visits)] * len(cov.items),
                              summary={"day1": "x"}))
    report = cov.close({})
    item = next(i for i in report["items"] if i["item"] == first)
    assert item["visits"][visits[0]] == {FILLED: 3, "quarantined": 0, NO_DATA: 1}
    assert item["visits"][visits[1]] == {FILLED: 0, "quarantined": 0, NO_DATA: 4}


def test_testcd_is_unique_per_domain_and_sdtm_shaped(study: Any) -> None:
    codes = cdisc.testcd_map(study)
    pairs = [(study.items[k].domain, c) for k, c in codes.items()]
    assert len(pairs) == len(set(pairs))
    assert all(len(c) <= 8 and c[0].isalpha() and c.isupper() for c in codes.values())


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.00001, "0.00001"),
        (150.0, "150"),
        (1e20, "100000000000000000000"),
        (0.95, "0.95"),
        (None, ""),
        (-2.5, "-2.5"),
    ],
)
def test_numbers_are_plain_decimals(value: float | None, text: str) -> None:
    assert num(value) == text


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "read-write"])
def test_a_worker_export_piece_appends_the_bytes_the_run_process_writes(
        tmp_path: Path, study: Any, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool) -> None:
    """Workers write their export text to a piece file that the run's process copies into the export files
    (SubjectExport.to_piece): the files are those of exports written in the run's process, with the copy
    done by the kernel or, where the file system refuses, by reading and writing."""
    crfs = [_crf_with_partial_dates().model_copy(update={"subject_id": sid}) for sid in ("T-1", "T-2", "T-3")]
    direct = ExportWriter(tmp_path / "direct", study)
    for crf in crfs:
        direct.add(crf, [])
    direct.close({})
    if not kernel_copy:
        def refuse(*_: Any) -> int:
            raise OSError(18, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    renderer, piecewise = ExportRenderer(study), ExportWriter(tmp_path / "pieces", study)
    for i, crf in enumerate(crfs):
        export = renderer.render(crf)
        export.to_piece(tmp_path / f"{i}.export")
        assert export.piece is not None and not export.csv and not export.dataset_json and export.odm is None
        piecewise.write(export, crf, [])
        assert not (tmp_path / f"{i}.export").exists()
    piecewise.close({})
    stamp = re.compile(rb"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")  # when each file was made
    names = sorted(p.name for p in (tmp_path / "direct").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "pieces").iterdir()) and "odm.xml" in names
    for name in names:
        want, got = ((tmp_path / d / name).read_bytes() for d in ("direct", "pieces"))
        assert stamp.sub(b"", got) == stamp.sub(b"", want), name
    assert orjson.loads((tmp_path / "pieces" / "CM.json").read_bytes())["records"] == 3
    validate(tmp_path / "pieces" / "odm.xml")


def test_a_collection_period_is_elapsed_time_across_a_daylight_saving_change() -> None:
    """LBDUR is the elapsed time of the collection, as the lab measured it. Over the night Europe/Berlin
    leaves summer time (2024-10-27), 08:00 (+02:00) to 07:00 the next morning (+01:00) is 24 h and 08:00 to
    08:00 is 25 h; Python subtracts two times of one zone object on the wall clock (23 h and 24 h)."""
    import datetime as dt
    import zoneinfo

    from fhir_adapter.export.cdisc import _duration
    from fhir_adapter.study.timeline import elapsed

    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    start = dt.datetime(2024, 10, 26, 8, 0, tzinfo=berlin)
    assert _duration(start, dt.datetime(2024, 10, 27, 7, 0, tzinfo=berlin)) == "PT24H"
    assert _duration(start, dt.datetime(2024, 10, 27, 8, 0, tzinfo=berlin)) == "PT25H"
    assert elapsed(start, start + dt.timedelta(days=1)) == dt.timedelta(hours=25)


def test_coverage_tells_results_from_before_consent_among_those_out_of_window(tmp_path: Path, study: Any) -> None:
    """coverage.items[].out_of_window counts an item's results in no visit; out_of_window_before_consent those of
    them dated before consent (routine care before the trial, not a visit the site missed)."""
    from fhir_adapter.export.coverage import Coverage
    from tests.helpers import DAY1, crf, d, finding

    cov = Coverage(study, tmp_path)
    before, between = finding("platelets", -90, 200.0), finding("platelets", 20, 180.0)  # day -90: before consent
    subject = crf([before, between], {}, participation_start=d(-60, DAY1))
    cov.merge(cov.subject(subject, []))
    report = cov.close({})
    item = next(i for i in report["items"] if i["item"] == "platelets")
    assert (item["out_of_window"], item["out_of_window_before_consent"]) == (2, 1)
