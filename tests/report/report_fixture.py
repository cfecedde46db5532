"""A hand-made run output (results/study.json, crf/*.json, run-report.json) following the results contract.

Eight subjects over DL1, DL2, DL3 and EXP; the CRFs are built through the pydantic models so they are what
the pipeline writes. Numbers follow simple formulas so tests can state what the report must show.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from fhir_adapter.crf.models import AdverseEvent, Demographics, Finding, SourceRef, SubjectCRF, VisitRecord

VISITS = [("SCR", -28), ("BL", -7), ("D1", 1), ("W1", 8), ("W2", 15), ("W4", 29), ("W12", 85), ("W24", 169),
          ("W52", 365)]
ARMS = ["DL1", "DL1", "DL2", "DL2", "DL3", "DL3", "EXP", "EXP"]
KINETIC_DAYS = [-7, 4, 8, 11, 15, 22, 29, 57, 85, 169]
TEAE_TERMS = ["Neutropenia", "Cytokine release syndrome", "Fatigue", "Pyrexia"]


def subject_id(i: int) -> str:
    return f"LCAR-{101 + i:03d}"


def _ref(kind: str, i: int, n: int) -> SourceRef:
    return SourceRef(resource_type=kind, id=f"{kind.lower()}-{i}-{n}", version="1")


def _kinetic(i: int, day: int) -> float:
    """Peak of 10^(4 + i/4) copies/ug DNA at day 11 (index 3), below LLOQ (20) before infusion."""
    if day < 1:
        return 20.0
    peak: float = 10 ** (4 + i / 4)
    decay: float = 0.5 ** (abs(day - 11) / 14)
    return round(peak * decay, 1)


def crf(i: int) -> SubjectCRF:
    sid, arm = subject_id(i), ARMS[i]
    day1 = dt.date(2024, 1, 10) + dt.timedelta(days=30 * i)
    visits, findings = [], []
    for n, (vid, day) in enumerate(VISITS):
        date = day1 + dt.timedelta(days=day - 1 if day >= 1 else day)
        values: dict[str, Finding] = {}
        for item, value, unit in (("upcr", round((1 + 0.15 * i) * 2.0 / (n + 1), 3), "mg/mg"),
                                  ("c3", round(0.5 + 0.02 * i + 0.05 * n, 3), "g/L"),
                                  ("pga", round(max(0.0, 2.5 - 0.1 * (i % 3) - 0.3 * n), 2), "{score}")):
            if item == "pga" and i == 7 and vid == "W12":
                continue  # a missing assessment, shown in the completeness table
            f = Finding(domain="QS" if item == "pga" else "LB", item=item, value=value, unit=unit, date=date,
                        study_day=day, visit=vid, source=_ref("Observation", i, 100 * n + len(values)))
            values[item] = f
            findings.append(f)
        visits.append(VisitRecord(visit=vid, target_day=day, date=date, study_day=day, values=values))
    for n, day in enumerate(KINETIC_DAYS):
        date = day1 + dt.timedelta(days=day - 1 if day >= 1 else day)
        findings.append(Finding(domain="PC", item="car_transgene", value=_kinetic(i, day), unit="{copies}/ug{DNA}",
                                comparator="<" if day < 1 else None, date=date, study_day=day,
                                source=_ref("Observation", i, 900 + n)))
    ae = [AdverseEvent(term="Cytokine release syndrome", grade=1 + i % 3, study_day=2 + i % 3, end_study_day=6 + i % 3,
                       teae=True, crs=True, source=_ref("AdverseEvent", i, 1)),
          AdverseEvent(term="Neutropenia", grade=3 if i % 2 else 2, study_day=5, end_study_day=20, teae=True,
                       hematologic=True, source=_ref("AdverseEvent", i, 2))]
    if i in (4, 5):
        ae.append(AdverseEvent(term="Immune effector cell-associated neurotoxicity syndrome", grade=2 if i == 4 else 3,
                               study_day=7, end_study_day=10, teae=True, icans=True, serious=True,
                               source=_ref("AdverseEvent", i, 3)))
    return SubjectCRF(subject_id=sid, arm=arm, day1=day1, lymphodepletion_start=day1 - dt.timedelta(days=5),
                      dm=Demographics(subject_id=sid, arm=arm, status="on-study", sex="F", age=30 + i),
                      findings=findings, visits=visits, ae=ae)


def subject_row(i: int) -> dict[str, Any]:
    c = crf(i)
    rows = []
    for n, v in enumerate(c.visits):
        sledai = max(0, 14 - 2 * n - i % 3)
        bl = 14 - 2 - i % 3
        lldas = None if n < 3 else sledai <= 4
        rows.append({
            "visit": v.visit, "date": v.date.isoformat() if v.date else None, "study_day": v.study_day,
            "sledai2k": sledai, "sledai2k_change": sledai - bl if n >= 1 else None,
            "pga": v.values["pga"].value if "pga" in v.values else None, "pga_change": None,
            "lldas": lldas, "lldas_failed": [] if lldas in (True, None) else ["sledai2k>4"],
            "pred_eq_mg_per_day": 10.0 - n, "upcr_mg_mg": v.values["upcr"].value, "upcr_change": None,
            "protein_24h_g": round(1.1 * (v.values["upcr"].value or 0), 2), "protein_24h_change": None,
            "c3": v.values["c3"].value,
            "c4": round(0.08 + 0.005 * i + 0.01 * n, 3), "anti_dsdna": round((1 + 0.2 * i) * 400.0 / (n + 1), 1),
            "anti_dsdna_change": None,
        })
    peak = max(f.value or 0 for f in c.findings if f.item == "car_transgene")
    return {
        "subject_id": c.subject_id, "arm": c.arm, "day1": c.day1.isoformat() if c.day1 else None, "visits": rows,
        "teae_count": len(c.ae), "serious_teae_count": sum(1 for a in c.ae if a.serious),
        # the TEAE listing of the safety results (the report's by-term tables read it)
        "teaes": [{"source": a.source.reference, "term": a.term, "grade": a.grade, "onset_day": a.study_day,
                   "crs": a.crs, "icans": a.icans, "teae_case": "onset"} for a in c.ae if a.teae],
        "max_teae_grade": max(a.grade or 0 for a in c.ae), "crs_max_grade": 1 + i % 3,
        "icans_max_grade": {4: 2, 5: 3}.get(i), "dlt": i == 5,
        # as derive/dlt.py writes them: the rule and the source AE, no study day (the report looks it up)
        "dlt_events": [{"term": "ICANS", "rule": "icans-grade-3-over-72h",
                        "source": "AdverseEvent/adverseevent-5-3/_history/1"}] if i == 5 else [],
        # times after the infusion (Day 1 00:00: the samples are dated only): the sample of study day 11 is 10.0 days
        "kinetics": {"cmax": peak, "cmax_unit": "{copies}/ug{DNA}", "tmax_day": 10, "clast": _kinetic(i, 169),
                     "tlast_day": 168, "auc0_28": round(peak * 20), "persistence_day": 168},
        "baselines": baselines(i),
    }


def baselines(i: int) -> list[dict[str, Any]]:
    """Baselines that are no visit's value, as derive/baseline.py writes them: a UPCR before consent (subjects 1
    and 6), a censored C3 between the windows (subject 3), a UPCR in the BL window that BL did not keep (subject
    4); the others' baselines are visit values."""
    out: list[dict[str, Any]] = []
    if i in (1, 6):
        out.append({"item": "upcr", "value": 1.84, "date": "2024-01-02", "study_day": -30 - i,
                    "sources": [f"Observation/upcr-{i}"], "before_participation": True, "comparator": None,
                    "unit": "mg/mg"})
    if i == 3:
        out.append({"item": "c3", "value": 0.2, "date": "2024-02-20", "study_day": -4,
                    "sources": [f"Observation/c3-{i}", f"Observation/c3b-{i}"], "before_participation": False,
                    "comparator": "<", "unit": "g/L"})
    if i == 4:
        out.append({"item": "upcr", "value": 0.9, "date": "2024-02-23", "study_day": -1,
                    "sources": [f"Observation/upcr-{i}"], "before_participation": False, "visit": "BL",
                    "comparator": None, "unit": "mg/mg"})
    return out


def lldas_rate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for vid, _ in VISITS:
        vals = [v["lldas"] for r in rows for v in r["visits"] if v["visit"] == vid and v["lldas"] is not None]
        if vals:
            out.append({"visit": vid, "n": len(vals), "responders": sum(vals), "rate": sum(vals) / len(vals)})
    return out


def study_json() -> dict[str, Any]:
    rows = [subject_row(i) for i in range(len(ARMS))]
    return {
        "study": "LCAR-AIO-SLE", "generated_by": "fhir-adapter 0.1.0",
        "settings": {"study_folder": "mappings/lcar-aio", "site_overlay": None, "timezone": "UTC",
                     "lldas": {"sledai2k_max": 4, "pga_max": 1.0, "pred_max_mg_per_day": 7.5}},
        "subjects": rows,
        "lldas_rate": lldas_rate(rows),
        "teae_summary": {"by_arm": [
            {"arm": a, "n_subjects": ARMS.count(a), "any_teae": ARMS.count(a), "serious": int(a == "DL3") * 2,
             "related": ARMS.count(a), "crs": {"subjects": ARMS.count(a)}, "icans": {"subjects": int(a == "DL3") * 2},
             "by_max_grade": {"1": 0, "2": 1, "3": 1, "4": 0, "5": 0, "unknown": 0},
             "by_term": [{"term": "Neutropenia", "subjects": ARMS.count(a), "events": ARMS.count(a)}]}
            for a in ("EXP", "DL1", "DL2", "DL3")]},
        "dose_levels": [
            {"arm": "DL1", "n_treated": 2, "n_dlt_evaluable": 2, "n_dlt": 0, "decision": "escalate"},
            {"arm": "DL2", "n_treated": 2, "n_dlt_evaluable": 2, "n_dlt": 0, "decision": "escalate"},
            {"arm": "DL3", "n_treated": 2, "n_dlt_evaluable": 2, "n_dlt": 1, "decision": "stay"},
            {"arm": "EXP", "n_treated": 2, "n_dlt_evaluable": 2, "n_dlt": 0, "decision": "expansion"},
        ],
        "rp2d": {"arm": "DL3", "method": "3+3", "rationale": "1/2 DLT at DL3; highest dose with DLT rate < 33%"},
    }


def write(out: Path, *, drop: tuple[str, ...] = (), run_report: bool = True, crfs: bool = True) -> Path:
    """Write the fixture run to ``out``; ``drop`` removes top-level and per-subject keys of study.json."""
    study = study_json()
    for key in drop:
        study.pop(key, None)
        for s in study["subjects"]:
            s.pop(key, None)
            for v in s["visits"]:
                v.pop(key, None)
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / "study.json").write_text(json.dumps(study, indent=2), encoding="utf-8")
    if crfs:
        (out / "crf").mkdir(exist_ok=True)
        for i in range(len(ARMS)):
            c = crf(i)
            (out / "crf" / f"{c.subject_id}.json").write_text(json.dumps(c.model_dump(mode="json")), encoding="utf-8")
    if run_report:
        (out / "run-report.json").write_text(json.dumps({
            "generated_by": "fhir-adapter 0.1.0", "exit_code": 0,
            "summary": {"subjects": len(ARMS) - 1, "subjects_failed": [], "visits": len(ARMS) * len(VISITS),
                        "results_written": 0, "quarantined": 0, "warnings": 0,
                        "subjects_carried_forward": [subject_id(len(ARMS) - 1)]},
        }), encoding="utf-8")
    return out
