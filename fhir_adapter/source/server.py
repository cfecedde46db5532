"""A live FHIR R4 server as the source (read only).

Round trips, as few as the server allows:

* roster: ``ResearchStudy?identifier=<study id>``, then
  ``ResearchSubject?study=...&_include=ResearchSubject:individual`` (Patients come with their ResearchSubjects);
* per enrolled patient, one search per resource type the mapping needs — ``Observation?patient=..&combo-code=<the
  mapping's codes>`` (``combo-code``: a code in ``Observation.code`` or in a ``component.code``, e.g. blood
  pressure in a panel's components), ``Procedure`` (all of them: the infusion and the procedures the CRF's PR
  domain lists), the four medication types (with ``_include`` of their
  Medication) and ``AdverseEvent`` — each paged through ``next`` links with ``_count`` at the client's page
  size; or, with ``read_mode="batch"``, one batch Bundle holding those searches;
* incremental (``since``): per resource type, one search for up to ``PROBE_PATIENTS`` patients at a time
  (``patient=Patient/a,Patient/b,..&_lastUpdated=gt<since>&_elements=identifier,subject``) finds which patients
  changed; only those are read again in full (a full read also drops deleted resources). Type-level
  ``_history?_since=`` finds deletions where the server's CapabilityStatement offers ``history-type``.

The adapter's own results (an identifier in its system) are never input: a SLEDAI-2K result carries the
descriptor codes the mapping reads in its components, so they are dropped from every search, and a result
written by the last run does not count as a change.

Requests are counted per subject (the subject ID is the request label) in the client's stats; the roster,
incremental probes and capability look-up under ``roster``, ``incremental`` and ``metadata``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Collection, Coroutine, Iterator
from typing import Any, TypeVar

from fhir_adapter.fhir import FhirAuthError, FhirClient, FhirError, FhirHttpError
from fhir_adapter.fhir.errors import FhirServerUnavailable
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import (
    SHARED_TYPES,
    Resource,
    RosterInput,
    patient_id_of,
    ref_id,
    shared_references,
)
from fhir_adapter.study.load import Study
from fhir_adapter.terminology.codes import SID_RESULT

log = logging.getLogger(__name__)
T = TypeVar("T")

#: resource type -> (patient search parameter, extra parameters)
SUBJECT_SEARCHES: dict[str, tuple[str, dict[str, str]]] = {
    "Observation": ("patient", {}),
    "Procedure": ("patient", {}),
    "MedicationStatement": ("patient", {"_include": "MedicationStatement:medication"}),
    "MedicationRequest": ("patient", {"_include": "MedicationRequest:medication"}),
    "MedicationAdministration": ("patient", {"_include": "MedicationAdministration:medication"}),
    "MedicationDispense": ("patient", {"_include": "MedicationDispense:medication"}),
    "AdverseEvent": ("subject", {}),
    "Condition": ("patient", {}),
    "AllergyIntolerance": ("patient", {}),
    "Immunization": ("patient", {}),
}
#: characters of one code parameter; longer lists are split over several searches. 4000 keeps the URL of an
#: incremental probe (codes + PROBE_PATIENTS references) under the 8 KB request line most servers accept.
MAX_CODE_PARAM = 4000
PROBE_PATIENTS = 20  # patients per incremental probe search
NON_SUBJECT_LABELS = ("roster", "incremental", "metadata", "history", "bulk")


class ServerSource:
    """Reads from a FHIR server through a :class:`FhirClient` it drives on its own event loop."""

    def __init__(self, client: FhirClient, study: Study, log_: RunLog, *, since: dt.datetime | None = None,
                 read_mode: str = "search", loop: asyncio.AbstractEventLoop | None = None,
                 observation_code_param: str = "combo-code") -> None:
        self.client = client
        self.study = study
        self.log = log_
        self.since = since
        self.read_mode = read_mode
        #: how Observations are filtered: combo-code (code or component code: panels such as blood pressure),
        #: code (the Observation's own code only), or none (every Observation of the patient; the mapping
        #: picks what it needs) — for EHRs that do not support combo-code
        if observation_code_param not in ("combo-code", "code", "none"):
            raise ValueError(f"observation_code_param must be combo-code, code or none, not {observation_code_param!r}")
        self.observation_code_param = observation_code_param
        self.description = f"server:{client.base_url}"
        self._loop = loop or asyncio.new_event_loop()
        self._labels: dict[str, str] = {}
        self.unchanged: set[str] = set()
        self.deleted: dict[str, list[str]] = {}
        self._shared: dict[tuple[str, str], Resource | None] = {}
        #: patients whose reads failed after every retry (the pipeline reports them; the next run reads them)
        self.failed: dict[str, FhirError] = {}
        #: patients an incremental run may skip when unchanged (their last CRF is at hand); None: all
        self.reusable: set[str] | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def unchanged_subjects(self) -> set[str]:
        return set(self.unchanged)

    def request_stats(self) -> dict[str, Any]:
        """Requests to the server for the run report: total, per subject, and the shared ones by purpose."""
        st = self.client.stats
        per_subject = {k: v.requests for k, v in sorted(st.by_label.items()) if k not in NON_SUBJECT_LABELS}
        return {
            "total": st.total.requests, "retries": st.total.retries, "failures": st.total.failures,
            "shared": {k: st.label(k).requests for k in NON_SUBJECT_LABELS if k in st.by_label},
            "per_subject": per_subject,
            "mean_per_subject": round(sum(per_subject.values()) / len(per_subject), 2) if per_subject else 0,
        }

    def close(self) -> None:
        self.run(self.client.aclose())
        self._loop.close()

    @property
    def _base(self) -> str:
        """The server's FHIR base: absolute references are resolved only under it."""
        return str(self.client.base_url).rstrip("/")

    # -- roster ----------------------------------------------------------------------------------------
    def roster(self, patient_identifiers: Collection[str] = ()) -> RosterInput:
        return self.run(self._roster(sorted(set(patient_identifiers))))

    async def _roster(self, patient_identifiers: list[str] | None = None) -> RosterInput:
        info = self.study.info
        token = f"{info.identifier_system}|{info.id}" if info.identifier_system else info.id
        studies = await self.client.search_all("ResearchStudy", {"identifier": token}, label="roster")
        out = RosterInput(studies=list(studies), base=self._base)
        ids = [s["id"] for s in studies if "id" in s]
        if ids:
            try:
                parts = await self.client.search_all(
                    "ResearchStudy", {"partof": ",".join(f"ResearchStudy/{i}" for i in ids)}, label="roster")
            except FhirHttpError as exc:
                if exc.status != 400:
                    raise
                parts = []
                self.log.warn(f"the server does not search ResearchStudy by partof ({exc.status}): site "
                              "sub-studies are not read; their subjects must reference the main study",
                              rule="roster-partof")
            out.studies.extend(p for p in parts if p.get("id") not in ids)
        await self._patients_by_identifier(out, patient_identifiers or [])
        study_refs = ",".join(f"ResearchStudy/{s['id']}" for s in out.studies if "id" in s)
        if not study_refs:
            return out
        async for res in self.client.search(
            "ResearchSubject", {"study": study_refs, "_include": "ResearchSubject:individual"}, label="roster"
        ):
            if res.get("resourceType") == "ResearchSubject":
                out.subjects.append(res)
            elif res.get("resourceType") == "Patient" and isinstance(res.get("id"), str):
                out.patients[res["id"]] = res
        await self._missing_patients(out)
        return out

    async def _missing_patients(self, out: RosterInput, chunk: int = 50) -> None:
        """Patients the server did not ``_include`` (many EHRs ignore ``_include`` on ResearchSubject): read
        them with ``Patient?_id=a,b,...``, so a subject is never rejected as 'unknown patient' for that."""
        wanted = sorted({pid for rs in out.subjects
                         if (pid := ref_id((rs.get("individual") or {}).get("reference"), "Patient", self._base))
                         and pid not in out.patients})
        if wanted:
            self.log.count("roster.patients_read_without_include", len(wanted))
        for i in range(0, len(wanted), chunk):
            async for res in self.client.search("Patient", {"_id": ",".join(wanted[i:i + chunk])}, label="roster"):
                if res.get("resourceType") == "Patient" and isinstance(res.get("id"), str):
                    out.patients[res["id"]] = res

    async def _patients_by_identifier(self, out: RosterInput, identifiers: list[str], chunk: int = 50) -> None:
        """The Patients a site roster CSV names by identifier (``Patient?identifier=a,b,...``)."""
        for i in range(0, len(identifiers), chunk):
            async for res in self.client.search("Patient", {"identifier": ",".join(identifiers[i:i + chunk])},
                                                label="roster"):
                if res.get("resourceType") == "Patient" and isinstance(res.get("id"), str):
                    out.patients[res["id"]] = res

    # -- per subject -----------------------------------------------------------------------------------
    def label_subjects(self, labels: dict[str, str]) -> None:
        """Patient id -> subject ID, used as the request label (requests per subject in the report)."""
        self._labels = dict(labels)

    def _observation_code_params(self) -> list[str]:
        codes = sorted(f"{system}|{code}" for system, code in self.study.code_index)
        chunks: list[str] = []
        current: list[str] = []
        for c in codes:
            if current and len(",".join([*current, c])) > MAX_CODE_PARAM:
                chunks.append(",".join(current))
                current = []
            current.append(c)
        if current:
            chunks.append(",".join(current))
        return chunks

    def _searches(self, pid: str, extra: dict[str, str] | None = None) -> list[tuple[str, dict[str, str]]]:
        out: list[tuple[str, dict[str, str]]] = []
        for rtype, (param, params) in SUBJECT_SEARCHES.items():
            ref = f"Patient/{pid}"
            if rtype == "Observation" and self.observation_code_param == "none":
                out.append((rtype, {param: ref, **params, **(extra or {})}))
            elif rtype == "Observation":
                for codes in self._observation_code_params():
                    out.append((rtype, {param: ref, self.observation_code_param: codes, **params, **(extra or {})}))
            else:
                out.append((rtype, {param: ref, **params, **(extra or {})}))
        return out

    async def _read_subject(self, pid: str) -> list[Resource]:
        label = self._labels.get(pid, pid)
        if self.read_mode == "batch":
            return await self._read_subject_batch(pid, label)
        results = await asyncio.gather(*(self.client.search_all(t, p, label=label) for t, p in self._searches(pid)),
                                       return_exceptions=True)  # every search ends before the subject fails
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:  # the one that says most: the server is down, the credentials are rejected, else the first
            raise next((e for e in errors if isinstance(e, FhirServerUnavailable | FhirAuthError)), errors[0])
        found = [r for chunk in results if not isinstance(chunk, BaseException) for r in chunk]
        return await self._with_shared(self._input(found), label)

    async def _with_shared(self, resources: list[Resource], label: str) -> list[Resource]:
        """The Medication, Organization, Location and Specimen resources the subject's resources reference and
        the searches did not ``_include``: read by id (``Medication?_id=a,b``), once per run."""
        have = {(str(r.get("resourceType")), str(r.get("id"))) for r in resources}
        for r in resources:
            if r.get("resourceType") in SHARED_TYPES:
                self._shared[(str(r["resourceType"]), str(r.get("id")))] = r
        missing = sorted(k for k in shared_references(resources) if k not in have and k not in self._shared)
        for rtype in sorted({t for t, _ in missing}):
            ids = [i for t, i in missing if t == rtype]
            for i in ids:
                self._shared[(rtype, i)] = None
            found = await self.client.search_all(rtype, {"_id": ",".join(ids)}, label=label)
            for res in found:
                if res.get("resourceType") == rtype and isinstance(res.get("id"), str):
                    self._shared[(rtype, res["id"])] = res
        extra = [x for k in sorted(shared_references(resources)) if k not in have and (x := self._shared.get(k))]
        return resources + extra

    def _input(self, resources: list[Resource]) -> list[Resource]:
        """Deduplicated, without the adapter's own results."""
        out = []
        for r in _dedupe(resources):
            if _adapter_owned(r):
                self.log.count("read.skipped-adapter-results")
            else:
                out.append(r)
        return out

    async def _read_subject_batch(self, pid: str, label: str) -> list[Resource]:
        from urllib.parse import urlencode

        size = self.client.settings.page_size
        entries = [{"request": {"method": "GET", "url": f"{t}?{urlencode({**p, '_count': str(size)})}"}}
                   for t, p in self._searches(pid)]
        reply = await self.client.batch({"resourceType": "Bundle", "type": "batch", "entry": entries}, label=label)
        found: list[Resource] = []
        for entry, asked in zip(reply.get("entry") or [], self._searches(pid), strict=False):
            status = str((entry.get("response") or {}).get("status", ""))
            page = entry.get("resource") or {}
            if not status.startswith("2") or page.get("resourceType") != "Bundle":
                code = int(status[:3]) if status[:3].isdigit() else 0
                raise FhirHttpError(method="POST", url=f"{self.client.base_url} (batch: {asked[0]} for {label})",
                                    status=code, reason=status or "no status in the batch response")
            found.extend(e["resource"] for e in page.get("entry") or [] if isinstance(e.get("resource"), dict))
            if any(link.get("relation") == "next" for link in page.get("link") or []):
                # the rest of a long result: follow the server's paging from the first page's query
                rest = await self.client.search_all(asked[0], asked[1], label=label)
                found.extend(rest)
        return await self._with_shared(self._input(found), label)

    async def _changed(self, pids: set[str]) -> set[str]:
        """Patients with a resource updated (or deleted) after ``since``."""
        assert self.since is not None
        stamp = self.since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        changed: set[str] = set()
        ordered = sorted(pids)
        groups = [ordered[i:i + PROBE_PATIENTS] for i in range(0, len(ordered), PROBE_PATIENTS)]

        async def probe(rtype: str, params: dict[str, str]) -> None:
            async for res in self.client.search(rtype, params, label="incremental"):
                pid = patient_id_of(res, self._base)
                if pid in pids and not _adapter_owned(res):
                    changed.add(pid)

        probes = []
        for group in groups:
            refs = ",".join(f"Patient/{p}" for p in group)
            for rtype, params in self._searches(group[0]):
                param = SUBJECT_SEARCHES[rtype][0]
                query = {k: v for k, v in params.items() if k != "_include"}
                query.update({param: refs, "_lastUpdated": f"gt{stamp}", "_elements": "identifier,subject"})
                probes.append(probe(rtype, query))
        outcomes = await asyncio.gather(*probes, return_exceptions=True)  # every probe ends before one fails
        errors = [e for e in outcomes if isinstance(e, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, FhirServerUnavailable | FhirAuthError)), errors[0])
        history = await self._history_types()
        for rtype in SUBJECT_SEARCHES:
            if rtype not in history:
                continue
            try:
                async for entry_res in self._history(rtype, stamp):
                    pid = patient_id_of(entry_res, self._base)
                    if pid in pids:
                        changed.add(pid)
            except FhirHttpError as exc:
                self.log.warn(f"the server cannot list {rtype} deletions since {stamp} ({exc.status}); a deletion "
                              "alone is picked up by the next full run", rule="incremental")
        return changed

    async def _history_types(self) -> set[str]:
        """Resource types whose type-level history the server offers (CapabilityStatement ``history-type``)."""
        try:
            cap = await self.client.capabilities(label="metadata")
        except FhirHttpError:
            cap = {}
        offered = {str(r.get("type")) for rest in cap.get("rest") or [] for r in rest.get("resource") or []
                   if any(i.get("code") == "history-type" for i in r.get("interaction") or [])}
        missing = sorted(set(SUBJECT_SEARCHES) - offered)
        if missing:
            self.log.warn(f"the server offers no type-level history for {', '.join(missing)}: a deletion alone "
                          "(with no other change to that patient) is picked up by the next full run",
                          rule="incremental")
        return offered

    async def _history(self, rtype: str, stamp: str) -> Any:
        """Resources of ``rtype`` deleted since ``stamp`` (their last version before deletion, when given)."""
        async for page in self.client.search_bundles(rtype, {"_since": stamp}, label="history",
                                                        history=True):
            for entry in page.get("entry") or []:
                if (entry.get("request") or {}).get("method") == "DELETE":
                    rid = ref_id(entry["request"].get("url"), rtype, self._base)
                    self.deleted.setdefault(rtype, []).append(str(rid))
                    if isinstance(entry.get("resource"), dict):
                        yield entry["resource"]

    async def _read_many(self, pids: list[str]) -> list[list[Resource] | BaseException]:
        return list(await asyncio.gather(*(self._read_subject(p) for p in pids), return_exceptions=True))

    def subject_resources(self, patient_ids: set[str]) -> Iterator[tuple[str, list[Resource]]]:
        todo = set(patient_ids)
        if self.since is not None:
            changed = self.run(self._changed(todo))
            self.unchanged = todo - changed
            if self.reusable is not None:  # no CRF from the last run (e.g. it failed then): read in full
                self.unchanged &= self.reusable
            todo -= self.unchanged
            self.log.count("incremental.changed_subjects", len(todo))
            self.log.count("incremental.unchanged_subjects", len(self.unchanged))
        ordered = sorted(todo)
        chunk = max(1, self.client.settings.max_concurrency * 2)
        for i in range(0, len(ordered), chunk):
            part = ordered[i:i + chunk]
            results = self.run(self._read_many(part))
            for outcome in results:  # the server is down or the credentials are rejected: stop reading
                if isinstance(outcome, FhirServerUnavailable) or \
                        (isinstance(outcome, FhirAuthError) and not outcome.transient):
                    raise outcome
            for pid, resources in zip(part, results, strict=True):
                if isinstance(resources, FhirError):  # this subject only; the others go on
                    log.warning("reading %s failed: %s", self._labels.get(pid, pid), resources)
                    self.failed[pid] = resources
                    continue
                if isinstance(resources, BaseException):
                    raise resources
                for r in resources:
                    self.log.count(f"read.{r.get('resourceType')}")
                yield pid, resources


def _adapter_owned(resource: Resource) -> bool:
    """A result the adapter wrote (an identifier in its system): output, never input."""
    return any(i.get("system") == SID_RESULT for i in resource.get("identifier") or [] if isinstance(i, dict))


def _dedupe(resources: list[Resource]) -> list[Resource]:
    seen: set[tuple[str, str]] = set()
    out = []
    for r in resources:
        key = (str(r.get("resourceType")), str(r.get("id")))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out
