"""A subject who left: the write-back state retracts its visit results dated after the end of its participation
and keeps the others — its per-subject results too (docs/clinical-rules.md#withdrawn-subjects)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.writeback.identifiers import SUBJECT_SCOPE, result_identifier
from fhir_adapter.writeback.state import WrittenState


def result(scope: str, code: str, day: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": code},
            "identifier": [{"system": SID_RESULT, "value": result_identifier("S", "101-004", scope, code)}],
            "subject": {"reference": "Patient/p4"}, "effectiveDateTime": day, "valueInteger": 1,
            "derivedFrom": [{"reference": "Observation/src"}]}


def test_visit_results_after_the_end_are_retracted_and_per_subject_ones_kept(tmp_path: Path) -> None:
    state = WrittenState(tmp_path / "written.json")
    written = [result("W2", "sledai-2k", "2024-03-15"), result("W4", "sledai-2k", "2024-03-29"),
               result("W4", "lldas", "2024-03-29"),
               # the DLT evaluation is dated at the window's end, after a withdrawal in the window: it counts
               # the DLT that happened before, and stays
               result(SUBJECT_SCOPE, "dlt", "2024-03-31")]
    state.commit(state.plan("101-004", written, [], dt.date(2024, 4, 1)))
    state.save()
    state = WrittenState(tmp_path / "written.json")  # the next run's: the subject has left since
    keep = result_identifier("S", "101-004", SUBJECT_SCOPE, "")
    plan = state.retract_after("101-004", dt.date(2024, 3, 20), keep_prefix=keep, today=dt.date(2024, 4, 2))
    assert sorted(r["identifier"][0]["value"] for r in plan.retractions) == ["S.101-004.W4.lldas",
                                                                             "S.101-004.W4.sledai-2k"]
    assert all(r["status"] == "entered-in-error" and "participation ended on 2024-03-20" in r["note"][0]["text"]
               for r in plan.retractions)
    state.commit(plan)
    state.save()
    # retracted once: nothing more on the next run
    again = WrittenState(tmp_path / "written.json")
    assert again.retract_after("101-004", dt.date(2024, 3, 20), keep_prefix=keep).retractions == []
    assert sorted(i for i, x in again.results.items() if x.get("retracted")) == ["S.101-004.W4.lldas",
                                                                                 "S.101-004.W4.sledai-2k"]
