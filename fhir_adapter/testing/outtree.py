"""An OUT folder as {relative path: bytes}, without what legitimately differs between two runs (the start and
finish times of run-report.json and state/last-run.json, the creation times of
the ODM and Dataset-JSON files, the OUT folder's path)."""

from __future__ import annotations

import re
from pathlib import Path

_ODM_TIME = re.compile(rb'(FileOID="[^"]*?\.|CreationDateTime=")\d{4}-\d\d-\d\dT[0-9:+.]+')
_REPORT_TIME = re.compile(rb'"(started|finished)": "[^"]*"')
_DATASET_JSON_TIME = re.compile(rb'"(creationDateTime|asOfDateTime)":( ?)"[^"]*"')


def out_tree(out: Path) -> dict[str, bytes]:
    tree = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            data = p.read_bytes().replace(str(out).encode(), b"OUT")
            if p.name == "odm.xml":
                data = _ODM_TIME.sub(rb"\1TIME", data)
            if p.parent.name == "export" and p.suffix == ".json":  # Dataset-JSON
                data = _DATASET_JSON_TIME.sub(rb'"\1":\2"TIME"', data)
            if p.name in ("run-report.json", "last-run.json"):
                data = _REPORT_TIME.sub(rb'"\1": "TIME"', data)
            tree[str(p.relative_to(out))] = data
    return tree


def differences(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    """Files only in one tree or with other content."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
