"""Where a synthetic feed's resources go: one NDJSON file per resource type, and the Bulk Data manifest.

Observations (most of a feed) arrive as pre-rendered JSON lines; every other resource as a dict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

Resource = dict[str, Any]
Emit = Callable[[Resource], None]

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


class Sink(Protocol):
    """Where resources go: dicts for most types, pre-rendered JSON lines for Observations."""

    def add(self, resource: Resource) -> None: ...

    def add_observation(self, line: str) -> None: ...


class NdjsonWriter:
    """One open NDJSON file per resource type, created on the first resource of that type."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.files: dict[str, IO[str]] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> NdjsonWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for f in self.files.values():
            f.close()

    def _file(self, rtype: str) -> IO[str]:
        f = self.files.get(rtype)
        if f is None:
            f = self.files[rtype] = open(  # noqa: SIM115 - closed in __exit__
                self.out_dir / f"{rtype}.ndjson", "w", encoding="utf-8", newline="\n", buffering=1 << 20)
            self.counts[rtype] = 0
        return f

    def add(self, resource: Resource) -> None:
        rtype: str = resource["resourceType"]
        self._file(rtype).write(_encode(resource) + "\n")
        self.counts[rtype] += 1

    def add_observation(self, line: str) -> None:
        self._file("Observation").write(line + "\n")
        self.counts["Observation"] += 1


def clear_feed(out_dir: Path, resource_types: Iterable[str]) -> None:
    """Create ``out_dir`` and remove the NDJSON files of an earlier feed written there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for t in resource_types:
        (out_dir / f"{t}.ndjson").unlink(missing_ok=True)


def write_manifest(out_dir: Path, counts: dict[str, int], resource_types: Iterable[str], request: str,
                   transaction_time: str) -> dict[str, int]:
    """The Bulk Data ``manifest.json`` of the files written; returns the counts in ``resource_types`` order."""
    ordered = {t: counts[t] for t in resource_types if t in counts}
    manifest = {
        "transactionTime": transaction_time,
        "request": request,
        "requiresAccessToken": True,
        "output": [{"type": t, "url": f"{t}.ndjson", "count": n} for t, n in ordered.items()],
        "error": [],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return ordered
