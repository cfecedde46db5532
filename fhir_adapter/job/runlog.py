"""What a run saw: counts, warnings and quarantined input, written to ``run-report.json``.

Bad input never stops the run and is never silently dropped: every resource that cannot be used is
quarantined here with its type/id, the rule it broke and what to do about it, and the rest of that
subject's data still flows (DESIGN.md "Habits").
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: where a subject's resource was read: (file, line, Bundle entry), by (resource type, id)
Locations = dict[tuple[str, str], tuple[str, int | None, int | None]]


@dataclass(frozen=True)
class Quarantined:
    resource_type: str
    id: str | None
    rule: str
    reason: str
    fix: str
    subject_id: str | None = None
    file: str | None = None
    line: int | None = None
    entry: int | None = None  # the entry of a Bundle (a JSON file, or an NDJSON line holding a Bundle)
    raw: Any = None  # the offending resource or line, written to OUT/quarantine/, not to the report

    def as_report(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("raw")
        return {k: v for k, v in d.items() if v is not None}


@dataclass
class RunLog:
    """Thread-safe collector shared by the stages of one run."""

    counts: Counter[str] = field(default_factory=Counter)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def warn(self, message: str, *, resource: str | None = None, subject_id: str | None = None,
             rule: str | None = None, fix: str | None = None) -> None:
        """A resource that is used but worth a look: the message, the resource (``Type/id``), the subject,
        the rule and, where the EHR can do something about it, ``fix``."""
        entry = {"message": message, "resource": resource, "subject_id": subject_id, "rule": rule, "fix": fix}
        with self._lock:
            self.warnings.append({k: v for k, v in entry.items() if v is not None})

    def locate(self, where: Locations) -> None:
        """Give each quarantined resource that does not say where it was read (quarantined after reading: the
        mapping's rules) its file, line and Bundle entry from ``where`` (by resource type and id)."""
        with self._lock:
            for i, q in enumerate(self.quarantine):
                if q.file is None and q.id is not None and (found := where.get((q.resource_type, q.id))):
                    self.quarantine[i] = replace(q, file=found[0], line=found[1], entry=found[2])

    def reject(self, resource_type: str, id: str | None, rule: str, reason: str, fix: str, **kw: Any) -> None:
        q = Quarantined(resource_type=resource_type, id=id, rule=rule, reason=reason, fix=fix, **kw)
        with self._lock:
            self.quarantine.append(q)
            self.counts["quarantined"] += 1
