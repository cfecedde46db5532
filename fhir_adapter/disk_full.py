"""A full disk is the run's failure, never one subject's.

Writing the outputs can fail for want of room: the disk or the user's quota is full (``ENOSPC``, ``EDQUOT``), or
the file system was remounted read-only (``EROFS``). Every subject after it would fail the same way, so a step
that catches one subject's failure lets this one through (:func:`is_disk_full`), and the run stops with the
previous outputs in OUT as they were (fhir_adapter/job/staging.py) and one line naming the place and what to do
(:func:`disk_full_message`). Counted as subjects not processed, it had replaced a complete run's outputs with a
partial one and exited 2, the exit code of a run that completed with warnings.
"""

from __future__ import annotations

import errno
from pathlib import Path

#: the errors of a file system with no room (or no longer writable)
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def no_room(exc: BaseException | None) -> OSError | None:
    """The error of a file system with no room in ``exc`` or in what it was raised from; None if there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in NO_ROOM:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def is_disk_full(exc: BaseException) -> bool:
    return no_room(exc) is not None


def disk_full_message(exc: BaseException, out: Path) -> str:
    """What the person running the command reads: where, why, what was kept, what to do."""
    error = no_room(exc)
    where = (error.filename if error is not None else None) or out
    why = (error.strerror if error is not None else None) or str(exc)
    return (f"no room to write the outputs ({why}) at {where}: the previous outputs in {out} are kept as they "
            f"were — free space on that disk (or give --out a folder on another one), then run again")
