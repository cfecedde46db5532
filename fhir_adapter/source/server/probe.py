"""``observation_code_param: auto``: whether the server answers the study's Observations faster filtered by
code (``combo-code=<the study's codes>``) or unfiltered (every Observation of the patient, filtered on the
client), timed once per run on the first patients to read.

A timed pair: the patients' Observations searched both ways, as a run reads them (``_include`` and page size
too); a second pair when the two are within :data:`CLEAR_FACTOR` of each other, the faster of each way
counting. The unfiltered way wins ties: it asks the server for less work per resource. A server that answers
the ``combo-code`` search with an error (after the client's retries) is read unfiltered. Requests are counted
under ``probe``; ``fhir-adapter check --source URL`` prints the same timing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fhir_adapter.fhir import FhirClient, FhirHttpError
from fhir_adapter.source.server.searches import SearchPlan

LABEL = "probe"
#: the two ways compared
FILTERED, UNFILTERED = "combo-code", "none"
#: a pair whose two times differ by more than this factor decides at once
CLEAR_FACTOR = 2.0
#: patients searched together in the timed searches
PROBE_PATIENTS = 1


@dataclass
class SearchTiming:
    """The outcome of a probe: the way chosen, each way's best time (seconds) and resources, or why not timed."""

    chosen: str
    patients: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    resources: dict[str, int] = field(default_factory=dict)
    refused: str | None = None  # the server's answer to the filtered search, when it refused it

    def report(self) -> dict[str, Any]:
        """For the run report (``server_requests.observation_search``)."""
        return {"observation_code_param": self.chosen, "chosen_by": "probe", "patients": len(self.patients),
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}, "resources": dict(self.resources),
                **({"filtered_refused": self.refused} if self.refused else {})}

    def summary(self) -> str:
        """One line: what was timed and what was chosen."""
        if self.refused:
            return f"the server refused combo-code searches ({self.refused}): unfiltered (none)"
        times = ", ".join(f"{'filtered (combo-code)' if k == FILTERED else 'unfiltered (none)'} "
                          f"{self.seconds[k]:.3f} s for {self.resources[k]} resources" for k in (FILTERED, UNFILTERED))
        return f"{times}: {self.chosen} is faster"


async def time_observation_searches(client: FhirClient, plan: SearchPlan, pids: list[str]) -> SearchTiming:
    """Time the study's Observation searches of ``pids`` filtered and unfiltered; the faster way is chosen."""
    best: dict[str, float] = {}
    found: dict[str, int] = {}

    async def timed(way: str) -> None:
        start = time.perf_counter()
        n = 0
        for rtype, params in plan.type_searches("Observation", pids, code_param=way):
            n += len(await client.search_all(rtype, params, label=LABEL, trips_breaker=False))
        seconds = time.perf_counter() - start
        best[way] = min(best.get(way, seconds), seconds)
        found[way] = n

    for attempt in range(2):
        await timed(UNFILTERED)
        try:
            await timed(FILTERED)
        except FhirHttpError as exc:  # refused (or failing after the retries): the unfiltered search works
            return SearchTiming(UNFILTERED, list(pids), dict(best), dict(found), refused=f"HTTP {exc.status}")
        fast, slow = sorted((best[FILTERED], best[UNFILTERED]))
        if attempt == 0 and slow > CLEAR_FACTOR * fast:
            break
    chosen = UNFILTERED if best[UNFILTERED] <= best[FILTERED] else FILTERED
    return SearchTiming(chosen, list(pids), dict(best), dict(found))
