"""The files of a Bulk Data export as a folder holds them, in every layout exporters write.

* ``Observation.ndjson``, ``Observation.ndjson.gz``, ``Observation.000.ndjson`` … ``Observation.NNN.ndjson(.gz)``,
  ``1.Observation.ndjson`` (the SMART reference server and its client), files in sub-folders;
* Bundle JSON files (``*.json``, ``*.json.gz``), e.g. one Bundle per patient;
* a Bulk ``manifest.json``: its ``output[]`` lists the data files, its ``error[]`` the OperationOutcome files,
  its ``deleted[]`` (an export ``_since``) the files of deleted resources, which are not data.

A file the adapter cannot read is an error naming the file (never skipped): an unknown extension next to the
data files, a manifest entry whose file is missing, a damaged or truncated gzip file, gzip data in a file not
named ``.gz``. A local folder's file whose manifest entry gives a ``count`` (Bulk Data IG v2) other than its
lines is read and said (:attr:`Layout.count_mismatches`: a warning of the run, ``manifest-count``) — an export
cut at a line end, or a file edited since (a site that filtered its export keeps the manifest's old counts).
Hidden files (a name
starting with ``.``: partial downloads, the Bulk client's job state) are not data.

Where the files are is a :class:`Folder`: a local folder (:class:`LocalFolder`), or any location another reader
lists and opens (the Spark engine's :class:`fhir_adapter.engine.spark_files.SparkFolder`: ``s3a://``,
``hdfs://``, ``file://`` …). Every engine classifies and reads the files the same way, whatever the folder.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast
from urllib.parse import urlsplit

import orjson

from fhir_adapter.fhir.ndjson_lines import COUNTS_CHECKED, ndjson_lines
from fhir_adapter.fhir.r4 import is_r4_type
from fhir_adapter.source.base import SourceError

DATA_SUFFIXES = (".ndjson", ".ndjson.gz", ".json", ".json.gz")
MANIFEST = "manifest.json"
_PART = re.compile(r"^\d+$")


class Folder(Protocol):
    """Where an export's files are."""

    #: the folder as the user named it (shown in messages)
    location: str

    def files(self) -> list[str]:
        """The relative (``/``-separated) names of every file under the folder, sub-folders included; hidden
        files (a name part starting with ``.``) left out. FileNotFoundError when the folder does not exist."""

    def path(self, name: str) -> str:
        """The full location of the file ``name`` (shown in messages; what :meth:`open` takes)."""

    def open(self, path: str) -> IO[bytes]:
        """The bytes of a file as stored (gzip'd or not)."""

    def lines(self, f: DataFile) -> Iterator[bytes]:
        """The lines of an NDJSON file, decompressed, in file order (each as stored, with its ``\\n``), read
        as they are used: a file of any size is never held whole."""


class LocalFolder:
    """A folder on this machine's file system."""

    def __init__(self, folder: Path) -> None:
        self.root = Path(folder)
        self.location = str(folder)

    def files(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"source folder {self.root} does not exist: run `fhir-adapter synth --out "
                                    f"{self.root}` or point --source at a Bulk Data export folder")
        names = []
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root)
            if not any(part.startswith(".") for part in rel.parts) and path.is_file():
                names.append(rel.as_posix())
        return names

    def path(self, name: str) -> str:
        return str(self.root.joinpath(*name.split("/")))

    def open(self, path: str) -> IO[bytes]:
        return open(path, "rb", buffering=1 << 20)  # the caller closes it

    def lines(self, f: DataFile) -> Iterator[bytes]:
        with _open(f, self) as fh:
            yield from fh


@dataclass(frozen=True)
class DataFile:
    #: the file's full location (a local path, or a URI for a folder another reader lists)
    path: str
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
        stem = _stem(self.name.rsplit("/", 1)[-1])
        part = next((int(p) for p in stem.split(".") if _PART.match(p)), -1)
        return (self.rtype or "~", part, self.name)


@dataclass
class Layout:
    data: list[DataFile]
    #: OperationOutcome files listed in a manifest's ``error[]``
    errors: list[DataFile]
    manifest: dict[str, Any] | None = None
    #: files of deleted resources (transaction Bundles of DELETE entries) listed in a manifest's ``deleted[]``
    deleted: list[DataFile] = field(default_factory=list)
    #: (file, what its manifest count says against its lines) of a local folder's files that disagree
    count_mismatches: list[tuple[str, str]] = field(default_factory=list)


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


def _data_file(folder: Folder, name: str, rtype: str | None = None) -> DataFile:
    base = name.rsplit("/", 1)[-1]
    return DataFile(path=folder.path(name), name=name, rtype=rtype or type_from_name(base),
                    ndjson=base.endswith((".ndjson", ".ndjson.gz")))


def discover(where: Path | Folder) -> Layout:
    folder = LocalFolder(where) if isinstance(where, Path) else where
    found: list[str] = []
    unknown: list[str] = []
    names = folder.files()
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if base == MANIFEST:
            continue
        (found if base.endswith(DATA_SUFFIXES) else unknown).append(name)
    if unknown:
        raise SourceError(f"{folder.path(unknown[0])}: not a file the adapter can read (FHIR NDJSON or JSON: "
                          f"{', '.join(DATA_SUFFIXES)}); remove it from {folder.location} or convert it"
                          + (f" ({len(unknown) - 1} more such file(s))" if len(unknown) > 1 else ""))
    manifest_path = folder.path(MANIFEST)
    manifest = _read_manifest(folder, manifest_path) if MANIFEST in names else None
    data: dict[str, DataFile] = {}
    errors: dict[str, DataFile] = {}
    deleted: dict[str, DataFile] = {}
    counts: dict[str, int] = {}  # a local folder's files whose manifest entry gives the count of resources
    if manifest is not None:
        counted = isinstance(folder, LocalFolder) and manifest.get(COUNTS_CHECKED) is not True
        listed = set(found)
        for key, target in (("output", data), ("error", errors), ("deleted", deleted)):
            for n, entry in enumerate(manifest.get(key) or [], start=1):
                if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                    raise SourceError(f"{manifest_path}: {key}[{n}] has no url; the manifest is not a Bulk Data "
                                      "manifest")
                listed_name = _listed_file(listed, entry["url"])
                if listed_name is None:
                    raise SourceError(f"{manifest_path}: {key}[{n}] lists {entry['url']}, which is not in "
                                      f"{folder.location}; download the export again (or remove the entry)")
                rtype = entry.get("type") if isinstance(entry.get("type"), str) else None
                target[listed_name] = _data_file(folder, listed_name, rtype)
                count = entry.get("count")
                if isinstance(count, int) and not isinstance(count, bool) and counted:
                    counts[listed_name] = count
    for name in found:
        if name not in data and name not in errors and name not in deleted:
            data[name] = _data_file(folder, name)
    if not data and not errors:
        raise FileNotFoundError(f"no FHIR data files ({', '.join(DATA_SUFFIXES)}) in {folder.location}")
    mismatches: list[tuple[str, str]] = []
    for f in (*data.values(), *errors.values(), *deleted.values()):
        if f.name.endswith(".gz"):
            _check_gzip(folder, f)
        else:
            _check_not_gzip(folder, f)
        if f.name in counts and f.ndjson and (said := _check_count(folder, f, counts[f.name], manifest_path)):
            mismatches.append((f.path, said))
    return Layout(data=sorted(data.values(), key=lambda f: f.sort_key),
                  errors=sorted(errors.values(), key=lambda f: f.name), manifest=manifest,
                  deleted=sorted(deleted.values(), key=lambda f: f.name), count_mismatches=mismatches)


#: the first bytes of every gzip stream (RFC 1952)
_GZIP_MAGIC = b"\x1f\x8b"


def _check_gzip(folder: Folder, f: DataFile) -> None:
    """A ``.gz`` file must start a gzip stream: Python's gzip reads a 0-byte file as empty data, so an export whose
    ``Observation.ndjson.gz`` was cut to nothing would run "ok" without a single lab (issue 17)."""
    with folder.open(f.path) as fh:
        head = fh.read(len(_GZIP_MAGIC))
    if head != _GZIP_MAGIC:
        what = "is empty (0 bytes)" if not head else "does not start with the gzip header"
        raise SourceError(f"{f.path}: {what}, but a .gz file holds gzip data: the file is damaged or truncated: "
                          "export or download it again")


def _check_not_gzip(folder: Folder, f: DataFile) -> None:
    """A ``.ndjson``/``.json`` file that holds gzip data (a download saved without its ``.gz``) would be read as
    text: every line "not valid UTF-8", thousands of quarantine entries instead of one error naming the file."""
    with folder.open(f.path) as fh:
        head = fh.read(len(_GZIP_MAGIC))
    if head == _GZIP_MAGIC:
        raise SourceError(f"{f.path}: holds gzip data (it starts with the gzip header 1f 8b), but its name does not "
                          f"end in .gz, so it would be read as text: rename it to {f.name.rsplit('/', 1)[-1]}.gz "
                          "(or decompress it)")


def _check_count(folder: Folder, f: DataFile, count: int, manifest_path: str) -> str | None:
    """What is wrong when a file the manifest gives the ``count`` of (Bulk Data IG v2: the resources in it) does
    not hold that many lines (None: it does): a file cut short (also at a line end, which reads as valid
    NDJSON), edited since, or not the one listed."""
    def chunks() -> Iterator[bytes]:
        with _open(f, folder) as fh:
            while chunk := fh.read(1 << 20):
                yield chunk

    try:
        lines = ndjson_lines(chunks, count)
    except UNREADABLE as exc:
        raise unreadable(f, exc) from exc
    if lines != count:
        return (f"{f.path}: holds {lines} line(s), but its entry in {manifest_path} gives count {count}: the file is "
                f"{'incomplete' if lines < count else 'not the one the export listed'} (or was edited since)")
    return None


def _read_manifest(folder: Folder, path: str) -> dict[str, Any]:
    try:
        with folder.open(path) as fh:
            doc = orjson.loads(without_bom(fh.read()))
    except orjson.JSONDecodeError as exc:
        raise SourceError(f"{path}: not JSON ({exc.msg}); a Bulk Data manifest is a JSON object with output[]") \
            from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("output"), list):
        raise SourceError(f"{path}: not a Bulk Data manifest (no output[] list); rename it if it is data")
    return doc


def _listed_file(listed: set[str], url: str) -> str | None:
    """Which file of the folder a manifest's file URL is: the relative path it names, or the longest tail of its
    path that is in the folder (a downloaded export keeps the server's file names; a gzip'd download may have
    ``.gz`` added)."""
    path = urlsplit(url).path if "://" in url else url
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    candidates = ["/".join(parts[k:]) for k in range(len(parts))]  # the longest tail first
    candidates += [c + ".gz" for c in candidates]
    return next((c for c in candidates if c in listed), None)


#: the UTF-8 byte order mark some Windows tools write at the start of a file (not JSON: RFC 8259 §8.1 lets a
#: parser ignore it, orjson does not)
BOM = b"\xef\xbb\xbf"


def without_bom(data: bytes) -> bytes:
    """``data`` (a file's first line, or a whole JSON file) without a leading UTF-8 byte order mark."""
    return data[3:] if data.startswith(BOM) else data


def read_lines(f: DataFile, folder: Folder | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of an NDJSON file, gzip'd or not; blank lines skipped, a byte order mark dropped."""
    try:
        for n, line in enumerate(folder.lines(f) if folder is not None else _local_lines(f), start=1):
            if n == 1:
                line = without_bom(line)
            if line.strip():
                yield n, line
    except UNREADABLE as exc:
        raise unreadable(f, exc) from exc


def _local_lines(f: DataFile) -> Iterator[bytes]:
    with _open(f, None) as fh:
        yield from fh


def read_document(f: DataFile, folder: Folder | None = None) -> bytes:
    try:
        with _open(f, folder) as fh:
            data: bytes = fh.read()
            return without_bom(data)
    except UNREADABLE as exc:
        raise unreadable(f, exc) from exc


#: what reading a damaged or truncated file raises
UNREADABLE = (EOFError, OSError, zlib.error)


def unreadable(f: DataFile, exc: BaseException) -> SourceError:
    return SourceError(f"{f.path}: cannot be read ({exc}); the file is damaged or truncated: export or download "
                       "it again")


@contextlib.contextmanager
def _open(f: DataFile, folder: Folder | None) -> Iterator[IO[bytes]]:
    """A file's decompressed bytes; ``folder`` None: a local file."""
    with (folder.open(f.path) if folder is not None else open(f.path, "rb", buffering=1 << 20)) as raw:
        if f.name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                yield cast(IO[bytes], fh)
        else:
            yield raw
