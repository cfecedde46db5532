"""Atomic outputs: a run writes into ``OUT/.staging-<run id>/`` and moves its outputs into OUT only when it
has finished. A run that fails, is interrupted or is killed leaves the previous outputs (and
``state/written.json``) exactly as they were; a staging folder left by a killed run is removed by the next
run — or, when it had already finished and was being moved in (``COMPLETE`` marker), moved in first.

Each output (``crf/``, ``results/``, ``run-report.json``, ...) is replaced with one ``os.replace`` — the
previous one is parked in the staging folder's ``.previous/`` and deleted once everything is in place. The moves
happen under the OUT folder's swap lock (:mod:`fhir_adapter.job.outswap`), so a report or the review app reading
OUT meanwhile sees the previous outputs or the new ones, never a mix.

A symbolic link standing where an output goes is replaced like a previous output (renamed aside, then removed:
what it points to is not touched); a link in a folder between OUT and an output (``state/``, ``review/``)
stops the run before it reads anything (:class:`~fhir_adapter.job.outpaths.UnsafePath`), and the move-in
checks every output's folder again before it moves the first one (:mod:`fhir_adapter.job.outpaths`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import uuid
from pathlib import Path

from fhir_adapter.job.outpaths import without_links
from fhir_adapter.job.outswap import swapping

log = logging.getLogger(__name__)

PREFIX = ".staging-"
COMPLETE = "COMPLETE"

#: what a run produces in OUT, each replaced as a whole (state/: written.json only; last-run.json is recorded
#: after the run by the command and the Python API)
OUTPUTS = ("crf", "results", "writeback", "writeback-diff", "quarantine", "export", "review/candidates",
           "run-report.json", "state/written.json")


class Staging:
    """The staging folder of one run inside ``out``."""

    def __init__(self, out: Path, run_id: str | None = None) -> None:
        self.out = Path(out)
        self.run_id = run_id or (dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6])
        self.path = self.out / f"{PREFIX}{self.run_id}"

    def open(self) -> Path:
        """Finish or remove what earlier runs left, then create this run's (empty) staging folder."""
        recover(self.out)
        _check_folders(self.out, OUTPUTS)
        self.path.mkdir(parents=True)
        return self.path

    def commit(self, outputs: tuple[str, ...] = OUTPUTS) -> None:
        """Move ``outputs`` from the staging folder into OUT (those this run produced), then remove it."""
        (self.path / COMPLETE).write_text("\n".join(outputs) + "\n")
        _move_in(self.path, self.out)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _move_in(staging: Path, out: Path) -> None:
    outputs = [line for line in (staging / COMPLETE).read_text().splitlines() if line]
    parked = staging / ".previous"
    with swapping(out):   # readers of OUT (report, review app) see the previous outputs or these, never a mix
        _check_folders(out, outputs)  # all before the first move: a link in the way moves none in
        for name in outputs:
            new = staging / name
            if not new.exists():
                continue  # not produced by this run (e.g. no state in a dry run) or already moved in
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():   # a link (even one to nothing) is renamed aside
                (parked / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, parked / name)
            os.replace(new, target)
    shutil.rmtree(staging, ignore_errors=True)


def _check_folders(out: Path, outputs: tuple[str, ...] | list[str]) -> None:
    """:class:`~fhir_adapter.job.outpaths.UnsafePath` when a folder between OUT and an output is a symbolic
    link (the output itself may be one: it is renamed aside, not written through)."""
    for name in outputs:
        without_links(out, (out / name).parent)


def recover(out: Path) -> None:
    """Staging folders of earlier runs: finish moving in a completed one, remove an unfinished one."""
    if not out.is_dir():
        return
    for folder in sorted(out.glob(f"{PREFIX}*")):
        if folder.is_symlink():
            log.warning("leaving %s alone: a symbolic link is not a staging folder of fhir-adapter (remove it)",
                        folder)
            continue
        if not folder.is_dir():
            continue
        if (folder / COMPLETE).exists():
            log.warning("finishing the move of the completed run's outputs left in %s", folder)
            _move_in(folder, out)
        else:
            log.info("removing %s, left by a run that did not finish", folder)
            shutil.rmtree(folder, ignore_errors=True)
