"""Efficacy endpoints wired into results/study.json and write-back, on one hand-built subject."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from fhir_adapter.crf.models import Finding, SourceRef, SubjectCRF
from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.results.study_json import settings_echo, study_json, subject_row
from fhir_adapter.results.subject import derive_subject
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study
from fhir_adapter.terminology.codes import EXT_RESULT_SOURCE, UCUM
from fhir_adapter.writeback.sources import result_sources
from tests.efficacy_helpers import conmed, visit_crf
from tests.helpers import descriptor, finding

VISIT_KEYS = {"pga", "pga_change", "lldas", "lldas_failed", "pred_eq_mg_per_day", "upcr_mg_mg", "upcr_change",
              "protein_24h_g", "protein_24h_change", "c3", "c3_change", "c4", "c4_change", "anti_dsdna",
              "anti_dsdna_change", "anti_sm", "anti_sm_change", "igg", "igg_change", "iga", "iga_change", "igm",
              "igm_change", "cd19"}
SUBJECT_KEYS = {"seroconversion", "b_cell_aplasia", "ada_status", "renal_response", "glucocorticoid_series"}
E = Enrollee(subject_id="T-001", patient_id="p1", research_subject=SourceRef(resource_type="ResearchSubject", id="rs1"),
             status="follow-up", arm="DL1", consent_date=None, site=None, sex="F", birth_date=None,
             day1=dt.date(2024, 2, 1))


def subject() -> SubjectCRF:
    bl: dict[str, Finding | float] = {
        "pga": finding("pga", -7, 1.8, domain="QS"), "sledai2k.arthritis": descriptor("arthritis", -7, True),
        "upcr": 1.2, "c3": 0.6, "anti_dsdna": finding("anti_dsdna", -7, 120, ref_high=30), "cd19": 180}
    w4: dict[str, Finding | float] = {
        "pga": finding("pga", 29, 0.9, domain="QS"), "sledai2k.arthritis": descriptor("arthritis", 29, True),
        "upcr": 0.4, "c3": 0.9, "anti_dsdna": finding("anti_dsdna", 29, 12, ref_high=30), "cd19": 0}
    w12: dict[str, Finding | float] = {
        "pga": finding("pga", 85, 0.5, domain="QS"), "sledai2k.rash": descriptor("rash", 85, True), "cd19": 20}
    return visit_crf({"BL": (-7, bl), "W4": (29, w4), "W12": (85, w12)},
                     cm=[conmed("prednisolone", -60, 29, dose=20), conmed("prednisolone", 30, None, dose=5)])


def test_visit_subject_and_study_keys(study: Study) -> None:
    res = derive_subject(subject(), study)
    row = subject_row(res)
    assert set(row) >= SUBJECT_KEYS
    visits = {v["visit"]: v for v in row["visits"]}
    assert all(set(v) >= VISIT_KEYS for v in visits.values())
    w4, w12 = visits["W4"], visits["W12"]
    assert (w4["pga"], w4["pga_change"], w4["pred_eq_mg_per_day"]) == (0.9, -0.9, 20)  # 20 mg to day 29
    assert w4["lldas"] is False and w4["lldas_failed"] == ["pred_eq_le_7_5"]   # arthritis 4, not new
    assert w12["lldas"] is False and w12["lldas_failed"] == ["no_new_features"]   # rash is new
    assert visits["BL"]["lldas"] is None and visits["BL"]["lldas_failed"] == []
    assert w4["upcr_mg_mg"] == 0.4 and w4["upcr_change"] == -0.8 and w4["c3_change"] == 0.3
    assert row["seroconversion"]["anti_dsdna"]["seroconverted"] is True
    assert row["b_cell_aplasia"]["recovered_at"]["visit"] == "W12"
    assert row["ada_status"]["status"] is None and row["renal_response"] is None
    assert row["glucocorticoid_series"]["points"][0]["mg_per_day"] == 20
    doc = json.loads(json.dumps(study_json(study, [row]), default=str))
    rate = {r["visit"]: r for r in doc["lldas_rate"]}
    assert rate["W4"] == {"visit": "W4", "n": 1, "responders": 0, "rate": 0.0} and rate["BL"]["rate"] is None
    echo = settings_echo(study)
    assert echo["lldas"]["pred_eq_max_mg"] == 7.5 and echo["glucocorticoids"]["systemic_routes"] == [
        "oral", "intravenous", "intramuscular"]
    assert {"pga", "renal", "immunology"} <= set(echo)


def test_writeback_lldas_and_dose_observations(study: Study) -> None:
    res = derive_subject(subject(), study)
    obs = res.observations(E, study, ("lldas", "glucocorticoids"))
    assert all(r4_problem(o) is None for o in obs)
    by = {(o["code"]["coding"][0]["code"], o["identifier"][0]["value"].split(".")[2]): o for o in obs}
    assert ("lldas", "BL") not in by   # not evaluable: nothing written
    lldas = by[("lldas", "W4")]
    assert lldas["valueBoolean"] is False
    comps = {c["code"]["coding"][0]["code"]: c["valueBoolean"] for c in lldas["component"]}
    assert comps == {"lldas-sledai-le-4": True, "lldas-no-major-organ-activity": True,
                     "lldas-no-new-features": True, "lldas-pga-le-1": True, "lldas-pred-eq-le-7-5": False}
    # R4 allows only Observation & co in derivedFrom; the medication sources are result-source extensions
    assert all(d["reference"].startswith("Observation/") for d in lldas["derivedFrom"])
    refs = set(result_sources(lldas))
    assert any(r.startswith("MedicationStatement/") for r in refs) and len(refs) >= 3
    assert {x["valueReference"]["reference"] for x in lldas["extension"] if x["url"] == EXT_RESULT_SOURCE} == {
        r for r in refs if not r.startswith("Observation/")}
    dose = by[("pred-eq-daily-dose", "W12")]
    assert dose["valueQuantity"] == {"value": 5.0, "unit": "mg/d", "system": UCUM, "code": "mg/d"}
    codes = {c["code"] for c in json.loads(
        (Path(__file__).resolve().parents[2] / "profiles" / "CodeSystem-results.json").read_text())["concept"]}
    written = {o["code"]["coding"][0]["code"] for o in obs} | set(comps)
    assert written <= codes
