"""One run at a time per output folder.

Two runs writing the same OUT would remove each other's staging folder (:mod:`fhir_adapter.job.staging`) and
interleave ``state/written.json``. A run therefore holds an exclusive lock on ``OUT/.fhir-adapter.lock`` from
before it reads the source until its outputs are in place; a second run on the same OUT stops at once with
:class:`OutInUse`, whose message names the folder, the holder's pid, host and start time, and what to do.

The lock is the operating system's (``fcntl.flock`` on the open file), so it ends with the process that holds
it however that process ends: a lock file left behind by a killed run (its pid dead) never blocks. The file
only carries the holder's details for that message and is removed when the run ends. Within one process the
lock is re-entrant: the command line holds it around connecting, the pipeline and recording the run, and the
pipeline (also called from the Python API) takes it again.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from fhir_adapter.safe_paths import open_no_link

log = logging.getLogger(__name__)

LOCK_NAME = ".fhir-adapter.lock"


class OutInUse(RuntimeError):
    """Another process holds the lock of the output folder."""


@dataclass
class _Held:
    fd: int | None          # None: the file system offers no locks (warned once)
    path: Path
    created_out: bool
    count: int = 1


_held: dict[Path, _Held] = {}
_guard = threading.Lock()


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another fhir-adapter run (its pid is not recorded yet)"
    return (f"{info.get('command', 'fhir-adapter')} (pid {info['pid']} on {info.get('host', '?')}, "
            f"started {info.get('started', '?')})")


def _acquire(path: Path, command: str) -> int | None:
    while True:
        fd = open_no_link(path, os.O_RDWR | os.O_CREAT)  # a link in the lock file's place is replaced
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            out = path.parent
            raise OutInUse(
                f"output folder {out} is in use by {holder}: wait until that run has finished (or stop it), or "
                f"give this run another --out folder. A run that has ended no longer holds the folder; "
                f"{LOCK_NAME} in it only names the last holder") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP):
                os.close(fd)
                raise
            os.close(fd)
            log.warning("the file system of %s offers no file locks (%s): two runs on this folder at once would "
                        "corrupt it — do not start a second one", path.parent, exc.strerror)
            return None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)   # the run that held it removed the file while this one waited: lock the file there now
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    return fd


@contextmanager
def hold_out(out: Path, command: str = "fhir-adapter run") -> Iterator[None]:
    """Hold the lock of ``out`` (created when missing) for the ``with`` block; :class:`OutInUse` when another
    process holds it. Re-entrant within a process."""
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    key = out.resolve()
    with _guard:
        held = _held.get(key)
        if held is not None:
            held.count += 1
        else:
            path = key / LOCK_NAME
            try:
                fd = _acquire(path, command)
            except OutInUse:
                if created:
                    _remove_empty(key)
                raise
            held = _held[key] = _Held(fd=fd, path=path, created_out=created)
    try:
        yield
    finally:
        with _guard:
            held.count -= 1
            if held.count == 0:
                del _held[key]
                _release(held, key)


def _release(held: _Held, out: Path) -> None:
    if held.fd is None:
        return
    try:
        held.path.unlink(missing_ok=True)   # while still locked: a run that opened it meanwhile sees it is gone
    finally:
        fcntl.flock(held.fd, fcntl.LOCK_UN)
        os.close(held.fd)
    if held.created_out:
        _remove_empty(out)


def _remove_empty(out: Path) -> None:
    """A run that stopped before writing anything leaves no empty OUT behind."""
    with suppress(OSError):
        out.rmdir()
