"""MH, PR, Immunization → CM, NOT DONE rows, specimens, race/ethnicity, SITEID by the site-level ResearchStudy,
MedDRA hierarchy from a site dictionary: one small feed through the whole job."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.export.ct import load_terminology
from fhir_adapter.export.odm import validate
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.cdisc_details import US_CORE_ETHNICITY, US_CORE_RACE, race_ethnicity
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import load_study
from tests.export.test_cdisc_ig import synthetic_meddra
from tests.feedkit import Feed, at

DAY1 = dt.date(2024, 2, 1)
ROOT = Path(__file__).resolve().parents[2]
MDR = "http://terminology.hl7.org/CodeSystem/mdr"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
OMB = "urn:oid:2.16.840.1.113883.6.238"


def _feed() -> Feed:
    f = Feed()
    f.subject("p1", "101-001", name="Cara Quellmarsh", mrn="MRN-1", birth="1990-02-03", day1=DAY1)
    f.subject("p2", "101-002", name="Dov Tivelby", mrn="MRN-2", birth="1985-06-07", day1=DAY1)
    # 101-003: enrolled, never treated (no infusion, no lymphodepletion)
    f.subject("p3", "101-003", name="Ebba Sorrowin", mrn="MRN-3", birth="1979-09-10", day1=None, arm="DL2")
    f.add({"resourceType": "ResearchStudy", "id": "site-study", "status": "active",
           "identifier": [{"value": "LCAR-AIO-SLE-SITE-07"}], "partOf": [{"reference": "ResearchStudy/study"}],
           "contained": [{"resourceType": "Practitioner", "id": "pi",
                          "identifier": [{"system": "https://hospital.example.org/investigator", "value": "INV-0707"}],
                          "name": [{"family": "Quarrendon", "given": ["Ysolde"]}]}],
           "principalInvestigator": {"reference": "#pi"}})
    for rs in f.resources["ResearchSubject"]:
        if rs["id"] == "rs-p2":
            rs["study"] = {"reference": "ResearchStudy/site-study"}
            # given DL2 instead of the assigned DL1; participation ended with the death on day 60
            rs["actualArm"] = "DL2"
            rs["period"]["end"] = "2024-03-31"
    # the lymphodepletion as the ward charts it: route SNOMED CT intravenous, dose with its UCUM code; the
    # feedkit's fludarabine sends mg/m2 (no term in the CT tables here: reported, never passed through)
    for ma in f.resources["MedicationAdministration"]:
        ma["dosage"]["route"] = {"coding": [{"system": "http://snomed.info/sct", "code": "47625008",
                                             "display": "Intravenous route"}]}
    f.add({"resourceType": "MedicationAdministration", "id": "cy-p1", "status": "completed",
           "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                     "code": "3002"}], "text": "Cyclophosphamide"},
           "subject": {"reference": "Patient/p1"}, "effectiveDateTime": at(DAY1, -3, "12:00:00+00:00"),
           "dosage": {"route": {"text": "IV"},
                      "dose": {"value": 850, "unit": "milligram", "system": "http://unitsofmeasure.org",
                               "code": "mg"}}})
    p1 = next(p for p in f.resources["Patient"] if p["id"] == "p1")
    p1["extension"] = [
        {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race", "extension": [
            {"url": "ombCategory", "valueCoding": {"system": OMB, "code": "2028-9", "display": "Asian"}}]},
        {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity", "extension": [
            {"url": "ombCategory", "valueCoding": {"system": OMB, "code": "2186-5",
                                                   "display": "Not Hispanic or Latino"}}]}]
    f.add({"resourceType": "Specimen", "id": "sp1", "type": {"text": "Serum"},
           "accessionIdentifier": {"value": "ACC-77"}, "subject": {"reference": "Patient/p1"},
           "collection": {"collectedDateTime": at(DAY1, 29, "07:40:00+00:00"),
                          "fastingStatusCodeableConcept": {"coding": [
                              {"system": "http://terminology.hl7.org/CodeSystem/v2-0916", "code": "F"}]}}})
    f.obs("p1", "4485-9", at(DAY1, 29), value=95, unit="mg/dL", id_="c3-29", specimen={"reference": "Specimen/sp1"},
          method={"text": "Nephelometry"}, identifier=[{"value": "LAB-c3-29"}],
          category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                 "code": "laboratory"}]}])
    # urine protein/creatinine below the assay's limit, sent in mg/g: "<50" (the item has no `lloq` setting)
    f.obs("p1", "2890-2", at(DAY1, 29), id_="upcr-29",
          valueQuantity={"comparator": "<", "value": 50, "unit": "mg/g", "system": "http://unitsofmeasure.org",
                         "code": "mg/g"})
    f.obs("p1", "2889-4", at(DAY1, 57), status="cancelled", id_="prot-57",
          dataAbsentReason={"text": "Collection not returned"})
    # baselines of 101-002 (consent 2024-01-05 = day -27): C3 at BL and before the infusion on Day 1 -> Day 1;
    # C4 at screening only -> screening; CRP before consent (no visit, inside the 56-day look-back) -> its own row
    for day, value, time in ((-7, 90, "09:00:00+00:00"), (1, 85, "08:00:00+00:00"), (29, 80, "09:00:00+00:00")):
        f.obs("p2", "4485-9", at(DAY1, day, time), value=value, unit="mg/dL", id_=f"p2-c3-{day}")
    for day, value in ((-20, 12), (29, 15)):
        f.obs("p2", "4498-2", at(DAY1, day), value=value, unit="mg/dL", id_=f"p2-c4-{day}")
    for day, value in ((-40, 9), (-30, 7), (29, 2)):
        f.obs("p2", "1988-5", at(DAY1, day), value=value, unit="mg/L", id_=f"p2-crp-{day}")
    # 101-002 dies on day 60 of the grade 5 event it had on day 55 (Patient.deceasedDateTime)
    next(p for p in f.resources["Patient"] if p["id"] == "p2")["deceasedDateTime"] = at(DAY1, 60)
    f.add({"resourceType": "AdverseEvent", "id": "ae-fatal", "actuality": "actual", "identifier": {"value": "AE-201"},
           "event": {"text": "Sepsis"}, "subject": {"reference": "Patient/p2"}, "date": at(DAY1, 55),
           "seriousness": {"coding": [{"code": "serious"}]}, "outcome": {"coding": [{"code": "fatal"}]},
           "extension": [{"url": "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/"
                                 "seriousness-criteria", "extension": [
               {"url": "criterionCode", "valueCodeableConcept": {"coding": [{"system": NCIT, "code": "C48275"}]}},
               {"url": "criterionPresent", "valueBoolean": True}]}]})
    # a shared Medication with two active ingredients and an excipient (CMINGRD)
    f.add({"resourceType": "Medication", "id": "med-smx-tmp", "code": {"coding": [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "198335",
         "display": "sulfamethoxazole 800 MG / trimethoprim 160 MG Oral Tablet"}]},
        "ingredient": [{"itemCodeableConcept": {"text": "Sulfamethoxazole"}, "isActive": True},
                       {"itemCodeableConcept": {"text": "Trimethoprim"}, "isActive": True},
                       {"itemCodeableConcept": {"text": "Povidone"}, "isActive": False}]})
    f.add({"resourceType": "MedicationStatement", "id": "ms-smx", "status": "active",
           "medicationReference": {"reference": "Medication/med-smx-tmp"}, "subject": {"reference": "Patient/p1"},
           "effectivePeriod": {"start": at(DAY1, 2)[:10]}, "reasonCode": [{"text": "Pneumocystis prophylaxis"}],
           "dosage": [{"text": "1 tablet three times weekly"}]})
    # planned time points around the infusion: a specimen drawn 1 h before it, a temperature 15 min after it
    rel = "http://hl7.org/fhir/StructureDefinition/cqf-relativeDateTime"

    def relative(relation: str, minutes: int) -> list[dict[str, Any]]:
        return [{"url": rel, "extension": [
            {"url": "target", "valueReference": {"reference": "Procedure/inf-p1", "display": "LCAR-AIO infusion"}},
            {"url": "relationship", "valueCode": relation},
            {"url": "offset", "valueDuration": {"value": minutes // 60 if minutes % 60 == 0 else minutes,
                                                "unit": "h" if minutes % 60 == 0 else "min",
                                                "system": "http://unitsofmeasure.org",
                                                "code": "h" if minutes % 60 == 0 else "min"}}]}]
    f.add({"resourceType": "Specimen", "id": "sp-pre", "type": {"text": "Serum"},
           "subject": {"reference": "Patient/p1"},
           "collection": {"collectedDateTime": at(DAY1, 1, "09:00:00+00:00"),
                          "bodySite": {"text": "Left antecubital vein"}},
           "extension": relative("before-start", 60)})
    f.obs("p1", "1988-5", at(DAY1, 1, "09:00:00+00:00"), value=4, unit="mg/L", id_="crp-pre",
          specimen={"reference": "Specimen/sp-pre"})
    f.obs("p1", "8310-5", at(DAY1, 1, "10:15:00+00:00"), value=37.9, unit="Cel", id_="temp-post",
          extension=relative("after-end", 15))
    f.add({"resourceType": "Condition", "id": "c1", "identifier": [{"value": "PROB-1"}],
           "clinicalStatus": {"coding": [{"code": "active"}]},
           "verificationStatus": {"coding": [{"code": "confirmed"}]},
           "category": [{"coding": [{"code": "problem-list-item"}]}],
           "code": {"coding": [{"system": MDR, "code": "90000001", "display": "Synthetic headache term"}],
                    "text": "Chronic headache"},
           "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2019-05", "recordedDate": "2019-06-01"})
    # a social determinant the EHR charts as a Condition (US Core's sdoh category): no medical history
    f.add({"resourceType": "Condition", "id": "c-sdoh", "code": {"text": "Food insecurity"},
           "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-category",
                                     "code": "sdoh"}]}],
           "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2021-03-01"})
    f.add({"resourceType": "Condition", "id": "c-on-study", "code": {"text": "Herpes zoster"},
           "subject": {"reference": "Patient/p1"}, "onsetDateTime": at(DAY1, 40)})
    f.add({"resourceType": "Condition", "id": "c-refuted", "code": {"text": "Antiphospholipid syndrome"},
           "verificationStatus": {"coding": [{"code": "refuted"}]}, "subject": {"reference": "Patient/p1"},
           "recordedDate": "2023-12-01"})
    f.add({"resourceType": "AllergyIntolerance", "id": "a1", "category": ["medication"], "code": {"text": "Penicillin"},
           "clinicalStatus": {"coding": [{"code": "active"}]}, "patient": {"reference": "Patient/p1"},
           "onsetDateTime": "2005"})
    f.add({"resourceType": "Procedure", "id": "pr1", "status": "completed", "identifier": [{"value": "OR-9"}],
           "code": {"coding": [{"system": "https://hospital.example.org/procedures", "code": "CVC"}],
                    "text": "Central venous catheter insertion"},
           "category": {"coding": [{"code": "387713003", "display": "Surgical procedure"}]},
           "reasonCode": [{"text": "Vascular access for leukapheresis"}], "bodySite": [{"text": "Right jugular vein"}],
           "subject": {"reference": "Patient/p1"}, "performedDateTime": at(DAY1, -20)})
    # coded in the hospital catalogue and in SNOMED CT; its category sent as a bare SNOMED CT code
    f.add({"resourceType": "Procedure", "id": "o2", "status": "completed",
           "code": {"coding": [{"system": "https://hospital.example.org/procedures", "code": "O2"},
                               {"system": "http://snomed.info/sct", "code": "57485005", "display": "Oxygen therapy"}],
                    "text": "Oxygen via nasal cannula"},
           "category": {"coding": [{"system": "http://snomed.info/sct", "code": "277132007"}]},
           "subject": {"reference": "Patient/p1"}, "performedDateTime": at(DAY1, 5)})
    f.add({"resourceType": "AllergyIntolerance", "id": "a-rtx", "category": ["medication", "biologic"],
           "code": {"text": "Rituximab"}, "patient": {"reference": "Patient/p2"}, "onsetDateTime": "2021-03"})
    f.add({"resourceType": "Procedure", "id": "tpe", "status": "completed",
           "code": {"text": "Therapeutic plasma exchange"},
           "subject": {"reference": "Patient/p2"},
           "performedPeriod": {"start": "2023-06-01T08:00:00+00:00", "end": "2023-06-09T11:00:00+00:00"},
           "extension": [{"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Procedure.occurrence",
                          "valueTiming": {"repeat": {"count": 5, "frequency": 1, "period": 2, "periodUnit": "d"}}}]})
    f.add({"resourceType": "Procedure", "id": "pr2", "status": "not-done", "code": {"text": "Bone marrow biopsy"},
           "statusReason": {"text": "Patient declined"}, "subject": {"reference": "Patient/p1"}})
    f.add({"resourceType": "Immunization", "id": "im1", "status": "completed", "identifier": [{"value": "VAX-1"}],
           "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "141",
                                       "display": "Influenza, seasonal, injectable"}],
                           "text": "Influenza vaccine"},
           "patient": {"reference": "Patient/p1"}, "occurrenceDateTime": "2023-11-02",
           "route": {"coding": [{"system": "http://snomed.info/sct", "code": "78421000"}]},
           "doseQuantity": {"value": 0.5, "unit": "mL", "code": "mL"}})
    f.add({"resourceType": "AdverseEvent", "id": "ae1", "actuality": "actual", "identifier": {"value": "AE-001"},
           "event": {"coding": [{"system": MDR, "code": "90000001", "display": "Synthetic headache term"}],
                     "text": "Headache"},
           "subject": {"reference": "Patient/p1"}, "date": at(DAY1, 3),
           "seriousness": {"coding": [{"code": "serious"}]},
           "severity": {"coding": [{"code": "severe"}]}, "outcome": {"coding": [{"code": "resolved"}]},
           "extension": [
               {"url": "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/seriousness-criteria",
                "extension": [{"url": "criterionCode", "valueCodeableConcept": {"coding": [
                    {"system": NCIT, "code": "C83052"}]}}, {"url": "criterionPresent", "valueBoolean": True}]},
               {"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-AdverseEvent.mitigatingAction",
                "extension": [{"url": "item", "valueCodeableConcept": {"coding": [
                    {"system": NCIT, "code": "C48660"}]}}]}]})
    return f


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cdisc")
    synthetic_meddra(base / "meddra")
    overlay = base / "site.yaml"
    overlay.write_text("site: test-site\nmeddra_dir: meddra\ncountry: DEU\n", encoding="utf-8")
    study = load_study(ROOT / "mappings" / "lcar-aio", overlay)
    feed = _feed().write(base / "feed")
    run(FileSource(feed, RunLog()), study, base / "out", RunLog())
    return base / "out"


def _rows(out: Path, domain: str) -> list[dict[str, str]]:
    with (out / "export" / f"{domain}.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_dm_race_ethnicity_and_siteid_by_site_study(out: Path) -> None:
    dm = {r["SUBJID"]: r for r in _rows(out, "DM")}
    assert (dm["101-001"]["RACE"], dm["101-001"]["ETHNIC"]) == ("ASIAN", "NOT HISPANIC OR LATINO")
    assert dm["101-001"]["SITEID"] == "site-01", "no site-level study: the managing organisation"
    assert dm["101-002"]["SITEID"] == "LCAR-AIO-SLE-SITE-07", "the site-level ResearchStudy (IG rule)"
    assert dm["101-002"]["RACE"] == ""


def _us_core(url: str, system: str, code: str, display: str) -> dict[str, Any]:
    return {"url": url, "extension": [{"url": "ombCategory",
                                       "valueCoding": {"system": system, "code": code, "display": display}}]}


@pytest.mark.parametrize(("race", "ethnicity", "expected"), [
    # the code decides: an EHR's local display ("native") is not a CDISC term, the code's category is
    (("urn:oid:2.16.840.1.113883.6.238", "1002-5", "native"),
     ("urn:oid:2.16.840.1.113883.6.238", "2135-2", "hisp"), ("AMERICAN INDIAN OR ALASKA NATIVE", "HISPANIC OR LATINO")),
    (("urn:oid:2.16.840.1.113883.6.238", "2131-1", "Other Race"),
     ("http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "ASKU", "asked but no answer"), ("OTHER", "UNKNOWN")),
    (("http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "UNK", "unknown"),
     ("urn:oid:2.16.840.1.113883.6.238", "2186-5", "Not Hispanic"), ("UNKNOWN", "NOT HISPANIC OR LATINO")),
    # a code the value sets do not have: its display, as before
    (("urn:oid:2.16.840.1.113883.6.238", "2029-7", "Asian"),
     ("urn:oid:2.16.840.1.113883.6.238", "9999-9", "Not Hispanic or Latino"), ("ASIAN", "NOT HISPANIC OR LATINO")),
])
def test_race_and_ethnicity_follow_the_omb_code_not_the_local_display(
        race: tuple[str, str, str], ethnicity: tuple[str, str, str], expected: tuple[str, str]) -> None:
    patient = {"resourceType": "Patient", "extension": [_us_core(US_CORE_RACE, *race),
                                                        _us_core(US_CORE_ETHNICITY, *ethnicity)]}
    r, e = race_ethnicity(patient)
    ct = load_terminology()
    assert (ct.term("RACE", r, "RACE"), ct.term("ETHNIC", e, "ETHNIC")) == expected
    assert not ct.missing


def test_mh_from_conditions_and_allergies_before_day1(out: Path) -> None:
    mh = {r["MHSPID"] or r["MHTERM"]: r for r in _rows(out, "MH")}
    assert set(mh) == {"PROB-1", "Antiphospholipid syndrome", "Penicillin", "Rituximab"}, \
        "on-study conditions are AEs; a social determinant (US Core sdoh category) is no history"
    assert (mh["Rituximab"]["MHCAT"], mh["Rituximab"]["MHSCAT"]) == ("MEDICATION", "BIOLOGIC")
    assert mh["Penicillin"]["MHSCAT"] == "" and mh["PROB-1"]["MHSCAT"] == "", "one category: no subcategory"
    c = mh["PROB-1"]
    assert (c["MHTERM"], c["MHCAT"], c["MHSTDTC"], c["MHDTC"], c["MHENRTPT"], c["MHOCCUR"]) == (
        "Chronic headache", "PROBLEM LIST ITEM", "2019-05", "2019-06-01", "ONGOING", "Y")
    assert (c["MHDECOD"], c["MHPTCD"], c["MHSOC"]) == ("Synthetic headache PT", "90000010", "Synthetic nervous SOC")
    assert mh["Antiphospholipid syndrome"]["MHOCCUR"] == "N"
    assert (mh["Penicillin"]["MHCAT"], mh["Penicillin"]["MHSTDTC"]) == ("MEDICATION", "2005")


def test_pr_excludes_the_infusion_and_keeps_not_done(out: Path) -> None:
    pr = {r["PRTRT"]: r for r in _rows(out, "PR") if r["SUBJID"] == "101-001"}
    assert set(pr) == {"Central venous catheter insertion", "Bone marrow biopsy", "Oxygen via nasal cannula"}
    cvc = pr["Central venous catheter insertion"]
    assert (cvc["PRSPID"], cvc["PROCCUR"], cvc["PRINDC"], cvc["PRLOC"], cvc["PRSTDY"], cvc["EPOCH"]) == (
        "OR-9", "Y", "Vascular access for leukapheresis", "RIGHT JUGULAR VEIN", "-20", "SCREENING")
    assert (pr["Bone marrow biopsy"]["PROCCUR"], pr["Bone marrow biopsy"]["PRREASND"]) == ("N", "Patient declined")
    assert {r["PRDOSFRQ"] for r in pr.values()} == {""}, "no occurrence Timing"
    (tpe,) = [r for r in _rows(out, "PR") if r["SUBJID"] == "101-002"]
    assert (tpe["PRTRT"], tpe["PRDOSFRQ"]) == ("Therapeutic plasma exchange", "QOD"), "R5 occurrence Timing: 1 per 2 d"
    assert (tpe["PRSTDTC"], tpe["PRENDTC"], tpe["PRSTDY"], tpe["PRENDY"]) == (
        "2023-06-01T08:00:00+00:00", "2023-06-09", "-245", "-237"), "PRENDY: the study day of PRENDTC (no Day 0)"
    assert (cvc["PRENDTC"], cvc["PRENDY"]) == ("", ""), "no end: no end day"


def test_pr_decod_from_a_procedure_dictionary_and_a_readable_category(out: Path) -> None:
    pr = {r["PRTRT"]: r for r in _rows(out, "PR") if r["SUBJID"] == "101-001"}
    cvc, o2 = pr["Central venous catheter insertion"], pr["Oxygen via nasal cannula"]
    assert (cvc["PRDECOD"], cvc["PRCODE"]) == ("", "https://hospital.example.org/procedures|CVC"), \
        "a hospital catalogue code is no dictionary: PRDECOD null (SDTMIG), the coding kept as sent"
    assert (o2["PRDECOD"], o2["PRCODE"]) == (
        "Oxygen therapy", "https://hospital.example.org/procedures|O2;http://snomed.info/sct|57485005"), \
        "the display of the SNOMED CT coding"
    assert cvc["PRCAT"] == "SURGICAL PROCEDURE", "the category's display, not its code 387713003"
    assert o2["PRCAT"] == "", "a category sent as a bare code is no readable category"
    assert pr["Bone marrow biopsy"]["PRDECOD"] == "" and pr["Bone marrow biopsy"]["PRCODE"] == ""


def test_immunization_in_cm(out: Path) -> None:
    (im,) = [r for r in _rows(out, "CM") if r["SRCTYPE"] == "immunization"]
    assert (im["CMTRT"], im["CMSPID"], im["CMROUTE"], im["CMDOSU"], im["CMSTDTC"]) == (
        "Influenza vaccine", "VAX-1", "INTRAMUSCULAR", "mL", "2023-11-02")
    assert (im["CMDECOD"], im["CMCODE"]) == ("INFLUENZA, SEASONAL, INJECTABLE", "141"), \
        "CMDECOD from vaccineCode (the IG): the CVX coding's display, CMCODE its code"
    assert im["CMINDC"] == "Prophylaxis", "no reasonCode: the documented CMINDC of a vaccine"


def test_ex_route_and_dose_unit_in_ct_and_the_dose_level_of_the_infusion(out: Path) -> None:
    ex = {r["SRCREF"].split("/")[1]: r for r in _rows(out, "EX")}
    cy = ex["cy-p1"]
    assert (cy["EXDOSE"], cy["EXDOSU"], cy["EXROUTE"], cy["EXDOSTXT"]) == ("850", "mg", "INTRAVENOUS", ""), \
        "the UCUM code, not the display 'milligram'; route text IV → ROUTE term"
    ld = ex["ld-p1"]
    assert (ld["EXDOSE"], ld["EXDOSU"], ld["EXROUTE"]) == ("30", "", "INTRAVENOUS"), "SNOMED 47625008"
    no_term = json.loads((out / "run-report.json").read_text())["cdisc"]["no_ct_term"]
    assert {"column": "EXDOSU", "value": "mg/m2", "rows": 2} in no_term, "a unit with no CT term is reported"
    assert (ex["inf-p1"]["EXDOSTXT"], ex["inf-p1"]["EXDOSE"], ex["inf-p1"]["EXDOSU"]) == ("DL1", "", ""), \
        "a Procedure carries no dose: the dose level, as SDTM's dose description"
    assert ex["inf-p2"]["EXDOSTXT"] == "DL2", "the arm actually received"
    crf = json.loads((out / "crf" / "101-001.json").read_text())
    assert {(x["kind"], x["dose_level"], x["route_code"]) for x in crf["ex"]} >= {
        ("infusion", "DL1", None), ("lymphodepletion", None, "47625008")}, "the CRF holds what EX shows"


def test_dm_arms_reference_dates_and_country(out: Path) -> None:
    dm = {r["SUBJID"]: r for r in _rows(out, "DM")}
    p1, p2, p3 = dm["101-001"], dm["101-002"], dm["101-003"]
    assert (p1["ARMCD"], p1["ACTARMCD"], p1["ACTARM"]) == ("DL1", "DL1", "DL1"), "infused: the planned arm"
    assert (p2["ARMCD"], p2["ACTARMCD"]) == ("DL1", "DL2"), "ResearchSubject.actualArm"
    assert (p3["ARMCD"], p3["ACTARMCD"], p3["ACTARM"], p3["RFXSTDTC"]) == ("DL2", "NOTTRT", "Not Treated", "")
    assert {r["COUNTRY"] for r in dm.values()} == {"DEU"}, "the site overlay's country"
    assert (p1["RFXSTDTC"], p1["RFXENDTC"]) == ("2024-01-27T09:00:00+00:00", "2024-02-01"), \
        "first lymphodepletion to the infusion (the earliest EXSTDTC, the latest EXENDTC)"
    assert (p1["RFENDTC"], p1["RFPENDTC"]) == ("", ""), "on study: no end of participation"
    assert (p2["RFENDTC"], p2["RFPENDTC"]) == ("2024-03-31", "2024-03-31"), "ResearchSubject.period.end"


def test_dm_arms_of_a_subject_with_no_assigned_arm(out: Path) -> None:
    """SDTMIG 3.2: a subject assigned no arm is NOTASSGN / Not Assigned in ARMCD/ARM, and in ACTARMCD/ACTARM
    while untreated (not NOTTRT, which says an arm was assigned)."""
    from fhir_adapter.crf.models import SubjectCRF
    from fhir_adapter.export.cdisc import _actual_arm, _planned_arm

    crf = SubjectCRF.model_validate_json((out / "crf" / "101-003.json").read_bytes())
    assert (_planned_arm(crf), _actual_arm(crf)) == (("DL2", "DL2"), ("NOTTRT", "Not Treated"))
    none = crf.model_copy(update={"arm": None, "dm": crf.dm.model_copy(update={"arm": None})})
    assert (_planned_arm(none), _actual_arm(none)) == (("NOTASSGN", "Not Assigned"), ("NOTASSGN", "Not Assigned"))


def test_not_done_and_specimen_columns(out: Path) -> None:
    lb = [r for r in _rows(out, "LB") if r["SUBJID"] == "101-001"]
    (nd,) = [r for r in lb if r["LBSTAT"]]
    assert (nd["LBSTAT"], nd["LBREASND"], nd["LBTESTCD"], nd["LBORRES"], nd["VISIT"]) == (
        "NOT DONE", "Collection not returned", "PROT24H", "", "Week 8")
    (c3,) = [r for r in lb if r["LBTESTCD"] == "C3"]
    assert (c3["LBSPEC"], c3["LBFAST"], c3["LBREFID"], c3["LBMETHOD"], c3["LBSPID"], c3["LBCAT"]) == (
        "SERUM", "Y", "ACC-77", "NEPHELOMETRY", "LAB-c3-29", "LABORATORY")
    assert c3["LBDTC"] == "2024-02-29T07:40:00+00:00", "LBDTC is the collection time of the specimen"


def test_lloq_of_a_result_reported_below_the_limit(out: Path) -> None:
    lb = {r["SRCREF"].split("/")[1]: r for r in _rows(out, "LB") if r["SUBJID"] == "101-001"}
    upcr = lb["upcr-29"]
    assert (upcr["LBORRES"], upcr["LBORRESU"], upcr["LBSTRESC"], upcr["LBSTRESN"], upcr["LBSTRESU"]) == (
        "<50", "g/kg", "<0.05", "", "g/g")
    assert upcr["LBLLOQ"] == "0.05", "the censored value's limit, in the standard unit (no `lloq` in items.yaml)"
    assert lb["c3-29"]["LBLLOQ"] == "", "a quantified result of a test without `lloq`: no limit known"


def test_lloq_of_the_item_comes_before_the_limit_a_result_names() -> None:
    from fhir_adapter.crf.models import Finding, SourceRef
    from fhir_adapter.export.cdisc import lloq

    study = load_study(ROOT / "mappings" / "lcar-aio")
    src = SourceRef(resource_type="Observation", id="x")
    below = Finding(domain="PC", item="car_transgene", value=10, comparator="<", source=src)
    assert lloq(study.items["car_transgene"], below) == 20, "items.yaml `lloq` of the test"
    assert lloq(study.items["car_transgene"], below.model_copy(update={"comparator": None, "value": 300})) == 20
    assert lloq(study.items["upcr"], below.model_copy(update={"item": "upcr", "comparator": ">"})) is None, \
        "a result above a limit names no lower limit"


def test_investigator_and_death_from_the_site_study_and_patient(out: Path) -> None:
    dm = {r["SUBJID"]: r for r in _rows(out, "DM")}
    assert (dm["101-002"]["INVID"], dm["101-002"]["INVNAM"]) == ("INV-0707", "Ysolde Quarrendon"), \
        "the contained Practitioner that is the site study's principalInvestigator"
    assert (dm["101-001"]["INVID"], dm["101-001"]["INVNAM"]) == ("", ""), "the protocol study names no investigator"
    assert {r["INVID"] for r in _rows(out, "LB") if r["SUBJID"] == "101-002"} == {"INV-0707"}
    assert (dm["101-002"]["DTHDTC"], dm["101-002"]["DTHFL"]) == ("2024-03-31", "Y")
    assert (dm["101-001"]["DTHDTC"], dm["101-001"]["DTHFL"]) == ("", "")
    (fatal,) = [r for r in _rows(out, "AE") if r["SUBJID"] == "101-002"]
    assert (fatal["AEOUT"], fatal["AESDTH"], fatal["DTHDTC"]) == ("FATAL", "Y", "2024-03-31")


def test_ingredients_time_points_and_anatomical_region(out: Path) -> None:
    cm = {r["SRCREF"].split("/")[1]: r for r in _rows(out, "CM")}
    assert cm["ms-smx"]["CMINGRD"] == "Sulfamethoxazole; Trimethoprim", "active ingredients of the Medication"
    assert cm["im1"]["CMINGRD"] == "", "no Medication referenced"
    lb = {r["SRCREF"].split("/")[1]: r for r in _rows(out, "LB") if r["SUBJID"] == "101-001"}
    pre = lb["crp-pre"]
    assert (pre["LBTPT"], pre["LBTPTREF"], pre["LBELTM"]) == (
        "1 H BEFORE LCAR-AIO INFUSION", "LCAR-AIO INFUSION", "-PT1H")
    assert (pre["LBLOC"], pre["LBANTREG"]) == ("LEFT ANTECUBITAL VEIN", "LEFT ANTECUBITAL VEIN")
    assert (lb["c3-29"]["LBTPT"], lb["c3-29"]["LBELTM"], lb["c3-29"]["LBANTREG"]) == ("", "", "")
    (temp,) = [r for r in _rows(out, "VS") if r["SRCREF"].startswith("Observation/temp-post")]
    assert (temp["VSTPT"], temp["VSELTM"]) == ("15 MIN AFTER LCAR-AIO INFUSION", "PT15M")


def test_blfl_marks_the_record_the_derivations_take_as_baseline(out: Path) -> None:
    lb = [r for r in _rows(out, "LB") if r["SUBJID"] == "101-002"]
    flagged = {(r["LBTESTCD"], r["VISIT"], r["LBDTC"][:10], r["SRCREF"].split("/")[1]) for r in lb if r["LBBLFL"]}
    assert flagged == {("C3", "Day 1 (infusion)", "2024-02-01", "p2-c3-1"),
                       ("C4", "Screening", "2024-01-12", "p2-c4--20"),
                       ("CRP", "", "2024-01-02", "p2-crp--30")}, \
        "the last result on or before Day 1 in the look-back, whatever visit (or none) it falls in"
    assert [r["LBBLFL"] for r in lb if r["LBTESTCD"] == "C3"] == ["", "Y", ""], "the BL visit is not the baseline"
    crp = [r for r in lb if r["LBTESTCD"] == "CRP"]
    assert [(r["VISIT"], r["LBSTRESN"], r["LBBLFL"]) for r in crp] == [("", "7", "Y"), ("Week 4 (day 29)", "2", "")]
    by_test: dict[tuple[str, str], int] = {}
    for domain in ("LB", "VS", "QS", "PC", "IS"):
        for r in _rows(out, domain):
            if r[f"{domain}BLFL"] == "Y":
                key = (r["USUBJID"], r[f"{domain}TESTCD"])
                by_test[key] = by_test.get(key, 0) + 1
    assert set(by_test.values()) == {1}, "one baseline record per subject and test"
    validate(out / "export" / "odm.xml")  # the row in no visit is an unscheduled event with its own repeat key


def test_ae_meddra_hierarchy_seriousness_and_ct(out: Path) -> None:
    (ae,) = [r for r in _rows(out, "AE") if r["SUBJID"] == "101-001"]
    assert (ae["AESPID"], ae["AELLT"], ae["AELLTCD"], ae["AEDECOD"], ae["AEPTCD"]) == (
        "AE-001", "Synthetic headache term", "90000001", "Synthetic headache PT", "90000010")
    assert (ae["AEHLT"], ae["AEHLGT"], ae["AESOC"], ae["AESOCCD"]) == (
        "Synthetic pain HLT", "Synthetic pain HLGT", "Synthetic nervous SOC", "90010000")
    assert (ae["AEBODSYS"], ae["AEBDSYCD"]) == ("Synthetic nervous SOC", "90010000"), "the primary SOC"
    assert (ae["AESER"], ae["AESHOSP"], ae["AESDTH"], ae["AESLIFE"]) == ("Y", "Y", "N", "N")
    assert (ae["AESEV"], ae["AEOUT"], ae["AEACN"], ae["AERELNST"]) == (
        "SEVERE", "RECOVERED/RESOLVED", "NOT APPLICABLE", "")
    report: dict[str, Any] = json.loads((out / "run-report.json").read_text())["cdisc"]
    assert report["meddra"]["dictionary"].endswith("meddra") and report["meddra"]["codes_not_in_dictionary"] == []


_ISO = (r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?"
        r"([+-]([01]\d|2[0-3]):[0-5]\d|Z)?$")
#: the top-level properties of the published v1.1 schema (tag v1.1, 2024-12-05), which allows no others
_TOP = {"datasetJSONCreationDateTime", "datasetJSONVersion", "fileOID", "dbLastModifiedDateTime", "originator",
        "sourceSystem", "studyOID", "metaDataVersionOID", "metaDataRef", "itemGroupOID", "records", "name",
        "label", "columns", "rows"}
_COLUMN = {"itemOID", "name", "label", "dataType", "targetDataType", "length", "displayFormat", "keySequence"}
_DATA_TYPES = {"string", "integer", "decimal", "float", "double", "boolean", "datetime", "date", "time", "URI"}
_PY = {"string": (str,), "integer": (int,), "double": (int, float), "float": (int, float), "boolean": (bool,)}


def validate_dataset_json(doc: dict[str, Any]) -> None:
    """The rules of the Dataset-JSON v1.1 JSON schema (cdisc-org/DataExchange-DatasetJson, schema/
    dataset.schema.json), checked structurally: the schema file itself is not copied into this repository."""
    import re

    missing = {"datasetJSONCreationDateTime", "datasetJSONVersion", "itemGroupOID", "records", "name", "label",
               "columns"} - set(doc)
    assert not missing, missing
    assert set(doc) <= _TOP, set(doc) - _TOP
    assert re.match(r"^1\.1(\.(0|[1-9][0-9]*))?$", doc["datasetJSONVersion"])
    assert all(re.match(_ISO, doc[k]) for k in ("datasetJSONCreationDateTime", "dbLastModifiedDateTime") if k in doc)
    assert set(doc["sourceSystem"]) == {"name", "version"}
    assert isinstance(doc["records"], int) and doc["records"] == len(doc["rows"]) >= 0
    for col in doc["columns"]:
        assert {"itemOID", "name", "label", "dataType"} <= set(col) <= _COLUMN, col
        assert col["dataType"] in _DATA_TYPES and isinstance(col["label"], str) and len(col["label"]) <= 40
        assert col.get("keySequence", 1) >= 1
    for row in doc["rows"]:
        assert isinstance(row, list) and len(row) == len(doc["columns"])
        for value, col in zip(row, doc["columns"], strict=True):
            assert value is None or isinstance(value, _PY[col["dataType"]]), (col["name"], value)


def test_dataset_json_per_domain_matches_csv_and_odm(out: Path) -> None:
    import xml.etree.ElementTree as ET

    from fhir_adapter.export.cdisc import COLUMNS, DOMAINS

    ns = "{http://www.cdisc.org/ns/odm/v1.3}"
    odm = ET.parse(out / "export" / "odm.xml").getroot()
    study = odm.find(f"{ns}Study")
    assert study is not None
    item_defs = {e.get("OID"): e for e in study.iter(f"{ns}ItemDef")}
    for domain in DOMAINS:
        doc = json.loads((out / "export" / f"{domain}.json").read_text(encoding="utf-8"))
        validate_dataset_json(doc)
        assert doc["studyOID"] == study.get("OID") and doc["itemGroupOID"] == f"IG.{domain}"
        group = next(g for g in study.iter(f"{ns}ItemGroupDef") if g.get("OID") == f"IG.{domain}")
        odm_items = {r.get("ItemOID") for r in group.iter(f"{ns}ItemRef")}
        assert odm_items <= {c["itemOID"] for c in doc["columns"]}, "every ODM item is a Dataset-JSON column"
        assert [c["name"] for c in doc["columns"]] == list(COLUMNS[domain])
        for c in doc["columns"]:
            # every column refers to an ItemDef of odm.xml (metaDataRef), the keys and the columns ODM's context
            # states (STUDYID, USUBJID, VISIT, --TEST …) too, with one name, label and data type for both
            assert c["itemOID"] in item_defs, f"{domain}.{c['name']}: no ItemDef {c['itemOID']} in odm.xml"
            item = item_defs[c["itemOID"]]
            text = item.find(f"{ns}Description/{ns}TranslatedText")
            assert text is not None and text.text == c["label"]
            assert item.get("Name") == c["name"]
            assert c["dataType"] == {"integer": "integer", "float": "double"}.get(item.get("DataType", ""), "string")
        csv_rows = _rows(out, domain)
        assert len(csv_rows) == doc["records"]
        for csv_row, row in zip(csv_rows, doc["rows"], strict=True):
            assert [("" if v is None else v) for v in row] == [
                int(csv_row[c]) if t["dataType"] == "integer" and csv_row[c] else
                float(csv_row[c]) if t["dataType"] == "double" and csv_row[c] else csv_row[c]
                for c, t in zip(COLUMNS[domain], doc["columns"], strict=True)]
    ae_outcome = item_defs["IT.AE.AEOUT"].find(f"{ns}CodeListRef")
    assert ae_outcome is not None and ae_outcome.get("CodeListOID") == "CL.OUT"
    outs = next(c for c in study.iter(f"{ns}CodeList") if c.get("OID") == "CL.OUT")
    assert "RECOVERED/RESOLVED" in {i.get("CodedValue") for i in outs.iter(f"{ns}EnumeratedItem")}
