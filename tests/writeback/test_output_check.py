"""Every resource the adapter writes passes the full R4 check (``r4_problem(..., full=True)``): the quick check
on every value, the model itself on each distinct shape. A malformed output is caught whether or not a valid
resource of the same shape came before it, and a subject with one never gets a write-back bundle."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import fhir_adapter.engine.subject as subject_engine
import fhir_adapter.fhir.r4 as r4
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from fhir_adapter.synth import write_feed


def _result(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "r1", "status": "final",
            "code": {"coding": [{"system": "https://fhir-adapter.org/fhir/CodeSystem/results", "code": "lldas"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-03-05", "valueBoolean": True,
            **extra}


@pytest.mark.parametrize(("change", "element"), [
    ({"effectiveDateTime": "2024-02-30"}, "effectiveDateTime"),
    ({"id": "r 1"}, "id"),
    ({"status": " final"}, "status"),
    ({"subject": {"reference": ""}}, "subject"),
])
def test_a_bad_value_in_a_shape_already_accepted_is_caught(change: dict[str, Any], element: str) -> None:
    assert r4.r4_problem(_result(), full=True) is None
    assert r4.shape(_result()) in r4._accepted_shapes
    bad = {**_result(), **change}
    assert r4.shape(bad) == r4.shape(_result())   # same shape: only the value check stands in the way
    problem = r4.r4_problem(bad, full=True)
    assert problem is not None and problem.startswith(element), problem
    assert problem == r4.model_problem(bad)


def test_each_new_shape_is_parsed_with_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # even a quick check that vouched for anything would not let an element R4 lacks through: the model
    # parses the first resource of every shape
    monkeypatch.setattr(r4, "conforms", lambda resource, model: True)
    monkeypatch.setattr(r4, "_accepted_shapes", set())
    assert r4.r4_problem(_result(), full=True) is None
    problem = r4.r4_problem(_result(valueFlag=True), full=True)
    assert problem is not None and problem.startswith("valueFlag"), problem
    assert r4.r4_problem(_result(valueFlag=True)) is None   # (the input check trusts the quick check alone)


def test_the_model_runs_once_per_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(r4, "_accepted_shapes", set())
    parsed: list[str] = []
    model = r4._model_problem

    def counting(resource: dict[str, Any], cls: Any, rtype: str) -> str | None:
        parsed.append(str(resource.get("id")))
        return model(resource, cls, rtype)

    monkeypatch.setattr(r4, "_model_problem", counting)
    for i in range(5):
        assert r4.r4_problem(_result(id=f"r{i}", effectiveDateTime=f"2024-03-0{i + 1}"), full=True) is None
    assert r4.r4_problem(_result(id="r9", note=[{"text": "a note"}]), full=True) is None
    assert parsed == ["r0", "r9"]


def test_a_subject_with_a_malformed_result_gets_no_writeback_bundle(tmp_path: Path, study: Study,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write_feed(tmp_path / "feed", subjects=2, seed=7)
    log = RunLog()
    first = run(FileSource(tmp_path / "feed", log), study, tmp_path / "good", log)
    assert first.subjects == 2 and not first.subjects_failed
    victim = sorted(p.stem for p in (tmp_path / "good" / "writeback").glob("*.json"))[0]
    built = subject_engine.writeback_resources

    def corrupted(*args: Any, **kw: Any) -> list[dict[str, Any]]:
        resources = built(*args, **kw)
        if args[1].subject_id == victim:  # a date off the calendar in a shape the check has seen valid
            resources = copy.deepcopy(resources)
            dated = next(r for r in resources if "effectiveDateTime" in r)
            dated["effectiveDateTime"] = "2024-02-30"
        return resources

    monkeypatch.setattr(subject_engine, "writeback_resources", corrupted)
    log = RunLog()
    summary = run(FileSource(tmp_path / "feed", log), study, tmp_path / "bad", log)
    assert summary.subjects_failed == [victim]
    assert not (tmp_path / "bad" / "writeback" / f"{victim}.json").exists()
    warning = next(w for w in log.warnings if w.get("rule") == "subject-failed")
    assert warning["subject_id"] == victim and "not valid FHIR R4: effectiveDateTime" in warning["message"], warning
