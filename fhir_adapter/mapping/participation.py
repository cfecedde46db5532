"""A subject's participation: the span in which visits and results may lie (``schedule.yaml`` →
``participation``; docs/clinical-rules.md#participation).

* start = consent (ResearchSubject.period.start, which a roster CSV's consent_date fills), else the start of
  the earliest visit window (the screening window) counted from Day 1;
* end = end of study (ResearchSubject.period.end), else the end of the latest visit window.

Findings dated before the start stay in the CRF without a visit (rules that look back — baseline, the
SLEDAI-2K window, the steroid dose in force — may read them) and are counted ``participation.before-start``.
Findings dated after the end are taken out of the CRF and counted ``participation.after-end``: they never
become visits or results.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import date_of_study_day


@dataclass(frozen=True)
class Span:
    start: dt.date | None
    end: dt.date | None
    start_basis: str | None = None
    end_basis: str | None = None

    def position(self, d: dt.date | None) -> str | None:
        """``before``, ``after`` or None (inside, or undated)."""
        if d is None:
            return None
        if self.start is not None and d < self.start:
            return "before"
        if self.end is not None and d > self.end:
            return "after"
        return None


def participation(e: Enrollee, study: Study) -> Span:
    """The subject's participation span; open-ended where neither the EHR nor the schedule can tell."""
    rule = study.schedule.participation
    windows = study.schedule.visits
    start: tuple[dt.date | None, str | None] = (None, None)
    end: tuple[dt.date | None, str | None] = (None, None)
    for basis in rule.start:
        d = e.consent_date if basis == "consent" else (
            date_of_study_day(min(v.window[0] for v in windows), e.day1) if e.day1 else None)
        if d is not None:
            start = (d, basis)
            break
    for last in rule.end:
        d = e.end_of_study if last == "end_of_study" else (
            date_of_study_day(max(v.window[1] for v in windows), e.day1) if e.day1 else None)
        if d is not None:
            end = (d, last)
            break
    return Span(start=start[0], end=end[0], start_basis=start[1], end_basis=end[1])
