"""Readers of OUT see one run's outputs, never a mix of two.

A run moves its outputs into OUT one ``os.replace`` at a time (:mod:`fhir_adapter.job.staging`): between the
first and the last, ``results/study.json`` may already be the new run's while ``crf/`` and ``run-report.json``
are still the previous one's, and a reader that listed ``crf/`` before the move finds its files gone. So the run
moves its outputs in under an exclusive lock of the OUT folder itself (:func:`swapping`), and a reader —
``fhir-adapter report`` loading its data, each request of the review app — reads under a shared one
(:func:`reading`): the move waits for readers that have started, readers wait for a move under way (renames
only: milliseconds; the previous outputs are deleted after the lock is released).

The lock is the operating system's ``flock`` on the folder itself: no file is created, so a reader needs no
write permission on OUT (a results folder copied to a read-only share reads as before), and a lock ends with
the process that held it. Where the file system offers no locks (some network file systems) both sides go on
without one, as they did before.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: how long a side waits without a word before it says what it waits for
QUIET_WAIT_S = 2.0
_NO_LOCKS = (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL)


@contextmanager
def reading(out: Path) -> Iterator[None]:
    """Read OUT's outputs in this block: a run does not move new ones in meanwhile (a missing OUT: no lock).
    A move a killed run left half done is finished first (:func:`finish_interrupted_move`)."""
    finish_interrupted_move(Path(out))
    with _flock(Path(out), fcntl.LOCK_SH, "waiting while a run moves its outputs into"):
        yield


def finish_interrupted_move(out: Path) -> None:
    """A run killed while it moved its outputs in leaves OUT a mix of two runs' outputs and a completed staging
    folder: the reader finishes the move, as the next run would (:func:`fhir_adapter.job.staging.recover`), so a
    report or a review page never shows the mix. Not while a run holds OUT (the folder is that run's, about to be
    moved in), and not where the reader may not write (a read-only copy of OUT reads as it is)."""
    from fhir_adapter.job.staging import COMPLETE, PREFIX  # the staging module moves under this module's lock

    try:
        left = any((f / COMPLETE).is_file() for f in out.glob(f"{PREFIX}*") if not f.is_symlink())
    except OSError:
        return
    if not left:
        return
    from fhir_adapter.job.outlock import OutInUse, hold_out
    from fhir_adapter.job.staging import recover

    try:
        with hold_out(out, "a reader of OUT (fhir-adapter report or review) finishing the move of an interrupted "
                           "run's outputs"):
            recover(out)
    except OutInUse:
        return
    except OSError as exc:
        if out not in _warned:  # once per folder: the review app reads on every request
            _warned.add(out)
            log.warning("the outputs of a run interrupted while moving them into %s could not be moved in (%s): "
                        "what is read may mix two runs' outputs until the next run", out, exc)


#: the folders whose interrupted move could not be finished, already warned of
_warned: set[Path] = set()


@contextmanager
def swapping(out: Path) -> Iterator[None]:
    """Move outputs into OUT in this block: readers that have started finish first, new ones wait."""
    with _flock(Path(out), fcntl.LOCK_EX, "waiting for readers (fhir-adapter report, the review app) of"):
        yield


@contextmanager
def _flock(out: Path, mode: int, waiting_for: str) -> Iterator[None]:
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        yield   # nothing to read yet (the caller says so), or nothing to move into
        return
    try:
        _lock(fd, mode, out, waiting_for)
        yield
    finally:
        os.close(fd)   # closing the folder's descriptor releases its lock


def _lock(fd: int, mode: int, out: Path, waiting_for: str) -> None:
    started = time.monotonic()
    said = False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                log.debug("no folder lock on %s (%s): readers may see a run's outputs half moved in", out,
                          exc.strerror)
                return
            raise
        if not said and time.monotonic() - started >= QUIET_WAIT_S:
            log.info("%s %s", waiting_for, out)
            said = True
        time.sleep(0.02)
