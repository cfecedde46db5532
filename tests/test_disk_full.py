"""A full disk is the run's failure, never one subject's (fhir_adapter/disk_full.py): the run stops, the previous
outputs in OUT stay as they were, and the one line says where and what to do — with one worker or several. A run
that processes nobody (exit 1) keeps the previous outputs too, and replaces only its report."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.disk_full import disk_full_message, is_disk_full
from fhir_adapter.engine import parallel
from fhir_adapter.mapping.subject import SubjectMapper
from fhir_adapter.synth import write_feed

SUBJECTS = 4


def files(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and ".lock" not in p.name}


def run(feed: Path, out: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["-q", "run", "--source", str(feed), "--out", str(out), *args])


@pytest.fixture
def previous(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A feed, and an OUT holding a complete earlier run of it."""
    feed, out = tmp_path / "feed", tmp_path / "out"
    write_feed(feed, subjects=SUBJECTS, seed=7)
    assert run(feed, out, "--workers", "1").exit_code in (0, 2)
    return feed, out, files(out)


def _full_at_second_subject(monkeypatch: pytest.MonkeyPatch) -> None:
    mapped = SubjectMapper.map
    calls = {"n": 0}

    def map_or_full(self: SubjectMapper, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return mapped(self, *a, **kw)

    monkeypatch.setattr(SubjectMapper, "map", map_or_full)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_stops_the_run_and_keeps_the_previous_outputs(
        previous: tuple[Path, Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch, workers: str) -> None:
    """Counted as a subject not processed, it had replaced a complete run's outputs with a partial set (exit 2)."""
    feed, out, before = previous
    _full_at_second_subject(monkeypatch)
    # workers forked from this process (not from the forkserver) carry the full disk with them
    monkeypatch.setattr(parallel, "context", lambda: multiprocessing.get_context("fork"))
    result = run(feed, out, "--workers", workers)
    assert result.exit_code == 1, result.output
    assert f"no room to write the outputs (No space left on device) at {out}: the previous outputs in {out} are " \
           "kept as they were" in result.output
    assert files(out) == before
    assert not list(out.glob(".staging-*"))


def test_a_full_disk_while_the_results_file_is_closed_names_out(
        previous: tuple[Path, Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The error raised when a file is closed names no file: the line names OUT."""
    from fhir_adapter.job import pipeline

    feed, out, before = previous

    def full(*a: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "write_study_json", full)
    result = run(feed, out, "--workers", "1")
    assert result.exit_code == 1 and f"at {out}: the previous outputs" in result.output
    assert files(out) == before


def test_a_run_that_processes_nobody_keeps_the_previous_outputs_and_replaces_only_its_report(
        previous: tuple[Path, Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 1 (every subject failed): the earlier CRFs, results, exports and review files stay; the report says
    what happened (and the state what the server confirmed: nothing here)."""
    feed, out, before = previous

    def broken(self: SubjectMapper, *a: Any, **kw: Any) -> Any:
        raise ValueError("a mapping that fails for everyone")

    monkeypatch.setattr(SubjectMapper, "map", broken)
    assert run(feed, out, "--workers", "1").exit_code == 1
    after = files(out)
    assert after["run-report.json"] != before["run-report.json"]
    assert after["state/written.json"] == before["state/written.json"]  # nothing was written: the same state
    assert {k: v for k, v in after.items() if k != "run-report.json"} == \
        {k: v for k, v in before.items() if k != "run-report.json"}
    report = json.loads((out / "run-report.json").read_text())
    assert len(report["subject_failures"]) == SUBJECTS


def test_what_counts_as_a_full_disk() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EROFS, "Read-only file system"))
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", "/out/crf/1.json")
        except OSError as inner:
            raise RuntimeError("writing a CRF") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
        assert disk_full_message(outer, Path("/out")).startswith(
            "no room to write the outputs (Disk quota exceeded) at /out/crf/1.json")
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("no"))
