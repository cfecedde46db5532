"""The files of a Bulk Data export as a folder holds them, in every layout exporters write.

* ``Observation.ndjson``, ``Observation.ndjson.gz``, ``Observation.000.ndjson`` … ``Observation.NNN.ndjson(.gz)``,
  ``1.Observation.ndjson`` (the SMART reference server and its client), files in sub-folders;
* Bundle JSON files (``*.json``, ``*.json.gz``), e.g. one Bundle per patient;
* a Bulk ``manifest.json``: its ``output[]`` lists the data files, its ``error[]`` the OperationOutcome files.

A file the adapter cannot read is an error naming the file (never skipped): an unknown extension next to the
data files, a manifest entry whose file is missing, a damaged or truncated gzip file. Hidden files (a name
starting with ``.``: partial downloads, the Bulk client's job state) are not data.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from fhir_adapter.fhir.r4 import is_r4_type
from fhir_adapter.source.base import SourceError

DATA_SUFFIXES = (".ndjson", ".ndjson.gz", ".json", ".json.gz")
MANIFEST = "manifest.json"
_PART = re.compile(r"^\d+$")


@dataclass(frozen=True)
class DataFile:
    path: Path
    #: the path shown in messages and quarantine entries (relative to the folder)
    name: str
    #: the resource type the file name (or the manifest) gives; None for a file of mixed types
    rtype: str | None
    #: NDJSON (one resource per line) or one JSON document (a Bundle or a resource)
    ndjson: bool

    @property
    def sort_key(self) -> tuple[str, int, str]:
        """Files of one type together, their parts in numeric order: the resources reach the mapping in the
        same order whatever the layout (``Observation.ndjson`` or ``Observation.000…002.ndjson.gz``)."""
        stem = _stem(self.path.name)
        part = next((int(p) for p in stem.split(".") if _PART.match(p)), -1)
        return (self.rtype or "~", part, self.name)


@dataclass
class Layout:
    data: list[DataFile]
    #: OperationOutcome files listed in a manifest's ``error[]``
    errors: list[DataFile]
    manifest: dict[str, Any] | None = None


def _stem(name: str) -> str:
    for suffix in sorted(DATA_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def type_from_name(name: str) -> str | None:
    """``Observation.ndjson``, ``Observation.003.ndjson.gz``, ``1.Observation.ndjson``, ``Observation_2.ndjson``
    → ``Observation``; a name that holds no R4 resource type, or names a Bundle → None (read as mixed types)."""
    for part in re.split(r"[._-]", _stem(name)):
        if part and part[0].isupper() and part != "Bundle" and is_r4_type(part):
            return part
    return None


def _data_file(folder: Path, path: Path, rtype: str | None = None) -> DataFile:
    name = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)
    return DataFile(path=path, name=name, rtype=rtype or type_from_name(path.name),
                    ndjson=path.name.endswith((".ndjson", ".ndjson.gz")))


def discover(folder: Path) -> Layout:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"source folder {folder} does not exist: run `fhir-adapter synth --out {folder}` "
                                "or point --source at a Bulk Data export folder")
    found: list[Path] = []
    unknown: list[Path] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.name == MANIFEST:
            continue
        (found if path.name.endswith(DATA_SUFFIXES) else unknown).append(path)
    if unknown:
        raise SourceError(f"{unknown[0]}: not a file the adapter can read (FHIR NDJSON or JSON: "
                          f"{', '.join(DATA_SUFFIXES)}); remove it from {folder} or convert it"
                          + (f" ({len(unknown) - 1} more such file(s))" if len(unknown) > 1 else ""))
    manifest_path = folder / MANIFEST
    manifest = _read_manifest(manifest_path) if manifest_path.is_file() else None
    data: dict[Path, DataFile] = {}
    errors: dict[Path, DataFile] = {}
    if manifest is not None:
        for key, target in (("output", data), ("error", errors)):
            for n, entry in enumerate(manifest.get(key) or [], start=1):
                if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                    raise SourceError(f"{manifest_path}: {key}[{n}] has no url; the manifest is not a Bulk Data "
                                      "manifest")
                local = _local_file(folder, entry["url"])
                if local is None:
                    raise SourceError(f"{manifest_path}: {key}[{n}] lists {entry['url']}, which is not in {folder}; "
                                      "download the export again (or remove the entry)")
                rtype = entry.get("type") if isinstance(entry.get("type"), str) else None
                target[local] = _data_file(folder, local, rtype)
    for path in found:
        if path not in data and path not in errors:
            data[path] = _data_file(folder, path)
    if not data and not errors:
        raise FileNotFoundError(f"no FHIR data files ({', '.join(DATA_SUFFIXES)}) in {folder}")
    return Layout(data=sorted(data.values(), key=lambda f: f.sort_key),
                  errors=sorted(errors.values(), key=lambda f: f.name), manifest=manifest)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        doc = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise SourceError(f"{path}: not JSON ({exc.msg}); a Bulk Data manifest is a JSON object with output[]") \
            from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("output"), list):
        raise SourceError(f"{path}: not a Bulk Data manifest (no output[] list); rename it if it is data")
    return doc


def _local_file(folder: Path, url: str) -> Path | None:
    """Where a manifest's file URL is in the folder: the relative path it names, or the longest tail of its path
    that exists (a downloaded export keeps the server's file names; a gzip'd download may have ``.gz`` added)."""
    path = urlsplit(url).path if "://" in url else url
    parts = [p for p in path.split("/") if p]
    candidates = [folder.joinpath(*parts[k:]) for k in range(len(parts))]  # the longest tail that exists
    for c in list(candidates):
        candidates.append(c.with_name(c.name + ".gz"))
    for c in candidates:
        if c.is_file() and c.resolve().is_relative_to(folder.resolve()):
            return c
    return None


def read_lines(f: DataFile) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of an NDJSON file, gzip'd or not; blank lines skipped."""
    try:
        with _open(f.path) as fh:
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    yield n, line
    except (EOFError, OSError, zlib.error) as exc:
        raise SourceError(f"{f.path}: cannot be read ({exc}); the file is damaged or truncated: export or "
                          "download it again") from exc


def read_document(f: DataFile) -> bytes:
    try:
        with _open(f.path) as fh:
            data: bytes = fh.read()
            return data
    except (EOFError, OSError, zlib.error) as exc:
        raise SourceError(f"{f.path}: cannot be read ({exc}); the file is damaged or truncated: export or "
                          "download it again") from exc


def _open(path: Path) -> Any:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb", buffering=1 << 20)
