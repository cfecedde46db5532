"""A subject's participation: the span in which visits and results may lie (``schedule.yaml`` →
``participation``; docs/clinical-rules.md#participation).

* start = consent (ResearchSubject.period.start, which a roster CSV's consent_date fills), else the start of
  the earliest visit window (the screening window) counted from Day 1;
* end = end of study (ResearchSubject.period.end), else the end of the latest visit window.

Findings dated before the start stay in the CRF without a visit (rules that look back — baseline, the
SLEDAI-2K window, the steroid dose in force — may read them) and are counted ``participation.before-start``.
Findings dated after the end are taken out of the CRF and counted ``participation.after-end``: they never
become visits or results.

Adverse events (:func:`bound_adverse_events`; docs/clinical-rules.md#participation); the first case that
applies decides:

1. onset unknown (no full or partial onset date) and no end before the start → kept (the TEAE rule decides);
2. onset — or, without an onset, the end — before the start (a partial onset: its whole period) and the
   event worsened after Day 1 (a ``baseline_grade`` below its grade, not ended before Day 1) → kept: a
   pre-existing condition that worsens is treatment-emergent (docs/clinical-rules.md#teae);
3. otherwise before the start → not an AE of the trial: moved to medical history (MH, category
   ``pre-existing adverse event``), counted ``participation.ae-before-start`` and listed in the run report;
4. onset after the end (a partial onset: its whole period) → out of scope: left out, counted
   ``participation.ae-after-end`` and listed in the run report;
5. otherwise → kept.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from fhir_adapter.crf.models import AdverseEvent, MedicalHistory
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import date_of_study_day, partial_period

#: MHCAT of an adverse event that began before participation
PRE_EXISTING_AE = "pre-existing adverse event"


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


@dataclass(frozen=True)
class BoundedAdverseEvents:
    """The AEs of the trial, the ones that became medical history, and the ones after the end of study."""

    kept: list[AdverseEvent]
    history: list[MedicalHistory]
    after_end: list[AdverseEvent]


def _onset_span(ae: AdverseEvent) -> tuple[dt.date, dt.date] | None:
    if ae.onset_date is not None:
        return ae.onset_date, ae.onset_date
    return partial_period(ae.onset_partial)


def _worsened_after_day1(ae: AdverseEvent, day1: dt.date | None) -> bool:
    return (day1 is not None and ae.baseline_grade is not None and ae.grade is not None
            and ae.grade > ae.baseline_grade and (ae.resolution_date is None or ae.resolution_date >= day1))


def as_history(ae: AdverseEvent) -> MedicalHistory:
    """An AE that began before participation, as the medical-history record it is."""
    return MedicalHistory(
        term=ae.term, kind="condition", category=PRE_EXISTING_AE, spid=ae.spid,
        code=ae.codes[0] if ae.codes else None, meddra_code=ae.meddra_code, meddra_term=ae.meddra_term,
        ongoing=None if ae.outcome is None and ae.resolution_date is None else ae.resolution_date is None,
        start_date=ae.onset_date, start_partial=ae.onset_partial if ae.onset_date is None else None,
        end_date=ae.resolution_date, end_partial=ae.resolution_partial if ae.resolution_date is None else None,
        source=ae.source,
    )


def bound_adverse_events(aes: list[AdverseEvent], span: Span, day1: dt.date | None) -> BoundedAdverseEvents:
    """Split ``aes`` by the participation ``span`` (the cases of the module docstring, in order)."""
    kept: list[AdverseEvent] = []
    history: list[MedicalHistory] = []
    after: list[AdverseEvent] = []
    for ae in aes:
        onset = _onset_span(ae)
        before = span.start is not None and (
            onset[1] < span.start if onset is not None
            else ae.resolution_date is not None and ae.resolution_date < span.start)
        if before and not _worsened_after_day1(ae, day1):
            history.append(as_history(ae))
        elif onset is not None and span.end is not None and onset[0] > span.end:
            after.append(ae)
        else:
            kept.append(ae)
    return BoundedAdverseEvents(kept=kept, history=history, after_end=after)
