"""Atomic outputs (fhir_adapter/job/staging.py): a run's outputs replace the previous ones only when it finished;
what a killed run left is removed, or moved in when it had finished."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.export.writer import ExportWriter, SubjectExport
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.job.staging import COMPLETE, Staging, recover
from fhir_adapter.source.base import Resource
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from fhir_adapter.synth import write_feed


def previous(out: Path) -> None:
    (out / "crf").mkdir(parents=True)
    (out / "crf" / "101-001.json").write_text("old crf")
    (out / "state").mkdir()
    (out / "state" / "written.json").write_text("old state")
    (out / "state" / "last-run.json").write_text("kept")
    (out / "run-report.json").write_text("old report")


def test_commit_replaces_the_outputs_and_keeps_what_is_not_the_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    previous(out)
    staging = Staging(out)
    work = staging.open()
    (work / "crf").mkdir()
    (work / "crf" / "101-002.json").write_text("new crf")
    (work / "run-report.json").write_text("new report")
    staging.commit()
    assert sorted(p.name for p in (out / "crf").iterdir()) == ["101-002.json"]
    assert (out / "run-report.json").read_text() == "new report"
    assert (out / "state" / "written.json").read_text() == "old state"  # not produced by this run: kept
    assert (out / "state" / "last-run.json").read_text() == "kept"
    assert not list(out.glob(".staging-*"))


def test_an_unfinished_staging_folder_is_removed_and_the_previous_outputs_stay(tmp_path: Path) -> None:
    out = tmp_path / "out"
    previous(out)
    killed = Staging(out, "killed").open()
    (killed / "crf").mkdir()
    (killed / "crf" / "101-001.json").write_text("half")
    recover(out)
    assert not killed.exists()
    assert (out / "crf" / "101-001.json").read_text() == "old crf"


def killed_while_moving_in(out: Path) -> Path:
    """OUT as a run killed while moving its outputs in leaves it: its staging folder complete, the old ``crf/``
    parked and the new one not moved in yet (no ``crf/`` in OUT at all); the staging folder."""
    previous(out)
    killed = Staging(out, "killed").open()
    (killed / "crf").mkdir()
    (killed / "crf" / "101-001.json").write_text("new crf")
    (killed / "run-report.json").write_text("new report")
    (killed / COMPLETE).write_text("crf\nrun-report.json\n")
    (killed / ".previous").mkdir()
    (out / "crf").rename(killed / ".previous" / "crf")
    return killed


def test_a_finished_run_killed_while_moving_in_is_completed_by_the_next(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed = killed_while_moving_in(out)
    recover(out)
    assert (out / "crf" / "101-001.json").read_text() == "new crf"
    assert (out / "run-report.json").read_text() == "new report"
    assert not killed.exists()


def test_a_reader_finishes_a_move_a_killed_run_left_half_done(tmp_path: Path) -> None:
    """Killed between two renames of its move-in, a run leaves a mix of two runs' outputs: a reader (fhir-adapter
    report, the review app) finishes the move before reading, as the next run would — unless a run holds OUT."""
    import subprocess
    import sys

    from fhir_adapter.job.outswap import reading

    out = tmp_path / "out"
    killed = killed_while_moving_in(out)
    # another process (a run) holds OUT: the folder may be its own, about to be moved in — left alone
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from fhir_adapter.job.outlock import hold_out\n"
                               f"with hold_out(Path({str(out)!r})):\n    print('held', flush=True)\n"
                               "    sys.stdin.read()\n"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with reading(out):
            assert not (out / "crf").exists()
    finally:
        holder.communicate("")
    with reading(out):
        assert (out / "crf" / "101-001.json").read_text() == "new crf"
        assert (out / "run-report.json").read_text() == "new report"
    assert not killed.exists()


class Interrupted(FileSource):
    """Ctrl-C after the first subject."""

    def subject_records(self, patient_ids: set[str]) -> Iterator[tuple[str, list[bytes | Resource]]]:
        for n, item in enumerate(super().subject_records(patient_ids)):
            if n == 1:
                raise KeyboardInterrupt
            yield item


def test_a_run_interrupted_leaves_the_previous_outputs_exactly_as_they_were(tmp_path: Path, study: Study) -> None:
    feed, out = tmp_path / "feed", tmp_path / "out"
    write_feed(feed, subjects=3, seed=7)
    run(FileSource(feed, RunLog()), study, out)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(KeyboardInterrupt):
        run(Interrupted(feed, RunLog()), study, out)
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before


def test_a_subject_failing_after_its_crf_was_written_leaves_no_crf_so_no_later_run_reuses_it(
    tmp_path: Path, study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed subject's CRF is not among the run's outputs, also when it failed after the CRF was written: an
    incremental run reuses only CRFs at hand (``reusable``), so it reads that subject in full."""
    feed, out = tmp_path / "feed", tmp_path / "out"
    write_feed(feed, subjects=3, seed=7)
    run(FileSource(feed, RunLog()), study, out)
    [victim, *others] = sorted(p.stem for p in (out / "crf").iterdir())
    write = ExportWriter.write

    def failing(self: ExportWriter, export: SubjectExport, *args: Any, **kwargs: Any) -> None:
        if export.subject_id == victim:
            raise OSError("disk full")
        write(self, export, *args, **kwargs)

    monkeypatch.setattr(ExportWriter, "write", failing)
    summary = run(FileSource(feed, RunLog()), study, out)
    assert summary.subjects_failed == [victim]
    assert sorted(p.stem for p in (out / "crf").iterdir()) == others
