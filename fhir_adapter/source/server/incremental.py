"""Which patients changed since the last run (``--since``).

Per resource type, one search for up to :data:`PROBE_PATIENTS` patients at a time
(``patient=Patient/a,Patient/b,..&_lastUpdated=ge<since>&_elements=identifier,subject``, ``since`` to the
millisecond: :func:`since_stamp`) finds the patients with an updated resource; only those are read again in full
(a full read also drops deleted resources). A result the adapter wrote in the last run does not count as a
change. Changes that leave a subject's own records as they were count too: its Patient or ResearchSubject
updated (:func:`updated_in_roster`, from the roster the run read), a Specimen of its, a Medication its records
name; and a subject whose last CRF names a record found changed under another patient (moved between patients)
is read again (:func:`~fhir_adapter.source.bulk_deletions.former_owners`). Requests are counted under
``incremental``, ``metadata`` and ``history``.

A deleted resource is in no search: deletions are read from type-level ``[type]/_history?_since=`` where the
server's CapabilityStatement offers ``history-type`` (elsewhere a warning ``incremental`` says a deletion alone
waits for the next full run). A DELETE entry of a history Bundle has ``request.method`` ``DELETE`` and
``request.url`` and normally no resource (FHIR R4 http.html#history; HAPI writes them so):

* an entry that does carry the deleted resource (its last version) names its patient, who counts as changed;
* one without is attributed as the Bulk path attributes the manifest's ``deleted[]`` (one rule for both,
  :mod:`.deletion_subjects`): the subject whose last CRF (``last_crf``, ``OUT/crf``) names the
  deleted Type/id is read again in full;
* a deletion no CRF names (a resource the mapping did not use, another patient's, the adapter's own result —
  type-level history lists the whole server's) is looked up in its instance history ``[type]/[id]/_history``
  (:mod:`.deletion_owners`, at most ``client.max_deletion_lookups`` per run): a version naming an enrolled
  patient has that subject read again in full; one of a patient not enrolled, or an adapter result, is ignored
  (``incremental.deletions_ignored``);
* a deletion whose history names no patient (none readable, the read failing, a shared resource), more of them
  than ``client.max_deletion_lookups``, a CRF that cannot be read, or a DELETE entry naming no Type/id makes
  every subject read again in full (warning ``incremental`` saying why): no CRF holding a deleted record is
  reused.

Counted as ``incremental.deleted`` (the deletions listed), ``incremental.deletion_lookups`` (the instance
histories read) and ``incremental.deletion_subjects`` (the subjects read again for deletions alone).

The type-level history is read for its updates too: a record listed updated under a patient who is not enrolled
(moved out of the trial's patients) has its former owner, the subject whose last CRF names it, read again. A
Specimen probe the server refuses (4xx), a server that declares no Specimen or Medication search, or a
medication record type without a ``medication`` search is warned of (``incremental``): a change of that kind
alone waits for the next full run.

A probe for many patients that fails after its retries does not count toward the circuit breaker: it is asked
again per patient (counted under that subject, and toward the breaker), as a full run reads a failing group's
patients alone. A patient whose own probe still fails is :attr:`ChangeProbe.failed`: that subject alone is not
processed (the next run reads it in full, its CRF being gone); the others go on. A probe the server answers 400
for patients alone too, and for no patient otherwise, is a search it does not offer on that type
(``_lastUpdated``, ``_elements``): that type is not asked again, and every patient whose changes it could not say
is read in full (warning ``incremental``, counted ``incremental.refused_subjects``); a 400 where others' were
answered, or another 4xx for one patient (403, 404, 410), fails that patient alone.
The server being down (the breaker opens) or the credentials rejected for good still stop the run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from fhir_adapter.fhir import FhirAuthError, FhirClient, FhirError, FhirHttpError
from fhir_adapter.fhir.capability import interactions, resource_entry, searchable
from fhir_adapter.fhir.errors import FhirServerUnavailable
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import MEDICATION_TYPES, Resource, RosterInput, patient_id_of, ref_id
from fhir_adapter.source.bulk_deletions import Ref, deleted_ref, former_owners, shown_problems, shown_refs
from fhir_adapter.source.server.deletion_subjects import DeletionContext, deletion_subjects
from fhir_adapter.source.server.groups import raise_if_fatal
from fhir_adapter.source.server.searches import SUBJECT_SEARCHES, SearchPlan, adapter_owned

log = logging.getLogger(__name__)

PROBE_PATIENTS = 20  # patients per incremental probe search
SPECIMEN = "Specimen"


def _refusal(exc: FhirHttpError) -> bool:
    """The server refuses the search itself (4xx other than authentication and rate limits)."""
    return 400 <= exc.status < 500 and exc.status not in (401, 429)


def since_floor(since: dt.datetime) -> dt.datetime:
    """``since`` in UTC, cut down to the millisecond: the instant the probes search from."""
    utc = since.astimezone(dt.UTC)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def since_stamp(since: dt.datetime) -> str:
    """``since`` as the probes send it (``_lastUpdated=ge…``, history ``_since=…``): to the millisecond, with
    ``ge`` — a server compares at the precision given, so a time cut to the second with ``gt`` would miss the
    rest of that second (a change made after the last run started, in the second it started); a change of that
    very millisecond is read again, never missed."""
    return since_floor(since).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def updated_in_roster(roster: RosterInput, pids: set[str], since: dt.datetime, base: str) -> set[str]:
    """Patients of ``pids`` whose Patient, ResearchSubject or the ResearchStudy it enrols them in (as the roster
    read them) was updated at or after ``since`` (to the millisecond), or carries no ``meta.lastUpdated`` to tell:
    their CRF's demographics, arm, participation dates, site and investigator come from those and are read
    again."""
    floor = since_floor(since)
    out: set[str] = set()

    def updated(res: Resource) -> bool:
        if adapter_owned(res):  # made by the adapter from study.yaml and the site roster CSV (the run checks it)
            return False
        stamp = (res.get("meta") or {}).get("lastUpdated") if isinstance(res.get("meta"), dict) else None
        try:
            when = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        except ValueError:
            return True  # no readable lastUpdated: not known to be unchanged
        # a server that gives the second only: an update in the second the last run started may be after it
        return when.tzinfo is None or when >= (floor if "." in str(stamp) else floor.replace(microsecond=0))

    for pid in pids:
        if (patient := roster.patients.get(pid)) is not None and updated(patient):
            out.add(pid)
    studies = {str(st.get("id")) for st in roster.studies if updated(st)}  # its site, investigator: every subject's
    for rs in roster.subjects:
        individual = ref_id((rs.get("individual") or {}).get("reference"), "Patient", base)
        study = ref_id((rs.get("study") or {}).get("reference"), "ResearchStudy", base)
        if individual in pids and (updated(rs) or study in studies):
            out.add(individual)
    return out


def first_error(outcomes: list[Any]) -> BaseException | None:
    """The failure that says most of gathered outcomes: the server is down, the credentials are rejected, else
    the first one (None when none failed)."""
    errors = [e for e in outcomes if isinstance(e, BaseException)]
    if not errors:
        return None
    return next((e for e in errors if isinstance(e, FhirServerUnavailable | FhirAuthError)), errors[0])


class ChangeProbe:
    """Finds the patients changed since ``since``; :attr:`deleted` collects the deletions seen."""

    def __init__(self, client: FhirClient, plan: SearchPlan, log: RunLog, base: str, since: dt.datetime,
                 labels: dict[str, str] | None = None, last_crf: Callable[[str], Path] | None = None) -> None:
        self.client = client
        self.plan = plan
        self.log = log
        self.base = base
        self.since = since
        #: every deletion the server's history lists since ``since``
        self.deleted: set[Ref] = set()
        #: those listed without the deleted resource: whose they were is read from the last CRFs
        self.bare: set[Ref] = set()
        #: DELETE entries naming no Type/id (where: why)
        self.unreadable: list[str] = []
        #: the resources the type-level history lists created or updated since (type, id): whoever they belong to
        self.updated: set[Ref] = set()
        #: a subject ID's CRF of the last run (``OUT/crf/<name>.json``); None: not known (a deletion listed
        #: without its resource then makes every subject read again)
        self.last_crf = last_crf
        #: patient id -> subject ID, the request label of a patient's own probes
        self.labels = dict(labels or {})
        #: patients whose own probe failed after its retries (patient id -> why): not read, reported
        self.failed: dict[str, FhirError] = {}
        #: resource types whose change search the server refuses (400 for a single patient too; a Specimen probe:
        #: any 4xx for a group) -> the status
        self.refused: dict[str, int] = {}
        #: patients whose changes could not be asked for (a refused change search): read in full
        self.unknown: set[str] = set()
        #: resource types a change probe was answered for (a 400 for one patient is then about that patient)
        self.answered: set[str] = set()
        #: per resource type, the patients whose own probe the server answered 400 (and why)
        self.bad_request: dict[str, dict[str, FhirError]] = {}

    async def changed(self, pids: set[str], roster: RosterInput | None = None) -> set[str]:
        """Patients of ``pids`` with a resource updated (or deleted) at or after ``since`` — also their Patient
        or ResearchSubject (``roster``, read by this run), a Specimen of theirs, a Medication their records name,
        and a resource their last CRF names that now belongs to another patient; those whose probe failed are
        in :attr:`failed` instead."""
        stamp = since_stamp(self.since)
        changed: set[str] = set(updated_in_roster(roster, pids, self.since, self.base)) if roster else set()
        #: the resources found changed (their type and id): a CRF of another subject naming one was its owner's
        found: set[Ref] = set()
        ordered = sorted(pids)
        groups = [ordered[i:i + PROBE_PATIENTS] for i in range(0, len(ordered), PROBE_PATIENTS)]

        async def probe(rtype: str, params: dict[str, str], label: str, trips_breaker: bool) -> None:
            async for res in self.client.search(rtype, params, label=label, trips_breaker=trips_breaker):
                pid = patient_id_of(res, self.base)
                if pid in pids and not adapter_owned(res):
                    changed.add(pid)
                    if isinstance(res.get("id"), str):
                        found.add((str(res.get("resourceType")), res["id"]))
            self.answered.add(rtype)

        async def probe_group(rtype: str, params: dict[str, str], group: list[str]) -> None:
            if rtype in self.refused:  # refused for a patient alone already: not asked again
                self._not_asked(rtype, group)
                return
            if len(group) == 1:
                await self._per_patient(rtype, params, group, probe)
                return
            try:
                await probe(rtype, params, "incremental", False)
            except FhirError as exc:
                raise_if_fatal(exc)
                log.info("a %s change probe for %d patients failed (%s): asked again per patient", rtype,
                         len(group), exc)
                await self._per_patient(rtype, params, group, probe)

        cap = await self._capabilities()
        # a Specimen of theirs (fasting, site, condition): a change leaves their records' lastUpdated as it was
        specimens = searchable(cap, "Specimen", ("patient", "_lastUpdated"))
        if not specimens:
            self.log.warn("the server declares no Specimen search by patient and _lastUpdated: a Specimen change "
                          "alone is picked up by the next full run", rule="incremental")

        async def specimen_group(params: dict[str, str], group: list[str]) -> None:
            """A Specimen probe: a server that refuses it (4xx) is warned of once — a full run reads Specimens
            by id then (groups.py) — never a subject's failure nor a reason to read one in full; the server
            failing otherwise: as the others."""
            if SPECIMEN in self.refused:
                return
            try:
                await probe(SPECIMEN, params, "incremental", False)
            except FhirError as exc:
                raise_if_fatal(exc)
                if not isinstance(exc, FhirHttpError) or not _refusal(exc):  # as the others: again per patient
                    log.info("a Specimen change probe for %d patients failed (%s): asked again per patient",
                             len(group), exc)
                    await self._per_patient(SPECIMEN, params, group, probe)
                else:
                    self.refused.setdefault(SPECIMEN, exc.status)

        probes: list[Coroutine[Any, Any, None]] = []
        for group in groups:
            for rtype, params in self.plan.searches(group):
                query = {k: v for k, v in params.items() if k != "_include"}
                query.update({"_lastUpdated": f"ge{stamp}", "_elements": "identifier,subject"})
                probes.append(probe_group(rtype, query, group))
            if specimens:
                probes.append(specimen_group({"patient": ",".join(f"Patient/{p}" for p in group),
                                              "_lastUpdated": f"ge{stamp}", "_elements": "identifier,subject"},
                                             group))
        error = first_error(await asyncio.gather(*probes, return_exceptions=True))  # every probe ends first
        if error is not None:
            raise error
        self._settle_bad_requests()
        for rtype, status in sorted(self.refused.items()):
            if rtype == SPECIMEN:
                self.log.warn(f"the server refuses the Specimen change search ({status}): a Specimen change alone "
                              "is picked up by the next full run", rule="incremental")
            else:
                self.log.warn(f"the server refuses the {rtype} change search ({status}): the subjects whose "
                              f"{rtype} changes it could not say are read in full (`check --source` lists the "
                              "search parameters the server declares)", rule="incremental")
        if self.unknown:
            self.log.count("incremental.refused_subjects", len(self.unknown - set(self.failed)))
            changed |= self.unknown - set(self.failed)
        changed |= await self._medication_users(cap, pids, stamp)
        history = self._history_types(cap)
        for rtype in SUBJECT_SEARCHES:
            if rtype not in history:
                continue
            try:
                async for entry_res in self._history(rtype, stamp):
                    pid = patient_id_of(entry_res, self.base)
                    if pid in pids:
                        changed.add(pid)
            except FhirHttpError as exc:
                self.log.warn(f"the server cannot list {rtype} deletions since {stamp} ({exc.status}); a deletion "
                              "alone is picked up by the next full run", rule="incremental")
        if history:
            self.log.count("incremental.deleted", len(self.deleted))
        # a record found changed under another patient — also one the history lists updated under a patient who
        # is not enrolled (a record moved out of the trial's patients): its former owner's CRF names it
        changed |= self._former_owners(found | self.updated, pids - changed)
        return changed | await self._deletion_subjects(pids, changed, stamp)

    async def _medication_users(self, cap: dict[str, Any], pids: set[str], stamp: str) -> set[str]:
        """Patients of ``pids`` whose medication records name a Medication updated since ``stamp`` (its code or
        strength: the drug, the steroid dose); a Medication names no patient, and its change leaves their
        records' lastUpdated as it was. A search that keeps failing has every subject read again in full."""
        if not searchable(cap, "Medication", ("_lastUpdated",)):
            self.log.warn("the server declares no Medication search by _lastUpdated: a Medication change alone is "
                          "picked up by the next full run", rule="incremental")
            return set()
        users: set[str] = set()
        types = [t for t in MEDICATION_TYPES if searchable(cap, t, ("medication",))]
        if len(types) < len(MEDICATION_TYPES):
            self.log.warn(f"the server declares no search by medication on "
                          f"{', '.join(t for t in MEDICATION_TYPES if t not in types)}: a Medication change alone "
                          "is picked up there by the next full run", rule="incremental")
        try:
            meds = [str(m["id"]) async for m in self.client.search(
                "Medication", {"_lastUpdated": f"ge{stamp}", "_elements": "id"}, label="incremental")
                if isinstance(m.get("id"), str)]
            for i in range(0, len(meds), PROBE_PATIENTS):
                refs = ",".join(f"Medication/{m}" for m in meds[i:i + PROBE_PATIENTS])
                for rtype in types:
                    async for res in self.client.search(rtype, {"medication": refs, "_elements": "subject"},
                                                        label="incremental"):
                        if (pid := patient_id_of(res, self.base)) in pids:
                            users.add(pid)
        except FhirError as exc:
            raise_if_fatal(exc)
            self.log.warn(f"finding the records that name a Medication changed since {stamp} failed ({exc}): every "
                          "subject is read again in full", rule="incremental")
            return set(pids)
        return users

    def _former_owners(self, found: set[Ref], unchanged: set[str]) -> set[str]:
        """Patients of ``unchanged`` whose last CRF names a resource found changed under another patient: a
        record moved between patients (corrected in the EHR) leaves its former owner's CRF stale otherwise."""
        again, named = former_owners(found, unchanged, self.labels, self.last_crf)
        for pid, refs in sorted(named.items()):
            log.info("%s: read again in full: its last CRF holds %s, changed since %s under another patient",
                     self.labels.get(pid, pid), shown_refs(refs), self.since)
        self.log.count("incremental.former_owner_subjects", len(again))
        return again

    async def _deletion_subjects(self, pids: set[str], changed: set[str], stamp: str) -> set[str]:
        """The patients of ``pids`` not otherwise ``changed`` to read again because of a deletion listed without
        its resource (:func:`.deletion_subjects.deletion_subjects`)."""
        if not self.bare and not self.unreadable:
            return set()
        problems = []
        if self.unreadable:
            problems.append(f"{len(self.unreadable)} DELETE entry(ies) of the server's history name no Type/id "
                            f"({shown_problems(self.unreadable)})")
        ctx = DeletionContext(self.client, self.log, self.base, pids, self.labels, self.last_crf, stamp)
        return await deletion_subjects(ctx, self.bare, pids - changed, problems,
                                       f"the server's history lists {len(self.bare) + len(self.unreadable)} "
                                       f"deletion(s) since {stamp} without the deleted resource")

    async def _per_patient(self, rtype: str, params: dict[str, str], group: list[str],
                           probe: Callable[[str, dict[str, str], str, bool], Awaitable[None]]) -> None:
        """The probe of a group that failed, once per patient of ``group``; a patient whose probe fails is
        :attr:`failed` (the server down or the credentials rejected for good: raised). A probe the server
        answers 400 Bad Request for patients alone, and never answers for any, is a search it does not offer
        (``_lastUpdated`` or ``_elements`` on that type): once two patients' are refused so, the type is not asked
        for others again (:attr:`refused`) and their changes are unknown, so they are read in full
        (:attr:`unknown`) — but a Specimen change alone waits for the next full run, as when the group's Specimen
        probe is refused. A 400 where the same search was answered for others, or another 4xx (403 for one
        patient's records, 404 or 410 for a patient merged or gone), is that patient's failure
        (:meth:`_settle_bad_requests`)."""
        param = SUBJECT_SEARCHES[rtype][0] if rtype in SUBJECT_SEARCHES else "patient"  # Specimen

        async def one(pid: str) -> None:
            if rtype in self.refused:
                self._not_asked(rtype, [pid])
                return
            try:
                await probe(rtype, {**params, param: f"Patient/{pid}"}, self.labels.get(pid, pid), True)
            except FhirError as exc:
                raise_if_fatal(exc)
                if isinstance(exc, FhirHttpError) and exc.status == 400:  # settled once every probe has ended
                    bad = self.bad_request.setdefault(rtype, {})
                    bad[pid] = exc
                    if len(bad) >= 2 and rtype not in self.answered:  # not asked again meanwhile
                        self.refused.setdefault(rtype, exc.status)
                else:
                    self.failed.setdefault(pid, exc)

        error = first_error(await asyncio.gather(*(one(p) for p in group if p not in self.failed),
                                                 return_exceptions=True))
        if error is not None:
            raise error

    def _settle_bad_requests(self) -> None:
        """The patients whose own probe was answered 400: where the same search was answered for others, the 400
        is about that patient (a failure, as another 4xx); where it never was, the server does not offer it —
        those patients are read in full, and the type is refused."""
        for rtype, bad in sorted(self.bad_request.items()):
            if rtype in self.answered:
                self.refused.pop(rtype, None)
                for pid, exc in bad.items():
                    self.failed.setdefault(pid, exc)
            else:
                self.refused.setdefault(rtype, 400)
                self._not_asked(rtype, list(bad))

    def _not_asked(self, rtype: str, pids: list[str]) -> None:
        """Patients whose ``rtype`` changes the server would not say (a refused search): read in full — but for
        a Specimen, whose change alone waits for the next full run."""
        if rtype != SPECIMEN:
            self.unknown.update(pids)

    async def _capabilities(self) -> dict[str, Any]:
        """The server's CapabilityStatement (empty when it cannot be read)."""
        try:
            return await self.client.capabilities(label="metadata")
        except FhirHttpError:
            return {}

    def _history_types(self, cap: dict[str, Any]) -> set[str]:
        """Resource types whose type-level history the server offers (CapabilityStatement ``history-type``)."""
        offered = {t for t in SUBJECT_SEARCHES if "history-type" in interactions(resource_entry(cap, t))}
        missing = sorted(set(SUBJECT_SEARCHES) - offered)
        if missing:
            self.log.warn(f"the server offers no type-level history for {', '.join(missing)}: a deletion alone "
                          "(with no other change to that patient) is picked up by the next full run",
                          rule="incremental")
        return offered

    async def _history(self, rtype: str, stamp: str) -> AsyncIterator[Resource]:
        """Resources of ``rtype`` deleted since ``stamp`` that the history gives (their last version); a DELETE
        entry without the resource goes to :attr:`bare` (or :attr:`unreadable`)."""
        async for page in self.client.search_bundles(rtype, {"_since": stamp}, label="history", history=True):
            for n, entry in enumerate(page.get("entry") or [], start=1):
                request = entry.get("request") if isinstance(entry, dict) else None
                if not isinstance(request, dict):
                    continue
                if request.get("method") != "DELETE":
                    res = entry.get("resource")
                    if isinstance(res, dict) and isinstance(res.get("id"), str) and not adapter_owned(res):
                        self.updated.add((str(res.get("resourceType") or rtype), res["id"]))
                    continue
                ref = deleted_ref(request.get("url")) or deleted_ref(entry.get("fullUrl"))
                if ref is not None:
                    self.deleted.add(ref)
                if isinstance(entry.get("resource"), dict):
                    yield entry["resource"]
                elif ref is None:
                    self.unreadable.append(f"{rtype}/_history entry {n}: {str(request.get('url'))[:80]!r}")
                else:
                    self.bare.add(ref)
