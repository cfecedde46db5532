"""An OUT folder as {relative path: bytes}, without what legitimately differs between two runs (the start and
finish times of run-report.json and state/last-run.json, the creation times of
the ODM and Dataset-JSON files, the date of the ODM's review Location, the OUT folder's path), and the CRFs of a
run that read a FHIR server compared with those of a run that read the same feed from files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_ODM_TIME = re.compile(rb'(FileOID="[^"]*?\.|CreationDateTime=")\d{4}-\d\d-\d\dT[0-9:+.]+')
_ODM_DATE = re.compile(rb'(EffectiveDate=")\d{4}-\d\d-\d\d')  # the run's date: two runs may straddle midnight
_REPORT_TIME = re.compile(rb'"(started|finished)": "[^"]*"')
_DATASET_JSON_TIME = re.compile(rb'"(datasetJSONCreationDateTime)":( ?)"[^"]*"')


def out_tree(out: Path) -> dict[str, bytes]:
    tree = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            tree[str(p.relative_to(out))] = normalized(out, p, p.read_bytes())
    return tree


def normalized(out: Path, p: Path, data: bytes) -> bytes:
    """``data`` of file ``p`` of OUT (the whole file or any of its lines) without what legitimately differs."""
    data = data.replace(str(out).encode(), b"OUT")
    if p.name == "odm.xml":
        data = _ODM_DATE.sub(rb"\1DATE", _ODM_TIME.sub(rb"\1TIME", data))
    if p.parent.name == "export" and p.suffix == ".json":  # Dataset-JSON
        data = _DATASET_JSON_TIME.sub(rb'"\1":\2"TIME"', data)
    if p.name in ("run-report.json", "last-run.json"):
        data = _REPORT_TIME.sub(rb'"\1": "TIME"', data)
    return data


def differences(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    """Files only in one tree or with other content."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _without_trailing_zero(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: re.sub(r"\.0$", "", v) if k == "orig_value" and isinstance(v, str) else _without_trailing_zero(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_without_trailing_zero(v) for v in value]
    return value


def server_read_crfs(out: Path) -> dict[str, Any]:
    """The CRFs of OUT, comparable between a run that read a FHIR server and one that read the same feed from
    files. The test server is JavaScript: a decimal sent as 39.0 comes back as 39, so a CRF's ``orig_value``
    (the value as the EHR sent it) differs in that trailing zero only; everything else must be identical."""
    return {p.stem: _without_trailing_zero(json.loads(p.read_text())) for p in sorted((out / "crf").glob("*.json"))}
