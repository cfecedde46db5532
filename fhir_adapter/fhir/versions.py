"""Which of two copies of one resource is the newer: ``meta.versionId``, then ``meta.lastUpdated``. Below the
source and the mapping, which both keep one copy of a resource read twice."""

from __future__ import annotations

import datetime as dt
from typing import Any


def _instant(value: Any) -> float:
    """``meta.lastUpdated`` as a point in time (seconds since the epoch; 0 when absent or unreadable): compared
    as text, 2024-05-03T10:00:00+08:00 (02:00Z) would be newer than 2024-05-03T03:00:00Z."""
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        at = dt.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return 0.0
    return (at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)).timestamp()


def version_key(r: dict[str, Any]) -> tuple[int, float]:
    """How new a version of a resource is: ``meta.versionId`` (a number), then ``meta.lastUpdated`` (an instant)."""
    meta = r.get("meta") or {}
    v = str(meta.get("versionId") or "0")
    return (int(v) if v.isdigit() else 0, _instant(meta.get("lastUpdated")))
