"""The resources a Bulk export since the last run lists as deleted, and the subjects they may have belonged to.

The Bulk Data Access IG v2.0.0 ("Response - Complete Status", the manifest's ``deleted``): when the kick-off
gave ``_since``, ``deleted[]`` lists files (the structure of ``output[]``) of the resources that would have been
exported but were deleted since then; each line is a Bundle of type ``transaction`` with one or more entries,
each with ``request.method`` ``DELETE`` and ``request.url`` (``Observation/123``). A server may leave the list
out or empty when nothing was deleted. A deleted resource is in no ``output[]`` file, so the patients the
export's data name do not include its patient: without reading ``deleted[]``, a subject whose only change is a
deleted record would keep its last run's CRF, stale, with the deleted record in it.

Which subject a deleted resource was is read from what the last run left, each subject's CRF (``OUT/crf``),
which names the resources its values came from (``source``: type and id):

* a deleted resource a CRF names belonged to that subject, which is read again in full (so is the subject of a
  deleted ``Patient/<id>``);
* one no CRF names (a resource the mapping did not use, another patient's, one of a subject whose CRF is not at
  hand) is looked up in its instance history (:mod:`fhir_adapter.source.server.deletion_owners`): an enrolled
  patient's has that subject read again, another patient's is ignored;
* a shared Medication/Organization/Location/Specimen (records of any subject may reference it), one whose
  history names no patient, a CRF that cannot be read, or a line that is not such a Bundle cannot be
  attributed: then every enrolled subject is read again in full (warning ``incremental``), never a CRF that may
  be stale reused.

The REST path attributes the deletions its type-level history lists by the same rule
(:mod:`fhir_adapter.source.server.deletion_subjects`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from fhir_adapter.fhir.r4 import is_r4_type
from fhir_adapter.source.base import SHARED_TYPES, SourceError
from fhir_adapter.source.layout import DataFile, read_lines

#: a FHIR id (R4 ``id`` datatype)
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: problems shown in a warning, the rest counted
_SHOWN = 3

Ref = tuple[str, str]  # (resource type, id)


@dataclass
class Deletions:
    """What the ``deleted[]`` files say: the deleted resources, and what could not be read (file, line, why)."""

    refs: set[Ref] = field(default_factory=set)
    unreadable: list[str] = field(default_factory=list)


def deleted_ref(url: Any) -> Ref | None:
    """``Observation/123`` (relative, absolute, or with ``/_history/N``) → ``("Observation", "123")``; None when it
    names no R4 resource type and id."""
    if not isinstance(url, str):
        return None
    path = urlsplit(url).path if "://" in url else url.split("?", 1)[0]
    parts = [p for p in path.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2 or not is_r4_type(parts[-2]) or not _FHIR_ID.fullmatch(parts[-1]):
        return None
    return parts[-2], parts[-1]


def read_deleted(folder: Path, names: Iterable[str]) -> Deletions:
    """The deleted resources the files ``names`` (local names under ``folder``, NDJSON, gzip'd or not) list."""
    found = Deletions()
    for name in names:
        f = DataFile(path=str(folder / name), name=name, rtype="Bundle", ndjson=True)
        try:
            for n, line in read_lines(f):
                _read_line(found, f"{name} line {n}", line)
        except SourceError as exc:
            found.unreadable.append(str(exc))
    return found


def _read_line(found: Deletions, where: str, line: bytes) -> None:
    try:
        bundle = orjson.loads(line)
    except orjson.JSONDecodeError:
        found.unreadable.append(f"{where}: not JSON")
        return
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" \
            or not isinstance(bundle.get("entry"), list):
        found.unreadable.append(f"{where}: not a Bundle with entries")
        return
    for k, entry in enumerate(bundle["entry"], start=1):
        request = entry.get("request") if isinstance(entry, dict) else None
        ref = deleted_ref(request.get("url")) if isinstance(request, dict) else None
        if ref is None or request is None or request.get("method") != "DELETE":
            found.unreadable.append(f"{where}, entry {k}: not a DELETE of Type/id")
            continue
        found.refs.add(ref)


def crf_sources(path: Path) -> set[Ref]:
    """The resources a CRF file (``OUT/crf/<subject>.json``) names as the sources of its values (every
    ``{"resource_type": …, "id": …}`` in it)."""
    found: set[Ref] = set()
    todo: list[Any] = [orjson.loads(path.read_bytes())]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            rtype, rid = node.get("resource_type"), node.get("id")
            if isinstance(rtype, str) and isinstance(rid, str):
                found.add((rtype, rid))
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


@dataclass
class Attribution:
    #: patient id -> the deleted resources its last CRF named (or its own Patient)
    subjects: dict[str, list[Ref]]
    #: deleted resources no subject can be named for
    unattributed: list[Ref]
    #: CRFs that could not be read (patient id -> why)
    unreadable_crfs: dict[str, str]


def attribute(refs: Iterable[Ref], crfs: Mapping[str, Path], enrolled: Iterable[str]) -> Attribution:
    """Which subject each deleted resource was, from the last CRFs ``crfs`` (patient id -> CRF file at hand);
    a deleted Patient of ``enrolled`` is its own subject."""
    patients = set(enrolled)
    owners: dict[Ref, set[str]] = {}
    bad: dict[str, str] = {}
    for pid, path in sorted(crfs.items()):
        try:
            sources = crf_sources(path)
        except (OSError, orjson.JSONDecodeError) as exc:
            bad[pid] = f"{path.name}: {exc}"
            continue
        for ref in sources:
            owners.setdefault(ref, set()).add(pid)
    subjects: dict[str, list[Ref]] = {}
    unattributed: list[Ref] = []
    for ref in sorted(refs):
        named = set() if ref[0] in SHARED_TYPES else set(owners.get(ref, ()))
        if ref[0] == "Patient" and ref[1] in patients:
            named.add(ref[1])
        if not named:
            unattributed.append(ref)
        for pid in named:
            subjects.setdefault(pid, []).append(ref)
    return Attribution(subjects, unattributed, bad)


def crfs_at_hand(patient_ids: Iterable[str], labels: Mapping[str, str],
                 last_crf: Callable[[str], Path] | None) -> dict[str, Path]:
    """Patient id -> its subject's CRF of the last run (``last_crf`` of the subject ID ``labels`` gives it), for
    those whose CRF is at hand; none when ``last_crf`` is None (not known)."""
    if last_crf is None:
        return {}
    return {pid: path for pid in patient_ids if (path := last_crf(labels.get(pid, pid))).is_file()}


def former_owners(changed: Iterable[Ref], unchanged: set[str], labels: Mapping[str, str],
                  last_crf: Callable[[str], Path] | None) -> tuple[set[str], dict[str, list[Ref]]]:
    """The patients of ``unchanged`` whose last CRF names a resource found changed since the last run under
    another patient — a record the EHR moved between patients (filed under the wrong one, corrected) — or whose
    CRF cannot be read: they are read again in full, never a CRF that may be stale reused (the REST probe and
    the Bulk export since the last run, one rule). Also returns what each one's CRF named."""
    refs = set(changed)
    if not refs or not unchanged:
        return set(), {}
    found = attribute(refs, crfs_naming(refs, crfs_at_hand(unchanged, labels, last_crf)), unchanged)
    return set(found.subjects) | set(found.unreadable_crfs), found.subjects


def crfs_naming(refs: Iterable[Ref], crfs: Mapping[str, Path]) -> dict[str, Path]:
    """The CRFs of ``crfs`` whose text has the id of one of ``refs`` as an ``"id"`` (or that cannot be read):
    the only ones :func:`attribute` can find naming one, found in a fraction of the time parsing them takes (a
    CRF is 1-2 MB; 340 of them: 0.9 s against 11 s); :func:`attribute` then checks type and id."""
    ids = {rid.encode() for _, rid in refs}
    return {pid: path for pid, path in crfs.items() if _may_name(path, ids)}


#: an ``"id": "…"`` member as a CRF file writes it
_ID_MEMBER = re.compile(rb'"id": ?"([^"]*)"')


def _may_name(path: Path, ids: set[bytes]) -> bool:
    """Might the CRF file name one of ``ids``? True too when it may not be a whole CRF as a run writes it —
    unreadable, or not ending with the closing brace of its indented JSON (engine/subject.py json_file): empty,
    cut short, written otherwise — so that :func:`attribute` parses it (and reports it if it cannot be read: its
    subject is read again in full)."""
    try:
        data = path.read_bytes()
    except OSError:
        return True
    return not data.endswith(b"\n}") or not ids.isdisjoint(_ID_MEMBER.findall(data))


def unattributable(found: Attribution) -> list[str]:
    """Why some deletions cannot be attributed to a subject (empty: each one can)."""
    why = []
    if found.unattributed:
        why.append(f"{len(found.unattributed)} deleted resource(s) ({shown_refs(found.unattributed)}) are named "
                   "by no subject's CRF of the last run (a resource the mapping did not use, a shared "
                   "Medication/Organization/Location/Specimen, or one of a subject with no CRF), so whose "
                   "they were is not known")
    if found.unreadable_crfs:
        why.append(f"{len(found.unreadable_crfs)} CRF(s) of the last run could not be read "
                   f"({shown_problems(list(found.unreadable_crfs.values()))})")
    return why


def shown_refs(refs: Iterable[Ref]) -> str:
    listed = [f"{t}/{i}" for t, i in refs]
    more = f" and {len(listed) - _SHOWN} more" if len(listed) > _SHOWN else ""
    return ", ".join(listed[:_SHOWN]) + more


def shown_problems(problems: list[str]) -> str:
    more = f" and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return "; ".join(problems[:_SHOWN]) + more
