"""ServerSource: a live FHIR R4 server as the source (read only), driven on its own event loop.

The roster (:mod:`.roster`), then per enrolled patient the searches of :mod:`.searches` — each paged through
``next`` links with ``_count`` at the client's page size; or, with ``read_mode="batch"``, one batch Bundle
holding those searches (:mod:`.batch`) — and the shared resources they reference (:mod:`.shared`).
Incremental runs (``since``) read only the patients :mod:`.incremental` finds changed. With
``observation_code_param="auto"`` the first read times filtered and unfiltered Observation searches once
(:mod:`.probe`) and reads with the faster.

Requests are counted per subject (the subject ID is the request label) in the client's stats; the roster,
incremental probes, capability look-up and the timed Observation searches under ``roster``, ``incremental``,
``metadata`` and ``probe``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Collection, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from fhir_adapter.fhir import FhirAuthError, FhirClient, FhirError
from fhir_adapter.fhir.errors import FhirServerUnavailable
from fhir_adapter.fhir.server_clock import ClockOffset, clock_warnings
from fhir_adapter.fhir.urls import redact_url
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import Resource, RosterInput
from fhir_adapter.source.server.batch import batch_search
from fhir_adapter.source.server.groups import LABEL as GROUP_LABEL
from fhir_adapter.source.server.groups import GroupReader
from fhir_adapter.source.server.incremental import ChangeProbe, first_error
from fhir_adapter.source.server.probe import LABEL as PROBE_LABEL
from fhir_adapter.source.server.probe import PROBE_PATIENTS, SearchTiming, time_observation_searches
from fhir_adapter.source.server.roster import read_roster
from fhir_adapter.source.server.searches import SearchPlan, input_resources
from fhir_adapter.source.server.shared import SharedResources
from fhir_adapter.study.load import Study

log = logging.getLogger(__name__)
T = TypeVar("T")

NON_SUBJECT_LABELS = ("roster", "incremental", "metadata", "history", "bulk", PROBE_LABEL, GROUP_LABEL)


class ServerSource:
    """Reads from a FHIR server through a :class:`FhirClient` it drives on its own event loop."""

    def __init__(self, client: FhirClient, study: Study, log_: RunLog, *, since: dt.datetime | None = None,
                 read_mode: str = "search", loop: asyncio.AbstractEventLoop | None = None,
                 observation_code_param: str = "combo-code", patients_per_search: int = 1,
                 last_crf: Callable[[str], Path] | None = None) -> None:
        self.client = client
        self.study = study
        self.log = log_
        self.since = since
        self.read_mode = read_mode
        self.plan = SearchPlan(study, observation_code_param)
        self.description = f"server:{redact_url(client.base_url)}"
        self._loop = loop or asyncio.new_event_loop()
        self._labels: dict[str, str] = {}
        self.unchanged: set[str] = set()
        self.shared = SharedResources(client)
        #: more than 1: patients are read in groups by multi-patient searches (:mod:`.groups`)
        self.patients_per_search = patients_per_search
        self.groups = GroupReader(client, self.plan, self.shared, log_, self.base, batch=read_mode == "batch",
                                  most=patients_per_search)
        self._read: set[str] = set()
        self._clock_said: set[str] = set()  # kinds of server-clock warnings said
        self._reads_done = False
        self._read_clock: ClockOffset | None = None
        #: patients whose reads failed after every retry (the pipeline reports them; the next run reads them)
        self.failed: dict[str, FhirError] = {}
        #: patients an incremental run may skip when unchanged (their last CRF is at hand); None: all
        self.reusable: set[str] | None = None
        self.scratch: Path | None = None  # nothing of a subject is written to disk while it is read
        #: what the roster read (an incremental run reads a subject whose Patient or ResearchSubject changed)
        self._roster: RosterInput | None = None
        #: how ``auto`` was settled (None: not ``auto``, or nothing read yet)
        self.timing: SearchTiming | None = None
        self._probe_failed: str | None = None
        #: a subject ID's CRF of the last run (``OUT/crf/<name>.json``): whose a resource deleted since was
        #: (:mod:`.incremental`); None: not known
        self.last_crf = last_crf

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def unchanged_subjects(self) -> set[str]:
        return set(self.unchanged)

    def request_stats(self) -> dict[str, Any]:
        """Requests to the server for the run report: total, per subject (the requests for that subject alone),
        the shared ones by purpose (``subjects``: the searches for several subjects at once), and their mean per
        subject read or written (a subject's own requests plus an even share of the ``subjects`` ones)."""
        st = self.client.stats
        per_subject = {k: v.requests for k, v in sorted(st.by_label.items()) if k not in NON_SUBJECT_LABELS}
        subjects = len(set(per_subject) | self._read)
        together = st.label(GROUP_LABEL).requests
        return {
            "total": st.total.requests, "retries": st.total.retries, "failures": st.total.failures,
            "shared": {k: st.label(k).requests for k in NON_SUBJECT_LABELS if k in st.by_label},
            "per_subject": per_subject,
            "mean_per_subject": round((sum(per_subject.values()) + together) / subjects, 2) if subjects else 0,
            "observation_search": self._observation_search(),
        }

    def _observation_search(self) -> dict[str, Any]:
        """How Observations were searched: the setting, else what ``auto`` chose and why."""
        if self.timing is not None:
            return self.timing.report()
        if self._probe_failed is not None:
            return {"observation_code_param": self.plan.code_param, "chosen_by": "probe failed",
                    "error": self._probe_failed}
        return {"observation_code_param": self.plan.observation_code_param, "chosen_by": "setting"}

    def _settle_code_param(self, pids: list[str]) -> None:
        """``auto``: time the Observation searches of the first patients (:mod:`.probe`) and keep the faster
        way; when the timing fails (not for the server being down), combo-code."""
        if self.plan.observation_code_param != "auto" or not pids:
            return
        try:
            self.timing = self.run(time_observation_searches(self.client, self.plan, pids[:PROBE_PATIENTS]))
        except FhirError as exc:
            if isinstance(exc, FhirServerUnavailable) or (isinstance(exc, FhirAuthError) and not exc.transient):
                raise
            self._probe_failed = str(exc)
            self.plan.choose("combo-code")
            self.log.warn(f"timing the Observation searches failed ({exc}); reading them with combo-code. Set "
                          "observation_code_param in the --config file to skip the timing", rule="search-probe")
            return
        self.plan.choose(self.timing.chosen)
        log.info("Observation searches: %s", self.timing.summary())

    def close(self) -> None:
        self.run(self.client.aclose())
        self._loop.close()

    @property
    def base(self) -> str:
        """The server's FHIR base: absolute references are resolved only under it."""
        return str(self.client.base_url).rstrip("/")

    def roster(self, patient_identifiers: Collection[str] = ()) -> RosterInput:
        self._roster = self.run(read_roster(self.client, self.study, self.log, self.base,
                                            sorted(set(patient_identifiers))))
        self._say_clock()  # known from the roster's answers
        return self._roster

    def _say_clock(self) -> None:
        """The server's clock behind this machine's, or its answers disagreeing, in the run report — each once;
        after the roster, and again once the subjects are read (a disagreement may come later in the run)."""
        for kind, said in clock_warnings(self.client.clock_offset).items():
            if kind not in self._clock_said:
                self._clock_said.add(kind)
                log.warning(said)
                self.log.warn(said, rule="server-clock",
                              fix="synchronise the server's and this machine's clocks (NTP)")

    @property
    def read_clock(self) -> ClockOffset | None:
        """The server's clock as the reads found it: the base of the next ``--since last`` (writes after the
        reads have no say in it)."""
        return self._read_clock if self._reads_done else self.client.clock_offset

    def label_subjects(self, labels: dict[str, str]) -> None:
        """Patient id -> subject ID, used as the request label (requests per subject in the report)."""
        self._labels = dict(labels)

    async def read_subject(self, pid: str) -> list[Resource]:
        """One patient's resources: its searches (one batch with ``read_mode="batch"``), then the shared
        resources they reference."""
        label = self._labels.get(pid, pid)
        if self.read_mode == "batch":
            found = await batch_search(self.client, self.plan.searches(pid), label)
        else:
            results = await asyncio.gather(*(self.client.search_all(t, p, label=label)
                                             for t, p in self.plan.searches(pid)),
                                           return_exceptions=True)  # every search ends before the subject fails
            error = first_error(list(results))
            if error is not None:
                raise error
            found = [r for chunk in results if not isinstance(chunk, BaseException) for r in chunk]
        return await self.shared.complete(input_resources(found, self.log, self.plan), label)

    async def _read_many(self, pids: list[str]) -> list[list[Resource] | BaseException]:
        return list(await asyncio.gather(*(self.read_subject(p) for p in pids), return_exceptions=True))

    def subject_resources(self, patient_ids: set[str]) -> Iterator[tuple[str, list[Resource]]]:
        todo = set(patient_ids)
        self._settle_code_param(sorted(todo))
        if self.since is not None:
            probe = ChangeProbe(self.client, self.plan, self.log, self.base, self.since, self._labels,
                                last_crf=self.last_crf)
            changed = self.run(probe.changed(todo, self._roster))
            for pid, error in probe.failed.items():  # this subject only; the others go on
                log.warning("probing %s for changes failed: %s", self._labels.get(pid, pid), error)
                self.failed[pid] = error
                self._read.add(self._labels.get(pid, pid))
            todo -= set(probe.failed)
            self.unchanged = todo - changed
            if self.reusable is not None:  # no CRF from the last run (e.g. it failed then): read in full
                self.unchanged &= self.reusable
            todo -= self.unchanged
            self.log.count("incremental.changed_subjects", len(todo))
            self.log.count("incremental.unchanged_subjects", len(self.unchanged))
        ordered = sorted(todo)
        if self.patients_per_search > 1:
            parts = self.groups.groups(ordered)
        else:
            chunk = max(1, self.client.settings.max_concurrency * 2)
            parts = [ordered[i:i + chunk] for i in range(0, len(ordered), chunk)]
        for part in parts:
            results = self.run(self._read_part(part))
            for outcome in results:  # the server is down or the credentials are rejected: stop reading
                if isinstance(outcome, FhirServerUnavailable) or \
                        (isinstance(outcome, FhirAuthError) and not outcome.transient):
                    raise outcome
            for pid, resources in zip(part, results, strict=True):
                self._read.add(self._labels.get(pid, pid))
                if isinstance(resources, FhirError):  # this subject only; the others go on
                    log.warning("reading %s failed: %s", self._labels.get(pid, pid), resources)
                    self.failed[pid] = resources
                    continue
                if isinstance(resources, BaseException):
                    raise resources
                for r in resources:
                    self.log.count(f"read.{r.get('resourceType')}")
                yield pid, resources
        self._say_clock()  # every read's answer is in: the run report says what the base of --since last is
        self._read_clock, self._reads_done = self.client.clock_offset, True

    async def _read_part(self, pids: list[str]) -> list[list[Resource] | BaseException]:
        """The resources of each patient of ``pids`` (or why they could not be read), in that order."""
        if self.patients_per_search <= 1:
            return await self._read_many(pids)
        found, alone = await self.groups.read(pids, self._labels.get(pids[0], pids[0]) if len(pids) == 1
                                              else GROUP_LABEL)
        done: dict[str, list[Resource] | BaseException] = {}
        for pid, resources in found.items():
            done[pid] = await self.shared.complete(input_resources(resources, self.log, self.plan),
                                                   self._labels.get(pid, pid))
        ordered_alone = [p for p in pids if p in alone]
        for pid, outcome in zip(ordered_alone, await self._read_many(ordered_alone), strict=True):
            done[pid] = outcome
        return [done[p] for p in pids]
