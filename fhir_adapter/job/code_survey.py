"""``fhir-adapter check --source URL --codes``: which Observation codes a FHIR server holds for the study's
enrolled subjects that no study item maps — a site's local lab codes, before they are added to a site overlay.

A run against a server cannot list them: it asks the server for the study's codes only (or drops the others an
unfiltered search returns), so ``coverage.unmapped_codes`` of a server run stays empty. This survey reads every
Observation of each enrolled subject unfiltered (``Observation?patient=…``, as ``observation_code_param: none``
does, requests counted under ``codes``) and names each one none of whose codes the study maps the way a run on an
export folder does (:func:`fhir_adapter.mapping.observations.unmapped_code`: its first coding, else its text),
over the statuses the run reads. The adapter's own results are not input and are left out. Nothing is written.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from fhir_adapter.fhir import FhirClient, FhirError
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.observations import USED_STATUSES, unmapped_code
from fhir_adapter.source.server.groups import raise_if_fatal
from fhir_adapter.source.server.searches import SearchPlan, adapter_owned
from fhir_adapter.study.load import Study

LABEL = "codes"
#: the statuses whose Observations a run names in ``unmapped_codes``: those it reads, and cancelled orders (read
#: for their NOT DONE rows); entered-in-error and unknown statuses are not data
COUNTED_STATUSES = frozenset({*USED_STATUSES, "cancelled"})


@dataclass
class UnmappedCode:
    """One code no study item maps: how many Observations and subjects carry it, and a display to recognise it."""

    name: str  # system|code, or (code.text only)|text
    observations: int = 0
    subjects: set[str] = field(default_factory=set)
    display: str = ""


@dataclass
class CodeSurvey:
    subjects: int
    observations: int  # Observations read (the statuses counted), mapped or not
    unmapped: list[UnmappedCode]  # most frequent first, then by name
    not_read: dict[str, str] = field(default_factory=dict)  # subject ID -> why its Observations could not be read

    def lines(self) -> list[str]:
        """The survey as ``check`` prints it: a summary line, then one line per code."""
        head = (f"{self.observations} Observations of {self.subjects - len(self.not_read)} enrolled subjects read "
                f"unfiltered: {len(self.unmapped)} codes no study item maps")
        if self.not_read:
            first = next(iter(sorted(self.not_read.items())))
            head += (f" ({len(self.not_read)} subject(s) not read: {', '.join(sorted(self.not_read))}; "
                     f"{first[0]}: {first[1][:200]})")
        if not self.unmapped:
            return [head]
        out = [head + " (add them to a site overlay: mappings/README.md)",
               f"  {'observations':>12}  {'subjects':>8}  code  (display)"]
        out += [f"  {c.observations:>12}  {len(c.subjects):>8}  {c.name}" + (f"  ({c.display})" if c.display else "")
                for c in self.unmapped]
        return out


def _display(code: object) -> str:
    """The first coding's display, else the code's text (one line, at most 80 characters)."""
    if not isinstance(code, dict):
        return ""
    coding = next((c for c in code.get("coding") or [] if isinstance(c, dict)), {})
    text = coding.get("display") or code.get("text")
    return " ".join(text.split())[:80] if isinstance(text, str) else ""


async def survey_codes(client: FhirClient, study: Study, log: RunLog, roster_csv: Path | None = None) -> CodeSurvey:
    """Every Observation of the study's enrolled subjects on the server (those of the site's roster CSV too, when
    it enrols from one), read unfiltered, and the codes among them no study item maps. Subjects are read a few at
    a time (the client's ``max_concurrency``), each one's Observations counted and let go; a subject whose read
    fails after the retries is named, the others go on (the server down or the credentials refused: raised)."""
    from fhir_adapter.job.preflight import study_roster

    _, roster = await study_roster(client, study, log, roster_csv)
    plan = SearchPlan(study, "none")
    pids = sorted(roster.enrolled)
    codes: dict[str, UnmappedCode] = {}
    survey = CodeSurvey(subjects=len(pids), observations=0, unmapped=[])

    async def observations(pid: str) -> list[dict[str, object]]:
        found: list[dict[str, object]] = []
        for rtype, params in plan.type_searches("Observation", pid):
            found += await client.search_all(rtype, params, label=LABEL)
        return found

    step = max(1, client.settings.max_concurrency)
    for i in range(0, len(pids), step):
        part = pids[i:i + step]
        read = await asyncio.gather(*(observations(pid) for pid in part), return_exceptions=True)
        for pid, found in zip(part, read, strict=True):
            subject_id = roster.enrolled[pid].subject_id
            if isinstance(found, BaseException):
                if not isinstance(found, FhirError):
                    raise found
                raise_if_fatal(found)
                survey.not_read[subject_id] = str(found)
                continue
            seen: set[str] = set()
            for obs in found:
                oid = str(obs.get("id"))
                if (obs.get("resourceType") != "Observation" or oid in seen or adapter_owned(obs)
                        or obs.get("status") not in COUNTED_STATUSES):
                    continue
                seen.add(oid)
                survey.observations += 1
                name = unmapped_code(obs, study.code_index)
                if name is None:
                    continue
                entry = codes.setdefault(name, UnmappedCode(name, display=_display(obs.get("code"))))
                entry.observations += 1
                entry.subjects.add(subject_id)
    # the order of the run report's unmapped_codes (fhir_adapter/export/coverage.py): count, system, code
    survey.unmapped = sorted(codes.values(), key=lambda c: (-c.observations, *c.name.rpartition("|")[::2]))
    return survey
