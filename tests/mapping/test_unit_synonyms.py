"""Unit spellings of real EHRs that are not UCUM codes (µmol/L, 10^3/uL, °C, mg/24h, mmol/l, cells/uL):
mappings/units/synonyms.yaml turns each into its UCUM code before the item's units are matched, the CRF keeps
the unit as sent, the run report counts each spelling; an ambiguous spelling is still quarantined, and a site
overlay adds its own spellings, checked when it loads."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.crf.models import Finding
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.observations import ObservationMapper
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study, load_study
from fhir_adapter.study.yamlfile import MappingError
from tests.feedkit import Feed, at

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "mappings" / "lcar-aio"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
LOCAL = "urn:oid:2.16.840.1.113883.3.9999.99"   # a lab system's own unit codes


def observation(code: str, quantity: dict[str, Any], id_: str = "o1") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": id_, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-05T09:00:00+01:00", "valueQuantity": quantity}


def mapped(study: Study, resources: list[dict[str, Any]]) -> tuple[list[Finding], RunLog]:
    log = RunLog()
    return ObservationMapper(study, log).map(resources, "T-001"), log


# (LOINC code, valueQuantity as the EHR sends it, item, the spelling read, its UCUM code, the CRF value)
SENT = [
    ("2160-0", {"value": 88.4, "unit": "µmol/L", "system": LOCAL, "code": "UMOLL"}, "creatinine",
     "µmol/L", "umol/L", 1.0),                                       # micro sign U+00B5 in the unit text
    ("2160-0", {"value": 88.4, "unit": "μmol/L"}, "creatinine", "μmol/L", "umol/L", 1.0),   # Greek mu U+03BC
    ("777-3", {"value": 150, "unit": "10^3/uL", "system": UCUM, "code": "10^3/uL"}, "platelets",
     "10^3/uL", "10*3/uL", 150.0),                                   # in Quantity.code, system UCUM
    ("6690-2", {"value": 3.5, "unit": "x10^9/L"}, "leukocytes", "x10^9/L", "10*9/L", 3.5),
    ("751-8", {"value": 2.1, "code": "10E9/L"}, "neutrophils", "10E9/L", "10*9/L", 2.1),  # code, no system
    ("8310-5", {"value": 38.2, "unit": "°C", "system": SNOMED, "code": "258710007"}, "temperature",
     "°C", "Cel", 38.2),                                             # SNOMED unit code: the unit text is read
    ("8310-5", {"value": 100.4, "code": "°F"}, "temperature", "°F", "[degF]", 38.0),
    ("2889-4", {"value": 650, "unit": "mg/24h"}, "protein_24h", "mg/24h", "mg/(24.h)", 0.65),
    ("2889-4", {"value": 0.65, "unit": "g/24 h"}, "protein_24h", "g/24 h", "g/(24.h)", 0.65),
    ("718-7", {"value": 8.0, "unit": "mmol/l", "system": UCUM, "code": "mmol/l"}, "hemoglobin",
     "mmol/l", "mmol/L", 12.89),                                    # lower-case litre, then the Hb factor
    ("8116-6", {"value": 120, "unit": "cells/uL"}, "cd19", "cells/uL", "/uL", 120.0),
    ("2276-4", {"value": 250, "unit": "mcg/L"}, "ferritin", "mcg/L", "ug/L", 250.0),
    ("62238-1", {"value": 92, "unit": "mL/min/1.73m2"}, "egfr", "mL/min/1.73m2", "mL/min/{1.73_m2}", 92.0),
]


@pytest.mark.parametrize(("code", "quantity", "item", "spelling", "ucum", "expected"), SENT,
                         ids=[s[3] for s in SENT])
def test_each_spelling_maps_to_the_crf_value_and_the_crf_keeps_it_as_sent(
        study: Study, code: str, quantity: dict[str, Any], item: str, spelling: str, ucum: str,
        expected: float) -> None:
    (f,), log = mapped(study, [observation(code, quantity)])
    assert not log.quarantine
    assert f.item == item and f.value == pytest.approx(expected, rel=1e-6) and f.unit == study.items[item].unit
    assert f.orig_unit == spelling
    assert log.counts[f"units.synonym.{spelling}->{ucum}"] == 1


def test_a_reference_range_in_a_synonym_is_converted_like_the_value(study: Study) -> None:
    q = {"value": 88.4, "unit": "µmol/L"}
    o = observation("2160-0", q) | {"referenceRange": [{"low": {"value": 44.2, "unit": "µmol/L"},
                                                       "high": {"value": 97.24, "unit": "µmol/L"}}]}
    (f,), _ = mapped(study, [o])
    assert f.ref_low == pytest.approx(0.5, rel=1e-5) and f.ref_high == pytest.approx(1.1, rel=1e-5)


@pytest.mark.parametrize(("code", "unit", "item"), [
    ("5130-0", "IU/mL", "anti_dsdna"),     # which international unit? no synonym: the site decides
    ("4532-8", "units/mL", "ch50"),
    ("62238-1", "mL/min", "egfr"),         # a clearance not indexed to 1.73 m² is not an eGFR
])
def test_an_ambiguous_spelling_is_still_quarantined(study: Study, code: str, unit: str, item: str) -> None:
    fs, log = mapped(study, [observation(code, {"value": 30, "unit": unit})])
    assert fs == []
    (q,) = log.quarantine
    assert q.rule == "unknown-unit" and f"unit '{unit}'" in q.reason and item in q.reason
    assert "unit_synonyms" in q.fix
    assert not any(k.startswith("units.synonym.") for k in log.counts)


def test_an_unaccepted_unit_behind_a_synonym_names_both(study: Study) -> None:
    fs, log = mapped(study, [observation("4485-9", {"value": 95, "unit": "mmol/l"})])   # C3 in mmol/L: no
    (q,) = log.quarantine
    assert fs == [] and q.rule == "unknown-unit" and "'mmol/l' (UCUM 'mmol/L')" in q.reason
    assert "add 'mmol/L' to accept_units" in q.fix


# -- a site overlay adds spellings ---------------------------------------------------------------------
def _site(tmp_path: Path, synonyms: str) -> Path:
    site = tmp_path / "site.yaml"
    site.write_text(f"site: x\nunit_synonyms:\n{synonyms}", encoding="utf-8")
    return site


def test_a_site_overlay_adds_its_ehrs_spelling(study: Study, tmp_path: Path) -> None:
    plt = observation("777-3", {"value": 250, "unit": "Tsd/µl"})   # German "thousand per microlitre"
    assert mapped(study, [plt])[1].quarantine[0].rule == "unknown-unit"
    site_study = load_study(STUDY, _site(tmp_path, '  "Tsd/µl": 10*3/uL\n'))
    (f,), log = mapped(site_study, [plt])
    assert (f.value, f.unit, f.orig_unit) == (250.0, "10*9/L", "Tsd/µl")
    assert log.counts["units.synonym.Tsd/µl->10*3/uL"] == 1
    assert site_study.unit_synonyms["µmol/L"] == "umol/L"   # the shared table still applies


@pytest.mark.parametrize(("synonyms", "reason"), [
    ('  "°C": "[degF]"\n', "'°C' is Cel in synonyms.yaml, not [degF]"),
    ('  "mg/dL": mg/L\n', "takes 'mg/dL' as it is"),   # a unit items take as is: would turn it into another
    ('  "Tsd/µl": Tsd/uL\n', "'Tsd/uL' is not a UCUM unit"),
    ('  "microgram": mcg\n', "'mcg' is itself a synonym (of ug)"),
])
def test_a_wrong_site_synonym_is_refused_at_its_line(tmp_path: Path, synonyms: str, reason: str) -> None:
    with pytest.raises(MappingError) as err:
        load_study(STUDY, _site(tmp_path, synonyms))
    assert err.value.file.endswith("site.yaml") and err.value.line == 3 and reason in err.value.reason


# -- through a run: the CDISC columns and the run report ----------------------------------------------
def test_a_run_reports_the_spellings_and_exports_the_ucum_code(study: Study, tmp_path: Path) -> None:
    day1 = dt.date(2024, 2, 1)
    f = Feed()
    f.subject("p1", "101-001", name="Alice Smithson", mrn="MRN-1", birth="1985-04-17", day1=day1)
    f.obs("p1", "2160-0", at(day1, 29), id_="creat-29")
    f.resources["Observation"][-1]["valueQuantity"] = {"value": 88.4, "unit": "µmol/L"}
    log = RunLog()
    run(FileSource(f.write(tmp_path / "feed"), log), study, tmp_path / "out", log)
    report = json.loads((tmp_path / "out" / "run-report.json").read_text(encoding="utf-8"))
    assert report["counts"]["units.synonym.µmol/L->umol/L"] == 1 and report["quarantine"] == []
    with (tmp_path / "out" / "export" / "LB.csv").open(newline="", encoding="utf-8") as fh:
        (row,) = [r for r in csv.DictReader(fh) if r["LBTESTCD"] == "CREAT"]
    assert (row["LBORRES"], row["LBORUCUM"], row["LBORRESU"]) == ("88.4", "umol/L", "umol/L")
    assert (row["LBSTRESN"], row["LBSTUCUM"], row["LBSTRESU"]) == ("1", "mg/dL", "mg/dL")
