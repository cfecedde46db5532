"""A live run the server stops part-way (exit 3): what the exit line counts as done, and what a subject written
in part leaves in state/written.json (fhir_adapter/job/pipeline.py), with a sink standing in for the server."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.fhir.errors import FhirServerUnavailable
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from fhir_adapter.synth import write_feed
from fhir_adapter.writeback.sink import WriteResult
from fhir_adapter.writeback.state import result_id

DOWN = FhirServerUnavailable("server unavailable since 2026-01-01T00:00:00Z: 4 requests in a row failed",
                             since="2026-01-01T00:00:00Z")


class Server:
    """The first subject is written; the second as ``second`` says; the server is down from the third on."""

    dry_run = False

    def __init__(self, second: str) -> None:
        self.second = second
        self.calls = 0

    def start(self, enrolled_patients: set[str], left_patients: set[str] | None = None,
              subject_ids: Collection[str] = ()) -> None:
        pass

    def write(self, e: Enrollee, resources: list[dict[str, Any]], retractions: Sequence[dict[str, Any]] = (),
              held: Collection[str] = (), former_patients: Collection[str] = ()) -> WriteResult:
        self.calls += 1
        ids = [result_id(r) for r in resources]
        if self.calls == 1:
            return WriteResult(subject_id=e.subject_id, written=ids)
        if self.calls == 2 and self.second == "not written":
            return WriteResult(subject_id=e.subject_id, error="POST http://ehr/fhir failed with HTTP 503")
        if self.calls == 2:  # its first transaction confirmed, then the server went down
            return WriteResult(subject_id=e.subject_id, written=ids[:3], pending=ids[3:], stop=DOWN,
                               error=f"partially written: 3 of {len(ids)} results; the next run completes it")
        raise DOWN


def test_the_exit_3_line_counts_as_done_only_the_subjects_written(tmp_path: Path, study: Study) -> None:
    feed, out = tmp_path / "feed", tmp_path / "out"
    write_feed(feed, subjects=4, seed=7)
    summary = run(FileSource(feed, RunLog()), study, out, sink=Server("not written"))
    assert summary.stopped is not None and summary.exit_code == 3
    [written, not_written] = [w["subject_id"] for w in summary.writes]
    assert summary.stopped.subjects_done == [written] and not_written in summary.stopped.subjects_left
    assert "; 1 subjects done, 3 left; rerun" in summary.stopped.message
    assert "partly written" not in summary.stopped.message


def test_a_subject_written_in_part_when_the_server_goes_down_is_recorded_part_by_part(
    tmp_path: Path, study: Study
) -> None:
    feed, out = tmp_path / "feed", tmp_path / "out"
    write_feed(feed, subjects=4, seed=7)
    summary = run(FileSource(feed, RunLog()), study, out, sink=Server("partly written"))
    assert summary.stopped is not None and summary.exit_code == 3
    [written, partly] = [w["subject_id"] for w in summary.writes]
    assert summary.stopped.subjects_partly_written == [partly]
    assert "; 1 subjects done, 3 left, 1 partly written (recorded: the rerun completes them); rerun" in \
        summary.stopped.message
    report = json.loads((out / "run-report.json").read_text())
    entry = report["writes"][1]
    assert entry["written"] == 3 and entry["partly_written"] and entry["not_confirmed"] > 0
    [failure] = report["subject_failures"]
    assert failure["subject_id"] == partly and "Only one transaction per subject is atomic" in failure["what_to_do"]
    state = json.loads((out / "state" / "written.json").read_text())["results"]
    per_subject = {s: sum(1 for e in state.values() if e["subject_id"] == s) for s in (written, partly)}
    assert per_subject[partly] == 3 and per_subject[written] > 3


@pytest.mark.parametrize(("method", "url", "status", "said"), [
    ("POST", "https://ehr.example.org/fhir", 413, "lower client.max_transaction_entries"),
    ("POST", "https://ehr.example.org/fhir/Observation/_search", 413, "raise the request body limit"),
    ("GET", "https://ehr.example.org/fhir/Observation?_getpages=abc&_page=2", 414, "ask its administrators"),
])
def test_a_subject_refused_for_a_requests_size_says_which_setting_helps(method: str, url: str, status: int,
                                                                        said: str) -> None:
    """413 on a write: smaller transactions; 413 on a search (one patient's: a group's is asked again per patient)
    or 414 (a first search page is sent again as POST, so a page link or a history query the server built): the
    server's limit."""
    from fhir_adapter.fhir import FhirHttpError
    from fhir_adapter.job.pipeline import _failure

    entry = _failure("S-1", "read", FhirHttpError(method=method, url=url, status=status, reason="", diagnostics=[],
                                                  body_excerpt=""))
    assert said in entry["what_to_do"] and entry["last_status"] == status


@pytest.mark.parametrize("parts", [True, False], ids=["folder-read-by-workers", "subjects-sent-to-workers"])
def test_a_run_the_server_stops_shuts_its_worker_pool_down_before_it_returns(
        tmp_path: Path, study: Study, monkeypatch: pytest.MonkeyPatch, parts: bool) -> None:
    """With workers, the run that stops (exit 3) shuts its pool down itself: left to the collection of the abandoned
    generator at exit, the shutdown met closed pipes and Python printed "Exception ignored in <generator
    subject_outcomes> … OSError" under the one-line error (docs/cli.md: a failure prints one line)."""
    from concurrent.futures import ProcessPoolExecutor

    shut: list[bool] = []
    real = ProcessPoolExecutor.shutdown

    def shutdown(self: ProcessPoolExecutor, wait: bool = True, *, cancel_futures: bool = False) -> None:
        shut.append(wait)
        real(self, wait=wait, cancel_futures=cancel_futures)

    monkeypatch.setattr(ProcessPoolExecutor, "shutdown", shutdown)
    feed, out = tmp_path / "feed", tmp_path / "out"
    write_feed(feed, subjects=6, seed=7)
    source = FileSource(feed, RunLog())
    if not parts:
        monkeypatch.setattr("fhir_adapter.job.pipeline.splittable", lambda _: False)  # subject_outcomes
    summary = run(source, study, out, sink=Server("not written"), workers=2)
    assert summary.stopped is not None and summary.exit_code == 3
    assert True in shut
