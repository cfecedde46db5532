"""A folder of FHIR R4 files — a Bulk Data ``$export`` (NDJSON, gzip'd or not, in any layout of
:mod:`fhir_adapter.source.layout`) and/or Bundle JSON files: the embedded default, no server needed.

Memory follows the trial, not the export: the folder is streamed in passes, and only the enrolled subjects'
resources are kept.

1. **roster** — the ResearchStudy, ResearchSubject and Patient files: the studies and subjects, the Patients
   they name (or a roster CSV names), and the id of every other Patient (to tell an unknown patient from a
   patient not in the trial);
2. **subjects** — the files of :data:`~fhir_adapter.source.base.SUBJECT_TYPES`: each line is parsed once; an
   enrolled patient's line is kept as bytes (parsed again when the subject is mapped), anyone else's is
   counted and dropped;
3. **shared** — the Medication, Organization, Location and Specimen files: only the resources the enrolled
   subjects' resources reference are kept, and given to each subject that references them.

Two streaming passes rather than an offset index: an index would itself grow with the export (an entry per
line), and gzip'd files cannot be read at an offset; the passes read each file of the export at most once
(files of mixed types, which are rare, are parsed in each pass), and files of types the mapping does not use
are not read at all. Bundle JSON files are parsed whole (a Bundle is one document) and read in each pass.

Malformed lines and resources that name no known Patient are quarantined with the file and line (and the
entry, for a Bundle).
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import struct
import tempfile
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, overload

import orjson

from fhir_adapter.fhir.r4 import is_r4_type
from fhir_adapter.fhir.versions import version_key
from fhir_adapter.job.runlog import Locations, RunLog
from fhir_adapter.source.base import (
    ROSTER_TYPES,
    SHARED_TYPES,
    SUBJECT_TYPES,
    Resource,
    RosterInput,
    export_base,
    id_from_full_url,
    identifier_matches,
    managing_organization_ids,
    patient_id_of,
    ref_id,
    resolve_bundle_references,
    shared_references,
)
from fhir_adapter.source.layout import (
    DataFile,
    Folder,
    Layout,
    LocalFolder,
    discover,
    read_document,
    read_lines,
    without_bom,
)
from fhir_adapter.source.patient_links import say_links
from fhir_adapter.terminology.codes import SID_RESULT

#: which pass reads (and quarantines the bad lines of) a file of a given type; mixed files: every pass reads
#: them, the subjects pass reports their bad lines
_ROSTER, _SUBJECTS, _SHARED = "roster", "subjects", "shared"
_OUTCOME = "OperationOutcome"
#: a line that may reference a shared resource (checked on the bytes before looking through the parsed resource)
_SHARED_HINT = re.compile(rb"(?:Medication|Organization|Location|Specimen)/")
#: a "reference" element and its string value (without escapes) in a JSON line
_REFERENCE = re.compile(rb'"reference"\s*:\s*"([^"\\]*)"')
_KNOWN = frozenset((*ROSTER_TYPES, *SHARED_TYPES, _OUTCOME))
#: enrolled subjects' lines kept in memory up to this many bytes; beyond, on disk (FileSource.spool_bytes)
SPOOL_BYTES = 64 * 1024 * 1024
#: consecutive subjects per spool file
SPOOL_SUBJECTS = 32
#: write buffer of each spool file
SPOOL_BUFFER = 64 * 1024
#: a spool record: the subject's index in the run's order, the length of the JSON bytes that follow
_RECORD = struct.Struct("<II")
#: what a resource kept parsed (a Bundle entry) is counted as against SPOOL_BYTES
_DICT_SIZE = 2048


def _pass_of(rtype: str | None) -> str | None:
    if rtype is None:
        return None
    if rtype in ROSTER_TYPES:
        return _ROSTER
    if rtype in SUBJECT_TYPES:
        return _SUBJECTS
    if rtype in SHARED_TYPES:
        return _SHARED
    return "none"


class _SubjectLines:
    """The enrolled subjects' lines (or Bundle entries) in the order they are read, given back subject by
    subject in ``order``: in memory up to ``limit`` bytes, beyond that in spool files on disk, one per
    :data:`SPOOL_SUBJECTS` consecutive subjects of ``order`` (so one file at a time is read back)."""

    def __init__(self, order: list[str], limit: int, scratch: Path | None = None) -> None:
        self.order = order
        self.scratch = scratch  # where the spool files go (None: the system's temporary folder)
        self.index = {pid: i for i, pid in enumerate(order)}
        self.limit = limit
        self.size = 0
        self.memory: dict[str, list[bytes | Resource]] = {pid: [] for pid in order}
        self.spool: tempfile.TemporaryDirectory[str] | None = None
        self.files: dict[int, BinaryIO] = {}

    def add(self, pid: str, record: bytes | Resource) -> None:
        if self.spool is not None:
            self._write(pid, record)
            return
        self.memory[pid].append(record)
        self.size += len(record) if isinstance(record, bytes) else _DICT_SIZE
        if self.size > self.limit:
            self.spool = tempfile.TemporaryDirectory(prefix="fhir-adapter-subjects-", dir=self.scratch)
            for p, records in self.memory.items():
                for r in records:
                    self._write(p, r)
            self.memory = {}

    def _write(self, pid: str, record: bytes | Resource) -> None:
        assert self.spool is not None
        data = record if isinstance(record, bytes) else orjson.dumps(record)
        i = self.index[pid]
        fh = self.files.get(i // SPOOL_SUBJECTS)
        if fh is None:
            path = Path(self.spool.name) / str(i // SPOOL_SUBJECTS)
            fh = self.files[i // SPOOL_SUBJECTS] = path.open("ab", buffering=SPOOL_BUFFER)
        fh.write(_RECORD.pack(i, len(data)) + data)

    def subjects(self) -> Iterator[tuple[str, list[bytes | Resource]]]:
        if self.spool is None:
            for pid in self.order:
                yield pid, self.memory.pop(pid)
            return
        for fh in self.files.values():
            fh.close()
        for chunk in range(0, len(self.order), SPOOL_SUBJECTS):
            group: dict[str, list[bytes | Resource]] = {pid: [] for pid in self.order[chunk:chunk + SPOOL_SUBJECTS]}
            path = Path(self.spool.name) / str(chunk // SPOOL_SUBJECTS)
            if path.is_file():
                data = path.read_bytes()
                at = 0
                while at < len(data):
                    i, length = _RECORD.unpack_from(data, at)
                    at += _RECORD.size
                    group[self.order[i]].append(data[at:at + length])
                    at += length
                del data
                path.unlink()
            for pid, records in group.items():
                yield pid, records
            group.clear()

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
        if self.spool is not None:
            self.spool.cleanup()


class FileSource:
    #: bytes of enrolled subjects' lines kept in memory before they go to spool files (:class:`_SubjectLines`)
    spool_bytes = SPOOL_BYTES

    def __init__(self, folder: Path | Folder, log: RunLog) -> None:
        """``folder``: a local folder, or a :class:`~fhir_adapter.source.layout.Folder` another reader lists and
        opens (the Spark engine's)."""
        self.folder: Folder = LocalFolder(folder) if isinstance(folder, Path) else folder
        self.log = log
        self.description = f"files:{self.folder.location}"
        self.since: dt.datetime | None = None
        self.reusable: set[str] | None = None  # a folder is read whole: nothing is reused
        self.scratch: Path | None = None  # where subjects' lines wait on disk: spool files, the workers' parts
        self.failed: dict[str, Exception] = {}  # a file's problems are quarantined or stop the run, never a read
        self._layout: Layout | None = None
        self._roster: RosterInput | None = None
        self._all_patients: set[str] = set()
        self._links_said: set[frozenset[str]] = set()  # Patient pairs a patient-link warning named

    # -- the Source interface ---------------------------------------------------------------------
    def roster(self, patient_identifiers: Collection[str] = ()) -> RosterInput:
        if self._roster is None:
            self._roster = self._read_roster(set(patient_identifiers))
        return self._roster

    def label_subjects(self, labels: dict[str, str]) -> None:
        """Files are read without requests: nothing is counted per subject."""

    def unchanged_subjects(self) -> set[str]:
        return set()

    def request_stats(self) -> dict[str, Any] | None:
        return None

    def subject_resources(self, patient_ids: set[str]) -> Iterator[tuple[str, list[Resource]]]:
        base = self.roster().base
        for pid, records in self.subject_records(patient_ids):
            yield pid, checked_records(records, pid, base, self.log)

    def subject_records(self, patient_ids: set[str]) -> Iterator[tuple[str, list[bytes | Resource]]]:
        """:meth:`subject_resources` before parsing: an NDJSON line stays the line's bytes (parsed where the
        subject is processed: a worker process, which saves this process parsing and pickling the dicts).
        Beyond :attr:`spool_bytes` of enrolled subjects' lines, they wait in spool files on disk
        (:class:`_SubjectLines`), so memory stays flat in the cohort size."""
        base = self.roster().base
        lines = _SubjectLines(sorted(patient_ids), self.spool_bytes, self.scratch)
        refs: dict[str, set[tuple[str, str]]] = {pid: set() for pid in patient_ids}
        counts: Counter[str] = Counter()  # counted here, added to the run log once (a lock per line is slow)
        try:
            for f in self.subject_files():
                for pid, record, found in self.kept_records(f, self.file_lines(f), lines.index, counts, base):
                    lines.add(pid, record)
                    if found:
                        refs[pid] |= found
            for key, value in counts.items():
                self.log.count(key, value)
            shared = self.shared_records(set().union(*refs.values()))
            for pid, records in lines.subjects():
                records.extend(shared[key] for key in sorted(refs.pop(pid)) if key in shared)
                yield pid, records
        finally:
            lines.close()

    def file_lines(self, f: DataFile) -> Iterable[tuple[int, bytes]] | None:
        """(line number, line) of an NDJSON file of a subject type (routed by :meth:`kept_records`); None for
        any other file (read whole)."""
        return read_lines(f, self.folder) if f.ndjson and f.rtype in SUBJECT_TYPES else None

    def kept_records(self, f: DataFile, lines: Iterable[tuple[int, bytes]] | None, enrolled: Collection[str],
                     counts: Counter[str], base: str | None,
                     ) -> Iterator[tuple[str, bytes | Resource, set[tuple[str, str]] | None]]:
        """(enrolled patient, record, the shared resources it references) of what the subjects pass keeps of
        file ``f`` — of its ``lines`` (:meth:`file_lines`, or a part of them), else of the whole file. A line
        :class:`LineRouter` routes to an enrolled patient is kept unparsed (:func:`routed_prefix`: the worker
        that parses it checks it, :func:`checked_records`); any other is parsed here, and kept as its bytes (a
        Bundle entry: as the resource) when :meth:`enrolled_patient` keeps it."""
        if lines is None:
            for n, entry, res, raw in self._read_file(f, True):
                yield from self._kept(f, n, entry, res, raw, enrolled, counts, base)
            return
        assert f.rtype is not None
        router = LineRouter(f.rtype, base)
        counted, prefix = f"read.{f.rtype}", routed_prefix(f)
        for n, line in lines:
            pid = router.patient(line)
            if pid is None or pid not in enrolled:
                for n1, entry, res, raw in self.ndjson_resources(f, ((n, line),), True):
                    yield from self._kept(f, n1, entry, res, raw, enrolled, counts, base)
                continue
            counts[counted] += 1
            raw = line.strip()
            yield pid, prefix + b"%d\x00" % n + raw, _line_references(raw)

    def _kept(self, f: DataFile, n: int, entry: int | None, res: Resource, raw: bytes | None,
              enrolled: Collection[str], counts: Counter[str], base: str | None,
              ) -> Iterator[tuple[str, bytes | Resource, set[tuple[str, str]] | None]]:
        pid = self.enrolled_patient(f, n, entry, res, enrolled, counts, base)
        if pid is None:
            return
        # the line's bytes take a fraction of the memory of the parsed dict: a subject's resources are parsed
        # again (orjson, microseconds) when that subject is processed; each record names its file and line
        # (and Bundle entry), so what the mapping quarantines says where it was (checked_records)
        if raw is None:
            yield pid, located_prefix(f, n, entry) + orjson.dumps(res), shared_references([res])
        else:
            yield pid, located_prefix(f, n, None) + raw.strip(), \
                line_references(raw, res) if _SHARED_HINT.search(raw) else None

    def enrolled_patient(self, f: DataFile, n: int, entry: int | None, res: Resource, enrolled: Collection[str],
                         counts: Counter[str], base: str | None) -> str | None:
        """The enrolled patient a resource of the subjects pass belongs to; None when it is not kept (counted in
        ``counts``, or quarantined with its file and line)."""
        rtype = res["resourceType"]
        if rtype not in SUBJECT_TYPES:
            if rtype not in _KNOWN:
                counts[f"ignored.{rtype}"] += 1
            return None
        counts[f"read.{rtype}"] += 1
        rid = res.get("id")
        if not isinstance(rid, str) or not rid:
            self.log.reject(rtype, None, "missing-id",
                            f"{rtype} without id: versions and references cannot be resolved",
                            "export resources with ids", **_where(f, n, entry), raw=res)
            return None
        pid = patient_id_of(res, base)
        if pid in enrolled:
            if _adapter_owned(res):  # a result the adapter wrote to the server, exported with the rest
                counts["read.skipped-adapter-results"] += 1
                return None
            return pid
        if pid in self._all_patients:
            counts["skipped.not-enrolled"] += 1
        elif pid is None:
            self.log.reject(rtype, rid, "no-patient",
                            "the resource names no Patient of this export (subject missing, a reference to "
                            "another server, or a urn:uuid outside the Bundle that defines it)",
                            "the EHR export must set subject to the Patient (Patient/<id>)",
                            **_where(f, n, entry), raw=res)
        else:
            self.log.reject(rtype, rid, "unknown-patient",
                            f"references Patient/{pid}, which is not in the source",
                            "include the Patient in the export or correct the reference",
                            **_where(f, n, entry), raw=res)
        return None

    @classmethod
    def line_reader(cls, known_patients: set[str], log: RunLog) -> FileSource:
        """A source that only classifies lines already read elsewhere (a Spark task):
        :meth:`ndjson_resources`, :meth:`document_resources`, :meth:`enrolled_patient`."""
        source = cls(Path("."), log)
        source._all_patients = known_patients
        return source

    def known_patients(self) -> set[str]:
        """The id of every Patient in the export (after the roster pass)."""
        self.roster()
        return self._all_patients

    def subject_files(self) -> list[DataFile]:
        """The files the subjects pass reads (other engines read them with :meth:`ndjson_resources` /
        :meth:`document_resources` and keep lines with :meth:`enrolled_patient`)."""
        self.roster()
        return [f for f in self._files().data if _pass_of(f.rtype) in (_SUBJECTS, None)]

    def shared_resources(self, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], Resource]:
        """The shared resources (Medication, Organization, Location, Specimen) of ``wanted`` (type, id)."""
        return self._read_shared(wanted)

    def shared_records(self, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """The same as their JSON bytes (a fraction of the memory: the Spark engine ships them to every
        executor)."""
        return self._read_shared(wanted, as_bytes=True)

    # -- the passes ---------------------------------------------------------------------------------
    def _files(self) -> Layout:
        if self._layout is None:
            self._layout = discover(self.folder)
            for path, said in self._layout.count_mismatches:
                self.log.warn(said, resource=path, rule="manifest-count",
                              fix="export or download the file again; if the folder was filtered or edited on "
                                  "purpose, update or remove the manifest's count")
            skipped = [f for f in self._layout.data if _pass_of(f.rtype) == "none" and f.rtype != _OUTCOME]
            for f in skipped:
                self.log.count(f"ignored.file.{f.rtype}")
        return self._layout

    def _read_roster(self, identifiers: set[str]) -> RosterInput:
        """Studies and subjects first, then the Patient files, keeping only the Patients the subjects (or the
        roster CSV's identifiers) name; Patients in files of mixed types (Bundles) are all kept."""
        roster = RosterInput(base=export_base(self._files().manifest))
        first_seen: dict[str, tuple[bytes, str]] = {}  # Patient id -> (its content, file:line)
        self.export_errors()
        files = [f for f in self._files().data if f.rtype is None or f.rtype in ROSTER_TYPES]
        patient_files = [f for f in files if f.rtype == "Patient"]
        named: set[str] = set()
        linked: list[Resource] = []  # Patients with a Patient.link
        in_bundles: list[Resource] = []  # Organizations of the Bundles read here (a managing organisation)
        for f in [f for f in files if f.rtype != "Patient"] + patient_files:
            for n, entry, res, _raw in self._read_file(f, report=f.rtype is not None):
                rtype = res["resourceType"]
                if rtype not in ROSTER_TYPES:
                    if rtype == "Organization":
                        in_bundles.append(res)
                    continue
                self.log.count(f"read.{rtype}")
                if rtype == "ResearchStudy":
                    roster.studies.append(res)
                elif rtype == "ResearchSubject":
                    roster.subjects.append(res)
                    pid = ref_id((res.get("individual") or {}).get("reference"), "Patient", roster.base)
                    if pid:
                        named.add(pid)
                elif not isinstance(res.get("id"), str) or not res["id"]:
                    self.log.reject("Patient", None, "missing-id", "Patient without id",
                                    "export resources with ids", **_where(f, n, entry), raw=res)
                else:
                    self._note_patient(res, f"{f.name}:{n}" + (f"#{entry}" if entry else ""), first_seen, roster)
                    if res.get("link"):
                        linked.append(res)
                    self._all_patients.add(res["id"])
                    if f.rtype is None or res["id"] in named or (identifiers and identifier_matches(res, identifiers)):
                        roster.patients[res["id"]] = res
        # once every subject is known (a Bundle may hold a Patient before its ResearchSubject); not followed
        say_links(self.log, linked, named, roster.base, self._links_said)
        wanted = managing_organization_ids(roster)  # every Patient's: a local read costs next to nothing
        if wanted:
            roster.organizations = self._organizations(wanted, in_bundles)
        return roster

    def _organizations(self, wanted: set[str], in_bundles: list[Resource]) -> dict[str, Resource]:
        """The Organizations of ``wanted`` (ids), from the Organization files and ``in_bundles``: the latest
        version of each. A bad line is left to the pass that owns the file (reported once)."""
        candidates = itertools.chain(in_bundles, (res for f in self._files().data if f.rtype == "Organization"
                                                  for _n, _entry, res, _raw in self._read_file(f, report=False)))
        found: dict[str, Resource] = {}
        for res in candidates:
            oid = res.get("id")
            if res.get("resourceType") == "Organization" and oid in wanted \
                    and (oid not in found or version_key(res) > version_key(found[oid])):
                found[oid] = res
        return found

    @staticmethod
    def _note_patient(res: Resource, where: str, first_seen: dict[str, tuple[bytes, str]],
                      roster: RosterInput) -> None:
        """Record a Patient id read twice with differing content (the roster refuses its subject)."""
        content = orjson.dumps(res, option=orjson.OPT_SORT_KEYS)
        seen = first_seen.setdefault(res["id"], (content, where))
        if seen[0] != content:
            roster.duplicate_patients.setdefault(res["id"], [seen[1]]).append(where)

    @overload
    def _read_shared(self, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], Resource]: ...

    @overload
    def _read_shared(self, wanted: set[tuple[str, str]],
                     as_bytes: Literal[True]) -> dict[tuple[str, str], bytes]: ...

    def _read_shared(self, wanted: set[tuple[str, str]],
                     as_bytes: bool = False) -> dict[tuple[str, str], Resource] | dict[tuple[str, str], bytes]:
        """The wanted shared resources, parsed or (``as_bytes``: a fraction of the memory) as JSON bytes."""
        found: dict[tuple[str, str], Any] = {}
        if not wanted:
            return found
        # a resource read twice: its latest version, else the first (only the version is kept of each: as bytes,
        # a hospital's Specimens are a fraction of their parsed size)
        versions: dict[tuple[str, str], tuple[int, float]] = {}
        for _f, _n, _entry, res, raw in self._resources(_SHARED):
            key = (res["resourceType"], res.get("id"))
            if key in wanted:
                self.log.count(f"read.{key[0]}")
                at = (key[0], str(key[1]))
                version, first = version_key(res), versions.get(at)
                if first is not None and version <= first:
                    if version == first and res != (orjson.loads(found[at]) if as_bytes else found[at]):
                        self.log.warn(f"{at[0]}/{at[1]} is in the input twice with different content and the same "
                                      "version (meta.versionId, meta.lastUpdated): the first is used",
                                      resource=f"{at[0]}/{at[1]}", rule="same-id-different-content",
                                      fix="send each version with its meta.versionId or meta.lastUpdated, or only "
                                          "the current one")
                    continue
                versions[at] = version
                found[at] = res if not as_bytes else raw.strip() if raw is not None else orjson.dumps(res)
        return found

    def export_errors(self) -> None:
        """The export's OperationOutcome files (a manifest's ``error[]``): each one quarantined with its issues,
        so the run reports what the server could not export."""
        layout = self._files()
        files = layout.errors + [f for f in layout.data if f.rtype == _OUTCOME]
        for f in files:
            for n, entry, res, _raw in self._read_file(f, report=True):
                if res.get("resourceType") != _OUTCOME:
                    continue
                issues = [i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code")
                          for i in res.get("issue") or [] if isinstance(i, dict)]
                self.log.reject(_OUTCOME, res.get("id"), "export-error",
                                "the server reported an error exporting data: "
                                + "; ".join(str(i) for i in issues if i),
                                "ask the hospital to fix the export (data may be missing); the reason quotes the "
                                "OperationOutcome's issues", **_where(f, n, entry), raw=res)

    def _resources(self, which: str) -> Iterator[tuple[DataFile, int, int | None, Resource, bytes | None]]:
        """(file, line, Bundle entry, resource, raw line) of the files a pass reads; bad lines are quarantined by
        the pass that owns the file."""
        for f in self._files().data:
            owner = _pass_of(f.rtype)
            if owner is not None and owner != which:
                continue
            report = owner == which or (owner is None and which == _SUBJECTS)
            for n, entry, res, raw in self._read_file(f, report):
                yield f, n, entry, res, raw

    def _read_file(self, f: DataFile, report: bool) -> Iterator[tuple[int, int | None, Resource, bytes | None]]:
        if f.ndjson:
            yield from self.ndjson_resources(f, read_lines(f, self.folder), report)
        else:
            yield from self.document_resources(f, read_document(f, self.folder), report)

    def ndjson_resources(self, f: DataFile, lines: Iterable[tuple[int, bytes]],
                         report: bool) -> Iterator[tuple[int, int | None, Resource, bytes | None]]:
        """(line, Bundle entry, resource, raw line) of an NDJSON file's (line number, line) pairs."""
        for n, line in lines:
            if n == 1:  # (the raw line too: what is kept of it as bytes is parsed again later)
                line = without_bom(line)
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if report:
                    self.log.reject("unknown", None, "malformed-json", f"line is not JSON ({exc.msg})",
                                    "fix that line of the export (quarantine/ names the file and line; "
                                    "run --quarantine-full-copies to keep the line itself)", file=f.name, line=n,
                                    raw=line.decode("utf-8", "replace"))
                continue
            yield from self._document(doc, f, n, report, line)

    def document_resources(self, f: DataFile, data: bytes,
                           report: bool) -> Iterator[tuple[int, int | None, Resource, bytes | None]]:
        """The resources of a JSON file (a Bundle or one resource)."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            if report:
                self.log.reject("unknown", None, "malformed-json", f"file is not JSON ({exc.msg})",
                                "fix or remove the file", file=f.name)
            return
        yield from self._document(doc, f, None, report, None)

    def _document(self, doc: Any, f: DataFile, n: int | None, report: bool,
                  raw: bytes | None) -> Iterator[tuple[int, int | None, Resource, bytes | None]]:
        """A resource, or each resource of a Bundle (a JSON file or an NDJSON line holding a Bundle)."""
        if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
            if report:
                self.log.count("read.Bundle")
            entries: list[Any] = doc["entry"] if isinstance(doc.get("entry"), list) else []
            for entry in entries:
                res = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(res, dict) and "id" not in res and isinstance(res.get("resourceType"), str):
                    rid = id_from_full_url(entry.get("fullUrl"), res["resourceType"])
                    if rid is not None:
                        res["id"] = rid
            resolve_bundle_references(entries)
            for i, entry in enumerate(entries, start=1):
                res = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(res, dict):
                    if report and isinstance(entry, dict) and "request" not in entry:
                        self.log.reject("unknown", None, "not-a-resource", "Bundle entry without a resource",
                                        "export FHIR resources only", file=f.name, line=n, entry=i, raw=entry)
                    continue
                if not isinstance(res.get("resourceType"), str):
                    if report:
                        self.log.reject("unknown", None, "not-a-resource", "JSON object without resourceType",
                                        "export FHIR resources only", file=f.name, line=n, entry=i, raw=res)
                    continue
                if "id" not in res:
                    rid = id_from_full_url(entry.get("fullUrl"), res["resourceType"])
                    if rid is not None:
                        res["id"] = rid
                if not _readable_type(res["resourceType"]):
                    if report:
                        _unknown_type(self.log, res, _where(f, n or 0, i))
                    continue
                yield (n or 0), i, res, None
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
            if report:
                self.log.reject("unknown", None, "not-a-resource", "JSON object without resourceType",
                                "export FHIR resources only", file=f.name, line=n or 1, raw=doc)
            return
        if not _readable_type(doc["resourceType"]):
            if report:
                _unknown_type(self.log, doc, {"file": f.name, "line": n or 1})
            return
        yield (n or 1), None, doc, raw


def _readable_type(rtype: str) -> bool:
    """A resource type the reader passes on: R4's (those the adapter does not use are counted ``ignored``)."""
    return rtype in SUBJECT_TYPES or rtype in _KNOWN or is_r4_type(rtype)


def _unknown_type(log: RunLog, res: Resource, where: dict[str, Any]) -> None:
    """Quarantine a resource (an NDJSON line, a Bundle entry) whose resourceType is not an R4 type."""
    rtype = res["resourceType"]
    rid = res.get("id") if isinstance(res.get("id"), str) else None
    log.reject(rtype, rid, "unknown-resource-type", f"'{rtype}' is not a FHIR R4 resource type",
               "check the spelling of resourceType at that file and line" + (" (Bundle entry)" if "entry" in where
                                                                            else ""), **where, raw=res)


def line_references(raw: bytes, res: Resource) -> set[tuple[str, str]]:
    """:func:`~fhir_adapter.source.base.shared_references` of one NDJSON line's resource, read off the line's
    bytes (a regular expression instead of a walk through the parsed resource); a line with contained
    resources or JSON escapes is walked."""
    if b"\\" in raw or b'"contained"' in raw:
        return shared_references([res])
    return _line_references(raw)


def _line_references(raw: bytes) -> set[tuple[str, str]]:
    """:func:`line_references` of a line without contained resources or JSON escapes."""
    found: set[tuple[str, str]] = set()
    for ref in _REFERENCE.findall(raw):  # (each reference's value; those naming a shared type are read)
        if b"Specimen/" not in ref and b"Medication/" not in ref and b"Organization/" not in ref \
                and b"Location/" not in ref:
            continue
        value = ref.decode()
        if value.startswith("#"):
            continue
        parts = value.split("/_history")[0].split("/")
        if len(parts) >= 2 and parts[-2] in SHARED_TYPES and parts[-1]:
            found.add((parts[-2], parts[-1]))
    return found


def _where(f: DataFile, line: int, entry: int | None) -> dict[str, Any]:
    """Where a quarantined resource was: the file and line, and for a Bundle the entry (and the line of an
    NDJSON file holding the Bundle)."""
    if entry is None:
        return {"file": f.name, "line": line}
    return {"file": f.name, "entry": entry, **({"line": line} if f.ndjson else {})}


def _adapter_owned(resource: Resource) -> bool:
    """A result the adapter wrote (an identifier in its system): output, never input."""
    return any(isinstance(i, dict) and i.get("system") == SID_RESULT for i in resource.get("identifier") or [])


def parsed(x: Resource | bytes) -> Resource:
    """A record of :meth:`FileSource.subject_records` as the resource."""
    if isinstance(x, bytes):
        if x.startswith(_LOCATED):
            x = x.split(b"\x00", 3)[3]
        res: Resource = orjson.loads(x)
        return res
    return x


#: the start of a record of :meth:`FileSource.subject_records` that is an NDJSON line routed without parsing:
#: ``\0<file name>\0<resource type>\0<line number>\0<line>`` (a JSON line never starts with NUL)
_ROUTED = b"\x00"
#: the start of a record the subjects pass parsed and checked (a line, or a Bundle entry as JSON):
#: ``\1<file name>\0<line number or empty>\0<Bundle entry or empty>\0<JSON>``
_LOCATED = b"\x01"


def located_prefix(f: DataFile, line: int, entry: int | None) -> bytes:
    """The start of a checked record of file ``f`` (:data:`_LOCATED`): its line (not for a Bundle file) and
    Bundle entry."""
    where = _where(f, line, entry)
    return b"%b%b\x00%b\x00%b\x00" % (_LOCATED, f.name.encode(), str(where.get("line", "")).encode(),
                                       str(where.get("entry", "")).encode())


def routed_prefix(f: DataFile) -> bytes:
    """The start of the routed lines of file ``f``: ``routed_prefix(f) + b"%d\\0" % line_number + line``."""
    return b"%b%b\x00%b\x00" % (_ROUTED, f.name.encode(), str(f.rtype).encode())


class LineRouter:
    """The enrolled patient of an NDJSON line of a subject resource type, read off the line's bytes without
    parsing it: only for a line where the bytes leave no doubt — no JSON escapes (so every quote delimits a
    string), no contained resources, ``resourceType`` once and equal to the file's type, the patient element
    (``subject``/``patient``) once, an object holding one ``reference``. Anything else: None (the line is
    parsed). A routed line is parsed and checked where its subject is processed (:func:`checked_records`);
    the bytes cannot contradict the parse for any line the JSON parser accepts, and a line they do
    contradict (malformed JSON) is handled there as the parse would have handled it here."""

    def __init__(self, rtype: str, base: str | None) -> None:
        self.base = base
        self.type_key = re.compile(rb'"resourceType"\s*:\s*"' + re.escape(rtype.encode()) + rb'"')
        self.keys = [b'"%b"' % k.encode() for k in SUBJECT_TYPES[rtype]]
        self.element = re.compile(rb'"(?:' + b"|".join(re.escape(k.encode()) for k in SUBJECT_TYPES[rtype])
                                  + rb')"\s*:\s*\{([^{}]*)\}')
        self._patients: dict[bytes, str | None] = {}  # reference → patient id (ref_id)

    def patient(self, line: bytes) -> str | None:
        if b"\\" in line or b'"contained"' in line or line.count(b'"resourceType"') != 1 \
                or (line.count(self.keys[0]) if len(self.keys) == 1 else sum(line.count(k) for k in self.keys)) != 1 \
                or not self.type_key.search(line):
            return None
        m = self.element.search(line)
        if m is None or m.group(1).count(b'"reference"') != 1:
            return None
        ref = _REFERENCE.search(m.group(1))
        if ref is None:
            return None
        value = ref.group(1)
        pid = self._patients.get(value, "")
        if pid == "":
            pid = self._patients[value] = ref_id(value.decode(), "Patient", self.base)
        return pid


def checked_records(records: Iterable[Resource | bytes], patient_id: str, base: str | None,
                    log: RunLog, where: Locations | None = None) -> list[Resource]:
    """The resources of one subject's records (:meth:`FileSource.subject_records`), each routed line
    (:class:`LineRouter`) parsed and checked as the subjects pass checks a line: one that is not the
    patient's valid resource after all is quarantined or counted into ``log`` as it would have been there,
    and left out. ``where`` gets the file, line and Bundle entry of each resource read from a file (the first
    one of a type and id), for what the mapping quarantines (:meth:`RunLog.locate`)."""
    out: list[Resource] = []
    names: dict[bytes, str] = {}  # one str per file name, not one per record
    for x in records:
        if isinstance(x, bytes) and x.startswith(_LOCATED):
            name, line, entry, raw = x[1:].split(b"\x00", 3)
            res = orjson.loads(raw)
            out.append(res)
            if where is not None and isinstance(rid := res.get("id"), str):
                file = names.get(name) or names.setdefault(name, name.decode())
                where.setdefault((res["resourceType"], rid), (file, int(line) if line else None,
                                                              int(entry) if entry else None))
            continue
        if not (isinstance(x, bytes) and x.startswith(_ROUTED)):
            out.append(parsed(x))
            continue
        _, name, rtype, n, raw = x.split(b"\x00", 4)
        file = names.get(name) or names.setdefault(name, name.decode())
        try:
            res = orjson.loads(raw)
        except orjson.JSONDecodeError:
            res = None
        if isinstance(res, dict) and res.get("resourceType") == rtype.decode() and isinstance(res.get("id"), str) \
                and res["id"] and patient_id_of(res, base) == patient_id and not _adapter_owned(res):
            out.append(res)
            if where is not None:
                where.setdefault((res["resourceType"], res["id"]), (file, int(n), None))
            continue
        kept = _recheck(DataFile(path=file, name=file, rtype=rtype.decode(), ndjson=True), int(n), raw, patient_id,
                        base, log)
        out.extend(kept)
        if where is not None:
            for res in kept:
                where.setdefault((res["resourceType"], res["id"]), (file, int(n), None))
    return out


def _recheck(f: DataFile, n: int, raw: bytes, patient_id: str, base: str | None, log: RunLog) -> list[Resource]:
    """A routed line that failed the quick check: what the subjects pass does with it (kept, quarantined or
    counted in ``log``), less the ``read.<type>`` already counted when it was routed."""
    reader = FileSource.line_reader(set(), log)
    counts: Counter[str] = Counter({f"read.{f.rtype}": -1})
    kept = [res for n1, entry, res, _raw in reader.ndjson_resources(f, ((n, raw),), True)
            if reader.enrolled_patient(f, n1, entry, res, {patient_id}, counts, base) == patient_id]
    for key, value in counts.items():
        if value:
            log.count(key, value)
    return kept
