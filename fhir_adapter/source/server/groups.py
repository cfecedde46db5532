"""Subjects read together: one search for many patients (``patient=Patient/a,Patient/b,…``), its answer split
by subject on the client.

A group holds as many patients as fit in one search URL (``client.max_get_url_length``) and
``patients_per_search``. Within the group, a resource type whose patients have many resources (Observations)
is searched for fewer patients at a time — as many as keep the answer on one page of ``client.page_size``
(learned from the answers so far), because servers page by running the search again. The group's Specimens are
searched by patient (:data:`SHARED_SEARCHES`) with the other searches, sized the same way: a separate search
costs a server less than ``_include=Observation:specimen``, which resolves the reference of every Observation
it returns. A server that does not answer that search (after the client's retries) is not asked it again in
the run. The shared resources the group's resources reference and no search returned are read once by id
(:mod:`.shared`); the Specimens of a patient that none of its resources references are not input.

A resource that refers to none of the patients searched for is reported (warning ``read-unassigned``) and
not read. A search that fails after its retries does not count toward the circuit breaker: its patients are
read again alone, so one patient's failing data fails that subject only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from fhir_adapter.fhir import FhirAuthError, FhirClient, FhirError, FhirHttpError
from fhir_adapter.fhir.errors import FhirServerUnavailable
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import SHARED_TYPES, Resource, patient_id_of, shared_references
from fhir_adapter.source.server.batch import batch_searches
from fhir_adapter.source.server.searches import SUBJECT_SEARCHES, Search, SearchPlan
from fhir_adapter.source.server.shared import SharedResources

log = logging.getLogger(__name__)

#: request label of the searches for several subjects (run report: ``server_requests.shared.subjects``)
LABEL = "subjects"
#: resource types with many resources per patient -> patients per search until answers show how many fit a page
#: (the other types: the whole group)
HEAVY_TYPES = {"Observation": 1, "Specimen": 10}
#: shared resources searched for by the group's patients (type -> patient search parameter), in the same round
#: as the subject searches; what they find waits in the run's cache of shared resources (:mod:`.shared`)
SHARED_SEARCHES = {"Specimen": "patient"}
#: URL characters kept for the base, the type and the other parameters of a search
URL_RESERVE = 400
#: share of a page a search is sized to fill (room for patients with more resources than the mean)
PAGE_FILL = 0.8

Outcome = list[Resource] | FhirError
Runner = Callable[[list[Search]], Awaitable[list[Outcome]]]


def group_size(pids: list[str], max_url: int, most: int) -> int:
    """Patients per group: at most ``most``, and as many as fit in a GET URL of ``max_url`` characters."""
    if not pids:
        return 1
    per_ref = max(len(quote(f"Patient/{p},", safe="")) for p in pids)
    return max(1, min(most, (max_url - URL_RESERVE) // per_ref))


@dataclass
class PageSizer:
    """Patients per search of each resource type, from the resources per patient seen so far."""

    page_size: int
    most: int
    _seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # type -> (resources, patients)

    def patients_per_search(self, rtype: str) -> int:
        resources, patients = self._seen.get(rtype, (0, 0))
        if patients == 0:
            return min(self.most, HEAVY_TYPES.get(rtype, self.most))
        if resources == 0:
            return self.most
        return max(1, min(self.most, int(self.page_size * PAGE_FILL * patients / resources)))

    def record(self, rtype: str, patients: int, resources: int) -> None:
        r, p = self._seen.get(rtype, (0, 0))
        self._seen[rtype] = (r + resources, p + patients)


class GroupReader:
    """Reads the resources of groups of patients with multi-patient searches."""

    def __init__(self, client: FhirClient, plan: SearchPlan, shared: SharedResources, log: RunLog, base: str, *,
                 batch: bool = False, most: int = 50) -> None:
        self.client = client
        self.plan = plan
        self.shared = shared
        self.log = log
        self.base = base
        self.batch = batch
        self.most = most
        self.sizer = PageSizer(client.settings.page_size or 100, most)
        #: shared searches (:data:`SHARED_SEARCHES`) the server refused, and why: not asked again
        self.refused: dict[str, str] = {}

    def groups(self, pids: list[str]) -> list[list[str]]:
        """``pids`` in groups of :func:`group_size` at most, as even as can be (no small group left over)."""
        size = group_size(pids, self.client.settings.max_get_url_length, self.most)
        n = -(-len(pids) // size)
        return [pids[len(pids) * i // n:len(pids) * (i + 1) // n] for i in range(n)]

    async def read(self, pids: list[str], label: str = LABEL) -> tuple[dict[str, list[Resource]], set[str]]:
        """Per patient of ``pids``, the resources its searches found (in search order, the adapter's results
        and duplicates still in), and the patients to read again alone (a search for them failed). The
        server being down or credentials rejected for good raise. ``label``: of the requests (the subject's
        own when the group is one patient)."""
        jobs: list[tuple[Search, list[str]]] = []
        for rtype in SUBJECT_SEARCHES:
            jobs.extend((s, part) for part in self._parts(rtype, pids) for s in self.plan.type_searches(rtype, part))
        shared_jobs: list[tuple[Search, list[str]]] = []
        if len(pids) > 1:  # one patient: the few Specimens its resources reference, by id
            for rtype, param in SHARED_SEARCHES.items():
                if rtype not in self.refused:
                    shared_jobs.extend(((rtype, {param: _refs(part)}), part) for part in self._parts(rtype, pids))
        outcomes = await self._run([s for s, _ in jobs + shared_jobs], label)
        found: dict[str, list[Resource]] = {p: [] for p in pids}
        alone: set[str] = set()
        for ((rtype, _), part), outcome in zip(jobs, outcomes[:len(jobs)], strict=True):
            if isinstance(outcome, FhirError):
                raise_if_fatal(outcome)
                alone.update(part)
                continue
            self._split(rtype, part, outcome, found)
        for ((rtype, _), part), outcome in zip(shared_jobs, outcomes[len(jobs):], strict=True):
            if isinstance(outcome, FhirError):  # read by id instead (below)
                raise_if_fatal(outcome)
                self._shared_search_failed(rtype, outcome)
                continue
            for res in outcome:
                if res.get("resourceType") in SHARED_TYPES:
                    self.shared.add(res)
            self.sizer.record(rtype, len(part), sum(r.get("resourceType") == rtype for r in outcome))
        try:
            await self.shared.fetch(self._shared_wanted(found), label, trips_breaker=False)
        except FhirError as exc:
            raise_if_fatal(exc)
            return {}, set(pids)
        return {p: r for p, r in found.items() if p not in alone}, alone

    def _parts(self, rtype: str, pids: list[str]) -> list[list[str]]:
        k = self.sizer.patients_per_search(rtype)
        return [pids[i:i + k] for i in range(0, len(pids), k)]

    def _shared_search_failed(self, rtype: str, exc: FhirError) -> None:
        """A shared search that failed: its resources are read by id; refused (4xx): not asked again."""
        self.log.count(f"read.{rtype}-search-failed")
        if isinstance(exc, FhirHttpError) and 400 <= exc.status < 500 and rtype not in self.refused:
            self.refused[rtype] = str(exc)
            log.info("the server refused a %s search by patient (%s): %ss are read by id", rtype, exc, rtype)

    async def _run(self, searches: list[Search], label: str) -> list[Outcome]:
        if self.batch:
            try:
                return await batch_searches(self.client, searches, label, trips_breaker=False)
            except FhirError as exc:
                return [exc] * len(searches)

        async def one(rtype: str, params: dict[str, str]) -> Outcome:
            try:
                return await self.client.search_all(rtype, params, label=label, trips_breaker=False)
            except FhirError as exc:
                return exc

        return list(await asyncio.gather(*(one(t, p) for t, p in searches)))

    def _split(self, rtype: str, part: list[str], resources: list[Resource], found: dict[str, list[Resource]]) -> None:
        """The answer of one search for ``part``, to its patients; included shared resources to the cache."""
        matched = 0
        for res in resources:
            if res.get("resourceType") in SHARED_TYPES:  # _include (Medication)
                self.shared.add(res)
                continue
            pid = patient_id_of(res, self.base)
            if pid in found and pid in part:
                found[pid].append(res)
                matched += 1
                continue
            what = f"{res.get('resourceType')}/{res.get('id')}"
            self.log.count("read.unassigned")
            self.log.warn(f"{what} came back from a {rtype} search for {len(part)} patient(s) but refers to none of "
                          f"them ({_patient_ref(res)}); not read. Check the server's {SUBJECT_SEARCHES[rtype][0]} "
                          "search parameter, or set patients_per_search: 1", resource=what, rule="read-unassigned")
        self.sizer.record(rtype, len(part), matched)

    def _shared_wanted(self, found: dict[str, list[Resource]]) -> list[tuple[str, str]]:
        return sorted(set().union(*(shared_references(r) for r in found.values())) if found else set())


def _refs(pids: list[str]) -> str:
    return ",".join(f"Patient/{p}" for p in pids)


def _patient_ref(resource: Resource) -> str:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and ref.get("reference"):
            return f"{key}: {ref['reference']}"
    return "no subject or patient reference"


def raise_if_fatal(exc: FhirError) -> None:
    """The server is down, or the credentials are rejected for good: the run stops."""
    if isinstance(exc, FhirServerUnavailable) or (isinstance(exc, FhirAuthError) and not exc.transient):
        raise exc
