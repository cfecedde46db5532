"""Safety endpoints wired into the CRF, results/study.json and write-back, on hand-built subjects."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

from fhir_adapter.crf.models import AdverseEvent, Finding, SourceRef, SubjectCRF
from fhir_adapter.endpoints.kinetics import KEYS as KINETICS_KEYS
from fhir_adapter.endpoints.safety import SafetyResult
from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.results.study_json import study_json, subject_row
from fhir_adapter.results.subject import derive_subject
from fhir_adapter.review.apply import SubjectReview
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study
from fhir_adapter.terminology.codes import UCUM
from fhir_adapter.writeback.sources import result_sources
from tests.helpers import DAY1, crf, d, finding

_ids = itertools.count(1)
E = Enrollee(subject_id="T-001", patient_id="p1",
             research_subject=SourceRef(resource_type="ResearchSubject", id="rs1"), status="follow-up",
             arm="DL1", consent_date=None, site=None, sex="F", birth_date=None, day1=DAY1,
             infusion=SourceRef(resource_type="Procedure", id="inf1"))
SUBJECT_KEYS = {"teae_count", "serious_teae_count", "max_teae_grade", "crs_max_grade", "icans_max_grade",
                "dlt", "dlt_events", "kinetics", "pre_infusion_aes"}


def ae(term: str, onset: int, end: int | None, grade: int | None, **kw: Any) -> AdverseEvent:
    return AdverseEvent(term=term, grade=grade, onset_date=d(onset), resolution_date=d(end) if end else None,
                        source=SourceRef(resource_type="AdverseEvent", id=f"sae{next(_ids)}"), **kw)


def pc(day_after: int, value: float, comparator: str | None = None) -> Finding:
    return finding("car_transgene", day_after + 1, value, domain="PC", comparator=comparator,
                   unit="{copies}/ug{DNA}")


def subject(sid: str, arm: str, aes: list[AdverseEvent], infused: bool = True) -> SubjectCRF:
    # a constructed CAR-T-like profile (days 0..90, copies/ug)
    kin = [pc(0, 20, "<"), pc(1, 50), pc(4, 2000), pc(7, 15000), pc(10, 30000), pc(14, 12000), pc(21, 3000),
           pc(28, 800), pc(56, 100), pc(90, 20, "<")]
    c = crf([*kin, finding("crp", 60, 1.0)], {}, ld_start_day=-5, ae=aes)
    c = c.model_copy(update={"subject_id": sid, "arm": arm})
    return c if infused else c.model_copy(update={"day1": None})


def test_subject_keys_crf_flags_and_study_level(study: Study) -> None:
    a = subject("T-001", "DL1", [ae("Cytokine release syndrome", 2, 6, 3, crs=True, related=True),
                                 ae("Nausea", -2, -1, 1)])
    res_a = derive_subject(a, study)
    flagged = res_a.get("safety", SafetyResult)
    assert flagged is not None
    assert [x.teae for x in flagged.flagged_ae] == [True, False]
    assert [x.pre_infusion for x in flagged.flagged_ae] == [False, True]
    assert [x.teae for x in a.ae] == [None, None]  # the CRF is not changed by the derivation
    row = subject_row(res_a)
    assert set(row) >= SUBJECT_KEYS
    counts = (row["teae_count"], row["max_teae_grade"], row["crs_max_grade"], row["icans_max_grade"])
    assert counts == (1, 3, 3, None)
    assert row["dlt"] is True and row["dlt_events"][0]["rule"] == "crs-icans-grade-3-over-72h"
    assert set(row["kinetics"]) == {*KINETICS_KEYS, "car_cells"}
    assert row["kinetics"]["cmax"] == 30000 and row["kinetics"]["cmax_unit"] == "{copies}/ug{DNA}"
    assert row["kinetics"]["tmax_day"] == 10 and row["kinetics"]["persistence_day"] == 56
    assert row["kinetics"]["car_cells"]["cmax"] is None
    assert [x["term"] for x in row["pre_infusion_aes"]] == ["Nausea"]

    rows = [row] + [subject_row(derive_subject(subject(f"T-00{i}", "DL1", []), study)) for i in (2, 3)]
    rows.append(subject_row(derive_subject(subject("T-009", "DL1", [], infused=False), study)))
    out = json.loads(json.dumps(study_json(study, rows)))
    dl1 = next(x for x in out["dose_levels"] if x["arm"] == "DL1")
    assert (dl1["n_treated"], dl1["n_dlt_evaluable"], dl1["n_dlt"]) == (3, 3, 1)
    assert dl1["decision"] == "expand to 6"
    assert {x["arm"] for x in out["dose_levels"]} == {"DL1", "DL2", "DL3", "EXP"}
    assert out["rp2d"]["arm"] is None and out["rp2d"]["method"] == "3+3"
    overall = out["teae_summary"]["overall"]
    assert overall["n_subjects"] == 3 and overall["any_teae"] == 1
    assert out["teae_summary"]["pre_infusion_aes"] == {"subjects": 1, "events": 1}
    assert out["settings"]["dlt"]["window"] == {"first_day": 1, "last_day": 30}


def test_writeback_observations(study: Study) -> None:
    r = derive_subject(subject("T-001", "DL1", [ae("ICANS", 3, 4, 4, icans=True)]), study)
    obs = {o["code"]["coding"][0]["code"]: o for o in r.observations(E, study, ("dlt", "kinetics"))}
    assert set(obs) == {"dlt", "cart-cmax", "cart-tmax", "cart-auc0-28d"}
    for o in obs.values():
        assert r4_problem(o) is None
        assert o["identifier"][0]["value"].startswith("LCAR-AIO-SLE.T-001.subject.")
    assert obs["dlt"]["valueBoolean"] is True and obs["dlt"]["effectiveDateTime"] == "2024-03-01"
    # AdverseEvent and Procedure are not derivedFrom types in R4: the sources are result-source extensions
    assert "derivedFrom" not in obs["dlt"]
    assert result_sources(obs["dlt"]) == sorted(["Procedure/inf1", r.crf.ae[0].source.reference])
    q = obs["cart-auc0-28d"]["valueQuantity"]
    assert (q["system"], q["code"]) == (UCUM, "{copies}/ug{DNA}.d") and round(q["value"], 1) == 231773.7
    tmax = obs["cart-tmax"]["valueQuantity"]
    assert tmax["code"] == "d" and tmax["value"] == 10
    assert obs["cart-cmax"]["effectiveDateTime"] == (DAY1 + dt.timedelta(days=10)).isoformat()


def test_no_dlt_names_what_it_was_judged_from(study: Study) -> None:
    r = derive_subject(subject("T-001", "DL1", []), study)
    (dlt,) = [o for o in r.observations(E, study, ("dlt", "kinetics")) if o["code"]["coding"][0]["code"] == "dlt"]
    assert dlt["valueBoolean"] is False and result_sources(dlt) == ["Procedure/inf1"]
    first, last = DAY1.isoformat(), (DAY1 + dt.timedelta(days=29)).isoformat()
    assert f"{first} to {last}" in dlt["method"]["text"] and "no adverse event in the window" in dlt["method"]["text"]


def test_no_observation_where_the_value_is_unknown(study: Study) -> None:
    r = derive_subject(subject("T-001", "DL1", [ae("Diarrhoea", 3, 20, None)]), study)
    codes = {o["code"]["coding"][0]["code"] for o in r.observations(E, study, ("dlt", "kinetics"))}
    assert "dlt" not in codes and "cart-cmax" in codes
    not_infused = derive_subject(subject("T-1", "DL1", [], infused=False), study)
    assert not_infused.observations(E, study, ("dlt", "kinetics")) == []


def test_result_codes_are_in_the_codesystem() -> None:
    path = Path(__file__).resolve().parents[2] / "profiles" / "CodeSystem-results.json"
    cs = json.loads(path.read_text())
    assert {"dlt", "cart-cmax", "cart-tmax", "cart-auc0-28d"} <= {c["code"] for c in cs["concept"]}
    assert cs["count"] == len(cs["concept"])


def test_the_crf_file_carries_the_teae_flag_of_the_safety_endpoint(study: Study) -> None:
    """The CRF file's AEs (``SubjectReview.crf_file``) have ``teae``/``pre_infusion`` set by the one TEAE rule
    (derive/safety.py teae_flag), the same records the exports' AE domain is built from; lymphodepletion
    starts on day -5."""
    no_onset = AdverseEvent(term="Fatigue", grade=1, source=SourceRef(resource_type="AdverseEvent", id="sae-x"))
    aes = [ae("Cytokine release syndrome", 1, 4, 2, crs=True), ae("Nausea", -2, -1, 1),
           ae("Headache", -10, -8, 1), ae("Arthralgia", -10, None, 3, baseline_grade=1), no_onset]
    c = subject("T-001", "DL1", aes)
    res = derive_subject(c, study)
    review = SubjectReview(crf=c, candidates=[])
    filed = review.crf_file(res.export_updates())
    assert [(a.term, a.teae, a.pre_infusion) for a in filed.ae] == [
        ("Cytokine release syndrome", True, False),  # onset on Day 1
        ("Nausea", False, True),                     # after lymphodepletion start, before Day 1
        ("Headache", False, False),                  # before lymphodepletion
        ("Arthralgia", True, False),                 # worsened above its baseline grade
        ("Fatigue", True, False),                    # onset unknown (listed)
    ]
    assert [a.crs for a in filed.ae] == [a.crs for a in c.ae]  # the mapping's CRS/ICANS flags are kept
    assert [a.teae for a in review.export_crf(res.export_updates()).ae] == [a.teae for a in filed.ae]
    assert all(a.teae is None for a in c.ae)  # the CRF the derivations read stays as mapped
    assert review.crf_file({}) is c
