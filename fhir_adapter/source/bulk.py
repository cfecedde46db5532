"""A FHIR server read through a Bulk Data ``$export`` (``run --source URL --bulk``, or ``read_mode: bulk``).

* roster: as from the server's REST API (ResearchStudy, ResearchSubject and their Patients: a Patient-level
  export holds no ResearchStudy);
* the export: ``Group/[id]/$export`` when the study's Group is known (``bulk.group_id``, else the
  ResearchStudy's ``enrollment``), else ``Patient/$export`` — also when the server knows no such Group — whose
  other patients are dropped as the file source drops them; ``_type`` = the types the mapping reads (those the
  server's CapabilityStatement lists) plus Patient and the shared Medication/Organization/Location/Specimen;
  ``_typeFilter`` with the study's codes (the same filter as the REST searches), dropped when the server
  refuses it; a ``_type`` the server refuses (400 naming it) is dropped and reported;
* then the files are read as a folder (:class:`~fhir_adapter.source.files.FileSource`): same CRFs and results
  as the REST path;
* ``--since``: the export asks ``_since``; the patients it names are read again in full (through REST:
  an export since a time holds only the changed resources), and so are those whose CRF of the last run is not
  at hand (:attr:`reusable`: e.g. a patient enrolled since, whose data predate ``_since``), as the REST path
  reads them; the others are unchanged. An export with no files is a normal answer: nothing changed. The
  manifest's ``transactionTime`` is the next ``--since last``;
* ``--since`` and the manifest's ``deleted[]`` (the resources deleted since ``_since``, IG v2.0.0,
  :mod:`fhir_adapter.source.bulk_deletions`), by the REST path's rule
  (:mod:`fhir_adapter.source.server.deletion_subjects`): the subject whose last CRF (``last_crf``, ``OUT/crf``)
  names a deleted resource is read again in full; a deletion no CRF names is looked up in its instance history
  through REST (``[type]/[id]/_history``, at most ``client.max_deletion_lookups`` per run): an enrolled
  patient's has that subject read again, another patient's or an adapter result is ignored
  (``incremental.deletions_ignored``); a deletion whose history names no patient, more of them than the bound,
  a CRF or a ``deleted[]`` line the adapter cannot read makes every enrolled subject read again in full (warning
  ``incremental``): no CRF holding a deleted record is reused; counted as ``bulk.deleted`` in the run log and
  under ``server_requests.bulk.deleted``;
* the server's ``X-Progress`` while the export is made goes to :attr:`on_progress` (the run's progress display)
  once per change, else to the log at info level.

Files are kept under ``OUT/bulk/`` for audit (``bulk.keep_files``) or removed once read; an interrupted run
resumes the same job and does not download finished files again — when this run asks for the same export (server,
Group, ``_type``, ``_typeFilter``, ``_since``): another job is cancelled and a new export made
(docs/integrator-guide.md#bulk-resume). The server's answers are untrusted
(:meth:`~fhir_adapter.fhir.bulk.BulkExporter.check_url`: the URLs they name cannot take the token over plain http
or to another host than ``bulk.token_hosts`` allows); a manifest entry whose type is not FHIR R4 is quarantined
(``unknown-resource-type``), one of a type not asked for is a warning, and neither is downloaded.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fhir_adapter.fhir import FhirError
from fhir_adapter.fhir.bulk import (
    NOT_R4_TYPE,
    STATE_FILE,
    BulkExporter,
    BulkExportError,
    BulkOptions,
    Job,
    load_job,
    save_job,
    shown,
)
from fhir_adapter.fhir.settings import BulkSettings
from fhir_adapter.fhir.urls import redact_url
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import (
    SHARED_TYPES,
    SUBJECT_TYPES,
    Resource,
    RosterInput,
    SourceError,
    patient_id_of,
    ref_id,
)
from fhir_adapter.source.bulk_deletions import Ref, former_owners, read_deleted, shown_problems
from fhir_adapter.source.files import FileSource
from fhir_adapter.source.layout import discover, read_lines
from fhir_adapter.source.server import SUBJECT_SEARCHES, ServerSource
from fhir_adapter.source.server.deletion_subjects import DeletionContext, deletion_subjects
from fhir_adapter.source.server.incremental import since_stamp

log = logging.getLogger(__name__)

#: longest kick-off URL sent with _typeFilter (8 KB request lines are a common server limit)
MAX_KICKOFF_URL = 7500


def refused_type(types: Sequence[str], messages: Sequence[str]) -> str | None:
    """The resource type a refused kick-off names, of those asked for: a whole word in the server's messages
    (``Specimen``, not the ``Medication`` in ``MedicationRequest``); a type other than Patient before Patient
    ("Resource type Specimen is not supported for Patient level export" refuses Specimen), else the one
    named first; None when none is named."""
    where: dict[str, int] = {}
    for t in types:
        word = re.compile(rf"(?<![A-Za-z0-9]){re.escape(t)}(?![A-Za-z0-9])")
        found = [m.start() for text in messages if (m := word.search(text))]
        if found:
            where[t] = min(found)
    named = sorted(where, key=lambda t: (t == "Patient", where[t]))
    return named[0] if named else None


@dataclass(frozen=True)
class KickoffPlan:
    types: list[str]
    group: str | None
    filters: list[str]
    #: the first kick-off URL the plan sends
    asked: str


def same_kickoff(a: str, b: str) -> bool:
    """Two kick-off URLs ask for the same export: the same server, level (Group) and query parameters
    (``_type``, ``_since``, ``_typeFilter``), whatever their order."""
    sa, sb = urlsplit(a), urlsplit(b)
    return (sa.scheme, sa.netloc, sa.path.rstrip("/")) == (sb.scheme, sb.netloc, sb.path.rstrip("/")) and \
        sorted(parse_qsl(sa.query, keep_blank_values=True)) == sorted(parse_qsl(sb.query, keep_blank_values=True))


class BulkSource:
    def __init__(self, server: ServerSource, settings: BulkSettings, folder: Path, log: RunLog, *,
                 since: dt.datetime | None = None, exporter: BulkExporter | None = None,
                 last_crf: Callable[[str], Path] | None = None) -> None:
        self.server = server
        #: a subject ID's CRF of the last run (``OUT/crf/<name>.json``): whose a resource the export lists as
        #: deleted was; None: not known (a deletion then makes every subject read again)
        self.last_crf = last_crf
        self.settings = settings
        self.folder = Path(folder)
        self.log = log
        self.since = since
        #: where the downloaded files' subjects wait on disk when they do not fit in memory (FileSource.scratch)
        self.scratch: Path | None = None
        self.description = f"bulk:{server.client.base_url}"
        #: patients an incremental run may skip when unchanged (their last CRF is at hand); None: all
        self.reusable: set[str] | None = None
        #: shows the server's X-Progress while the export is made (the run's progress display); None: the log
        self.on_progress: Callable[[str], None] | None = None
        self._progress: str | None = None
        self.exporter = exporter or BulkExporter(server.client, BulkOptions(
            poll_limit_seconds=settings.poll_limit_seconds, max_retry_after_seconds=settings.max_retry_after_seconds,
            download_attempts=settings.download_attempts, max_file_bytes=settings.max_file_bytes,
            token_hosts=frozenset(settings.token_hosts)),
            on_progress=self._show_progress)
        self._studies: list[Resource] = []
        self._unchanged: set[str] = set()
        self.job: Job | None = None
        self.transaction_time: dt.datetime | None = None
        self._notes: dict[str, Any] = {}
        self._kickoffs = 0
        #: the patients' resources the export since the last run holds (type, id)
        self._exported: set[Ref] = set()
        self._labels: dict[str, str] = {}
        #: the downloaded export's manifest (local file names)
        self._local: dict[str, Any] = {}

    # -- the Source interface ---------------------------------------------------------------------
    def roster(self, patient_identifiers: Collection[str] = ()) -> RosterInput:
        roster = self.server.roster(patient_identifiers)
        self._studies = roster.studies
        return roster

    def label_subjects(self, labels: dict[str, str]) -> None:
        self._labels = dict(labels)
        self.server.label_subjects(labels)

    @property
    def failed(self) -> Mapping[str, Exception]:
        """The changed patients whose REST reads failed (an incremental run reads them from the server)."""
        return self.server.failed

    def unchanged_subjects(self) -> set[str]:
        return set(self._unchanged)

    def request_stats(self) -> dict[str, Any] | None:
        stats = self.server.request_stats()
        requests = dict(self.job.requests) if self.job else {}
        requests["kickoff"] = self._kickoffs  # every kick-off sent, refused ones included
        stats["bulk"] = {**requests, **self._notes}
        return stats

    def subject_resources(self, patient_ids: set[str]) -> Iterator[tuple[str, list[Resource]]]:
        self.server.run(self._export())
        if self.since is None:
            manifest = self.job.manifest if self.job is not None else None
            if manifest is not None and not manifest.get("output") and not manifest.get("error"):
                raise SourceError(
                    f"the server's Bulk export ({shown(redact_url(self.job.kickoff if self.job else ''), 300)}) "
                    "listed no file: it holds nothing of the types asked for the patients it covers — check "
                    "bulk.group_id (the Group's members) and that the server exports those types, or run without "
                    "--bulk")
            files = FileSource(self.folder, self.log)
            files.scratch = self.scratch
            yield from files.subject_resources(patient_ids)
        else:
            if self.job is not None and (self.job.manifest or {}).get("error"):
                # what the server could not export since the last run is reported as on a full export
                FileSource(self.folder, self.log).export_errors()
            changed, unattributed = self._patients_in_export()
            unchanged = set() if unattributed else patient_ids - changed
            if self.reusable is not None:  # no CRF from the last run (e.g. enrolled since): read in full
                unchanged &= self.reusable
            unchanged -= self._deletions(patient_ids, unchanged)
            moved, _ = former_owners(self._exported, unchanged, self._labels, self.last_crf)
            self.log.count("incremental.former_owner_subjects", len(moved))
            unchanged -= moved
            self._unchanged = unchanged
            todo = patient_ids - unchanged
            self.log.count("incremental.changed_subjects", len(todo))
            self.log.count("incremental.unchanged_subjects", len(unchanged))
            yield from self.server.subject_resources(todo)
        self._finish()

    def _show_progress(self, progress: str) -> None:
        """The server's X-Progress, shown once per change."""
        if progress == self._progress:
            return
        self._progress = progress
        if self.on_progress is not None:
            self.on_progress(progress)
        else:
            log.info("Bulk export at %s: %s", self.server.client.base_url, progress)

    # -- the export ---------------------------------------------------------------------------------
    def _group_id(self) -> str | None:
        if self.settings.group_id:
            return self.settings.group_id
        for study in self._studies:
            gid = ref_id((study.get("enrollment") or [{}])[0].get("reference"), "Group") \
                if study.get("enrollment") else None
            if gid:
                return gid
        return None

    async def _types(self) -> list[str]:
        wanted = ["Patient", *SUBJECT_TYPES, *SHARED_TYPES]
        try:
            cap = await self.server.client.capabilities(label="metadata")
        except FhirError:  # no CapabilityStatement: ask for every type
            return wanted
        listed = {str(r.get("type")) for rest in cap.get("rest") or [] for r in rest.get("resource") or []}
        if not listed:
            return wanted
        missing = [t for t in wanted if t not in listed]
        if missing:
            self._notes["types_not_on_server"] = missing
        return [t for t in wanted if t in listed]

    def _type_filters(self) -> list[str]:
        """One ``_typeFilter`` query per filtered type: the filters of the REST searches (codes)."""
        filters = []
        for rtype, params in self.server.plan.searches("PID"):
            query = {k: v for k, v in params.items()
                     if k not in (SUBJECT_SEARCHES[rtype][0], "_include")}
            if query:
                filters.append(f"{rtype}?{urlencode(query)}")
        return filters

    async def _export(self) -> None:
        plan = await self._plan()
        state = load_job(self.folder)
        if state and not state.get("done") and state.get("status_url"):
            saved = Job(kickoff=str(state["kickoff"]), status_url=str(state["status_url"]),
                        manifest=state.get("manifest"), asked=str(state.get("asked") or state["kickoff"]))
            if same_kickoff(str(saved.asked), plan.asked):
                self._notes["resumed"] = True
                try:
                    await self._complete(saved)
                    return
                except BulkExportError as exc:
                    if exc.status not in (404, 410):
                        raise
                    self.log.warn(f"the export job of the interrupted run is gone (HTTP {exc.status}): a new export "
                                  "is made", rule="bulk-export")
            else:
                await self._abandon(saved, plan.asked)
        if self.folder.exists():
            shutil.rmtree(self.folder)  # the files of an earlier, finished run
        await self._complete(await self._kickoff(plan))

    async def _abandon(self, saved: Job, asked: str) -> None:
        """The interrupted run's job exported something else than this run asks for (another ``_since``, Group,
        ``_type``, ``_typeFilter`` or server): its files would be read as this run's export (issue: a full run
        resuming an interrupted ``--since`` job read the changes as the whole EHR). It is cancelled on the server
        (``DELETE`` of its status URL; a refusal is a warning) and forgotten; this run kicks off its own."""
        shown = redact_url(saved.status_url or "")
        self._notes["abandoned_job"] = shown
        self.log.warn(f"the export job of the interrupted run ({shown}) was kicked off as "
                      f"{saved.asked}, "
                      f"but this run asks for {asked}: it is not resumed (its files are not this run's export); "
                      "cancelled on the server and a new export is made", rule="bulk-export")
        try:
            warning = await self.exporter.delete(saved)
        except BulkExportError as exc:  # a status URL the adapter must not send the token to: not cancelled
            warning = str(exc)
        if warning:
            self.log.warn(f"the abandoned export job could not be cancelled: {warning}", rule="bulk-export")

    async def _complete(self, job: Job) -> None:
        """Wait for the job (unless its manifest is known), download what is not down yet, delete the job. A job
        the server says failed is forgotten (the next run kicks off a new export)."""
        self.job = job
        save_job(self.folder, job)
        if job.manifest is None:
            try:
                await self.exporter.wait(job)
            except BulkExportError as exc:
                if exc.job_failed:
                    (self.folder / STATE_FILE).unlink(missing_ok=True)
                raise
            save_job(self.folder, job)
        assert job.manifest is not None
        local = await self.exporter.download(job, self.folder)
        self._local = local
        self._report_not_downloaded(local.get("not_downloaded") or [])
        if job.progress:
            self._notes["progress"] = job.progress[-1]
        stamp = job.manifest.get("transactionTime")
        if isinstance(stamp, str):
            try:
                self.transaction_time = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                self.transaction_time = None
        warning = await self.exporter.delete(job)
        if warning:
            self.log.warn(warning, rule="bulk-export")
        save_job(self.folder, job, deleted=warning is None)
        self.log.count("bulk.files", len(job.manifest.get("output") or []))

    def _report_not_downloaded(self, entries: list[dict[str, Any]]) -> None:
        """Manifest entries the exporter did not download: a type that is not FHIR R4 is quarantined (its data
        may be missing), a type the export did not ask for is a warning."""
        for e in entries:
            where = f"the export manifest's {e['list']}[{e['index']}] ({e['url']})"
            if e["reason"] == NOT_R4_TYPE:
                self.log.reject(e["type"], None, "unknown-resource-type",
                                f"{where} names the type {e['type']}, which is not a FHIR R4 resource type; the "
                                "file was not downloaded",
                                "ask the hospital to fix its Bulk export (the file's data is not read)",
                                file=f"{self.folder.name}/manifest.json")
            else:
                self.log.warn(f"{where} holds {e['type']}, which the export did not ask for (_type); not "
                              "downloaded", resource=e["type"], rule="bulk-export")
        if entries:
            self.log.count("bulk.files_not_downloaded", len(entries))

    async def _plan(self) -> KickoffPlan:
        """What this run's export asks for, before any fallback: the types, the Group (else Patient level), the
        ``_typeFilter`` queries; ``asked`` is the first kick-off URL it would send."""
        types = await self._types()
        group = self._group_id()
        filters = self._type_filters() if self.settings.type_filter else []
        path = f"Group/{group}/$export" if group else "Patient/$export"
        asked = self.exporter.kickoff_url(path, self._params(types, filters))
        return KickoffPlan(types, group, filters, asked)

    def _params(self, types: Sequence[str], filters: Sequence[str]) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = [("_type", ",".join(types))]
        if self.since is not None:
            params.append(("_since", since_stamp(self.since)))  # to the millisecond, as the REST probe
        params += [("_typeFilter", f) for f in filters]
        return params

    async def _kickoff(self, plan: KickoffPlan | None = None) -> Job:
        plan = plan or await self._plan()
        types, group, filters = list(plan.types), plan.group, list(plan.filters)
        paths = [f"Group/{group}/$export"] if group else []
        paths.append("Patient/$export")
        last: BulkExportError | None = None
        for path in paths:
            while True:
                job = Job(kickoff=self.exporter.kickoff_url(path, self._params(types, filters)), asked=plan.asked)
                if filters and len(job.kickoff) > MAX_KICKOFF_URL:
                    filters = []  # a request line most servers refuse: whole types instead
                    self._notes["type_filter_too_long"] = True
                    continue
                self._kickoffs += 1
                try:
                    await self.exporter.kickoff(job)
                    self._notes.update({"kickoff_path": path, "type_filter": bool(filters)})
                    return job
                except BulkExportError as exc:
                    last = exc
                    refused = refused_type(types, exc.diagnostics)
                    if exc.status == 400 and filters and any("_typeFilter" in d or "typeFilter" in d
                                                             for d in [*exc.diagnostics, str(exc)]):
                        filters = []  # _typeFilter unsupported: the mapping picks what it needs from _type
                        self.log.warn("the server does not support _typeFilter: exporting whole resource types",
                                      rule="bulk-export")
                        continue
                    if exc.status == 400 and refused and refused != "Patient":
                        types = [t for t in types if t != refused]
                        self.log.warn(f"the server refused to export {refused} ({'; '.join(exc.diagnostics)}); "
                                      "exporting without it", rule="bulk-export")
                        continue
                    if exc.status == 400 and filters:
                        filters = []
                        self.log.warn(f"the export was refused with _typeFilter ({'; '.join(exc.diagnostics)}); "
                                      "trying without it", rule="bulk-export")
                        continue
                    if path.startswith("Group/") and exc.status in (400, 404, 405, 501):
                        self.log.warn(f"{path} failed ({exc.status}: {'; '.join(exc.diagnostics)}); exporting "
                                      "with Patient/$export and keeping the enrolled patients only",
                                      rule="bulk-export")
                        break
                    raise
        assert last is not None
        raise last

    def _patients_in_export(self) -> tuple[set[str], bool]:
        """Patients any exported resource names (an export ``_since``: the patients with a change; an export
        with no output file: nobody changed), and whether some change cannot be given a patient: a line that is
        not JSON (quarantined ``malformed-json``, as a full run does) or a changed shared resource that names no
        patient (a Medication, Organization or Location any subject's records may name). Then every subject is
        read again in full (a warning says why), never a CRF that may be stale reused. A Bundle on a line is read
        entry by entry."""
        import orjson

        found: set[str] = set()
        if self.job is not None and self.job.manifest is not None and not self.job.manifest.get("output"):
            return found, False
        malformed = 0
        shared: set[str] = set()
        for f in discover(self.folder).data:
            for n, line in read_lines(f):
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    malformed += 1
                    self.log.reject("unknown", None, "malformed-json", f"line is not JSON ({exc.msg})",
                                    "fix that line of the export (quarantine/ names the file and line)",
                                    file=f.name, line=n)
                    continue
                entries = (doc.get("entry") or []) if isinstance(doc, dict) and doc.get("resourceType") == \
                    "Bundle" else [{"resource": doc}]
                for entry in entries:
                    res = entry.get("resource") if isinstance(entry, dict) else None
                    if not isinstance(res, dict):
                        continue
                    if (pid := patient_id_of(res)) is not None:  # a Specimen names its subject
                        found.add(pid)
                        if isinstance(res.get("id"), str):  # a CRF of another subject naming it was its owner's
                            self._exported.add((str(res.get("resourceType")), res["id"]))
                    elif res.get("resourceType") in SHARED_TYPES:
                        shared.add(f"{res.get('resourceType')}/{res.get('id')}")
        why = []
        if malformed:
            why.append(f"{malformed} line(s) of the export are not JSON (quarantined)")
        if shared:
            names = ", ".join(sorted(shared)[:3]) + (f" and {len(shared) - 3} more" if len(shared) > 3 else "")
            why.append(f"shared resource(s) changed ({names}) that any subject's records may name")
        if why:
            self.log.warn(f"the export since the last run: {'; '.join(why)}: every enrolled subject is read again "
                          "in full, no CRF of the last run is reused", rule="incremental")
        return found, bool(why)

    def _deletions(self, patient_ids: set[str], unchanged: set[str]) -> set[str]:
        """The subjects of ``unchanged`` to read again because of the export's ``deleted[]``: those whose last CRF
        or (through REST) instance history names a deleted resource, or all of them when a deletion cannot be
        attributed (:func:`~fhir_adapter.source.server.deletion_subjects.deletion_subjects`, as the REST path)."""
        names = [str(e["url"]) for e in self._local.get("deleted") or [] if isinstance(e, dict) and e.get("url")]
        if not names:
            return set()
        deletions = read_deleted(self.folder, names)
        since = self.since.isoformat(timespec="seconds") if self.since else "the last run"
        self.log.count("bulk.deleted", len(deletions.refs))
        self._notes["deleted"] = len(deletions.refs)
        problems = []
        if deletions.unreadable:
            problems.append(f"{len(deletions.unreadable)} entry(ies) of the export's deleted[] files could not be "
                            f"read ({shown_problems(deletions.unreadable)})")
        ctx = DeletionContext(self.server.client, self.log, self.server.base, patient_ids, self._labels,
                              self.last_crf, since)
        return self.server.run(deletion_subjects(ctx, deletions.refs, unchanged, problems,
                                                 f"the export since {since} lists {len(deletions.refs)} deleted "
                                                 "resource(s)"))

    def _finish(self) -> None:
        if self.job is not None:
            save_job(self.folder, self.job, done=True)
        if not self.settings.keep_files:
            shutil.rmtree(self.folder, ignore_errors=True)

    def close(self) -> None:
        self.server.close()

