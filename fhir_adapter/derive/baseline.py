"""Baseline and change from baseline — the one rule every per-visit endpoint shares.

Definition (docs/clinical-rules.md#baseline, applied to every endpoint with a change from baseline):
baseline = the last assessment dated on or before Day 1 (before the infusion) and no earlier than the
look-back start ``crf.baseline_from`` (Day 1 − ``schedule.yaml`` ``baseline.lookback_days``); change =
value − baseline. The assessment may be a visit's value, or a result placed in no visit — dated before the
subject's consent (screening labs drawn before the form was signed, the last routine-care value), or between
visit windows — or another result of a visit's window than the one the visit keeps (:func:`prior_result`).
Such a result is the baseline without becoming a visit: no visit row is flagged, and :class:`BaselineSource`
names its date and resource (``before_participation`` when it precedes consent, ``visit`` when a visit's
window holds it).

For a subject's dated visits and one value per visit, the first case that applies defines the change:

1. Day 1 unknown, or no value on or before Day 1 inside the look-back → no baseline: every change is None;
2. the baseline is a visit (the latest valued visit dated on or before Day 1; of two on the same date the
   first in the list; a result in no visit on the same date yields to the visit — unless
   :func:`prior_result`, comparing dates and times with the visits' own results, found it later) → change 0
   at it;
3. a visit with a value dated after the baseline → value − baseline (rounded to ``ndigits`` when given,
   which strips binary noise such as 0.8 − 1.2 = −0.39999999999999997);
4. anything else (no value, undated, dated before the baseline) → None.

Example: values on study days −28 (2.0), −7 (1.5), 29 (0.5), Day 1 = day 1 → baseline is day −7;
changes None, 0, −1.0. With consent on day −20 and a value of 2.0 on day −25 only (no visit), then 0.5 at
day 29: baseline 2.0 from day −25 (before participation), change −1.5 at day 29.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, Field

from fhir_adapter.crf.models import Finding, SubjectCRF, VisitRecord
from fhir_adapter.numbers import round_half_up
from fhir_adapter.study.timeline import elapsed

N = TypeVar("N", int, float)

#: Changes of laboratory values are rounded to this many decimals (binary floating-point noise only).
LAB_CHANGE_DIGITS = 6


def baseline_index(
    dates: Sequence[dt.date | None], has_value: Sequence[bool], day1: dt.date | None,
    since: dt.date | None = None,
) -> int | None:
    """Index of the baseline: the last entry with a value dated on or before ``day1`` and not before
    ``since`` (the look-back start; None if no entry qualifies)."""
    if day1 is None:
        return None
    best: int | None = None
    for i, (date, valued) in enumerate(zip(dates, has_value, strict=True)):
        if not valued or date is None or date > day1 or (since is not None and date < since):
            continue
        best_date = dates[best] if best is not None else None
        if best is None or (best_date is not None and date > best_date):
            best = i
    return best


def changes(
    dates: Sequence[dt.date | None],
    values: Sequence[N | None],
    day1: dt.date | None,
    ndigits: int | None = None,
    *,
    since: dt.date | None = None,
    prior: tuple[dt.date, N] | None = None,
    prior_decided: bool = False,
    eligible: Sequence[bool] | None = None,
) -> tuple[int | None, list[N | None]]:
    """The baseline index and the change from baseline of every entry (cases 1–4 of the module docstring).

    ``prior`` = (date, value) of the last result in no visit inside the look-back: it is the baseline when it
    is later than every valued entry on or before Day 1 (see :func:`prior_wins`), or whenever given with
    ``prior_decided`` (:func:`prior_result` compared it with the visits' results themselves); the index
    returned is then None and the changes are against it. ``eligible``: which entries may be the baseline
    (False: a Day 1 value taken after the infusion, :func:`after_infusion`); every entry when None."""
    base = baseline_index(dates, [v is not None and (eligible is None or eligible[i]) for i, v in enumerate(values)],
                          day1, since)
    out: list[N | None] = [None] * len(values)
    if (prior is not None and prior_decided and day1 is not None and prior[0] <= day1) \
            or prior_wins(base, dates, day1, prior):
        assert prior is not None
        base_date, base_value = prior
        base = None
    elif base is None:
        return None, out
    else:
        base_value, base_date = values[base], dates[base]  # type: ignore[assignment]
    assert base_value is not None and base_date is not None
    for i, (date, value) in enumerate(zip(dates, values, strict=True)):
        if base is not None and i == base:
            out[i] = base_value - base_value
        elif value is not None and date is not None and date > base_date:
            diff = value - base_value
            out[i] = round(diff, ndigits) if ndigits is not None else diff
    return base, out


def prior_wins(base: int | None, dates: Sequence[dt.date | None], day1: dt.date | None,
               prior: tuple[dt.date, object] | None) -> bool:
    """Is the result in no visit (``prior``) the baseline rather than the visit at index ``base``?"""
    if prior is None or day1 is None or prior[0] > day1:
        return False
    base_date = dates[base] if base is not None else None
    return base_date is None or prior[0] > base_date


def in_lookback(crf: SubjectCRF, d: dt.date | None) -> bool:
    """Is ``d`` on or before Day 1 and not before the look-back start?"""
    return (d is not None and crf.day1 is not None and d <= crf.day1
            and (crf.baseline_from is None or d >= crf.baseline_from))


def after_infusion(crf: SubjectCRF, f: Finding) -> bool:
    """A result of Day 1 timed after the infusion (when the EHR recorded its time): not a baseline ("on or before
    Day 1, before the infusion")."""
    at, infused = f.datetime, crf.infusion_time
    if at is None or infused is None or f.date != crf.day1 or (at.tzinfo is None) != (infused.tzinfo is None):
        return False
    return at > infused


def prior_result(crf: SubjectCRF, item: str, valued: Callable[[Finding], bool] | None = None,
                 findings: Iterable[Finding] | None = None) -> Finding | None:
    """The baseline of ``item`` when it is not a visit's value: the last result dated inside the baseline
    look-back (by date, then time; a date-only result is at 00:00 of its date) when it is no visit's pick —
    placed in no visit (before consent, between windows) or another result of a visit's window than the one the
    visit keeps (``select``). None when the last result is a visit's value (a tie goes to the visit's) or there
    is none. Not candidates: a result of Day 1 timed after the infusion, and the results of a visit whose item a
    reviewer settled other than the one it keeps (set aside: docs/review.md). ``valued`` says which results
    count (default: a numeric value); ``findings``, the subject's results of ``item`` when the caller has them
    by item (else all of ``crf.findings`` are looked at)."""
    ok = valued or (lambda f: f.value is not None)
    kept = {v.values[item].source.reference for v in crf.visits if item in v.values}
    settled = {v.visit for v in crf.visits if item in v.settled}  # a reviewer's decision: the rest set aside
    best: Finding | None = None
    best_key: tuple[dt.date, tuple[bool, dt.datetime], bool, str] | None = None
    for f in crf.findings if findings is None else findings:
        if f.item != item or not ok(f) or not in_lookback(crf, f.date) or after_infusion(crf, f):
            continue
        assert f.date is not None
        is_kept = f.source.reference in kept
        if not is_kept and f.visit in settled:
            continue
        key = (f.date, f.time_order, is_kept, f.source.id)
        if best_key is None or key > best_key:
            best, best_key = (None if is_kept else f), key
    return best


class BaselineSource(BaseModel):
    """Where a baseline taken from a result in no visit came from (``results/study.json`` ``baselines``)."""

    item: str
    value: float | None
    date: dt.date
    study_day: int | None
    sources: tuple[str, ...]
    before_participation: bool = Field(description="dated before the subject's consent (participation start)")
    visit: str | None = Field(None, description="the visit whose window holds it when that visit kept another "
                                                "result (select); None: placed in no visit")
    comparator: str | None = None
    unit: str | None = None

    @classmethod
    def of(cls, crf: SubjectCRF, f: Finding, value: float | None = None) -> BaselineSource:
        assert f.date is not None
        return cls(item=f.item, value=f.value if value is None else value, date=f.date,
                   study_day=f.study_day, sources=(f.source.reference,),
                   before_participation=before_participation(crf, f.date), comparator=f.comparator, unit=f.unit,
                   visit=f.visit)


def before_participation(crf: SubjectCRF, d: dt.date) -> bool:
    return crf.participation_start is not None and d < crf.participation_start


@dataclass(frozen=True)
class VisitValue:
    """The value a visit selected for one CRF item, with its baseline flag and change from baseline."""

    visit: str
    date: dt.date | None
    study_day: int | None
    value: float | None
    comparator: str | None = None
    unit: str | None = None
    source: str | None = None
    baseline: bool = False
    change: float | None = None


def item_by_visit(
    crf: SubjectCRF, item: str, ndigits: int | None = LAB_CHANGE_DIGITS, decimals: int | None = None,
) -> list[VisitValue]:
    """Value of ``item`` at every dated visit of ``crf`` and its change from baseline.

    A censored result (``<10``) keeps its bound as ``value`` and its ``comparator``; it can be the baseline,
    but its change, and every change against a censored baseline, is None: the difference is not a known
    number. ``decimals`` rounds the stored value itself (see :func:`round_half_up`).
    """
    return item_with_baseline(crf, item, ndigits, decimals)[0]


def item_with_baseline(
    crf: SubjectCRF, item: str, ndigits: int | None = LAB_CHANGE_DIGITS, decimals: int | None = None,
) -> tuple[list[VisitValue], BaselineSource | None]:
    """:func:`item_by_visit` and, when the baseline is a result in no visit, where it came from."""
    picked: list[tuple[VisitRecord, Finding | None, float | None]] = []  # dated visit, its result, its value
    for v in crf.visits:
        if v.date is None:
            continue
        f = v.values.get(item)
        value = f.value if f is not None else None
        if value is not None and decimals is not None:
            value = round_half_up(value, decimals)
        picked.append((v, f, value))
    prior = prior_result(crf, item)
    # a visit's value is dated by its own result (a window's earliest result dates the visit): a D1 visit
    # keeping a Day 1 result is after a baseline of Day -1 in the same window
    dates = [f.date if f is not None and f.date is not None else v.date for v, f, _ in picked]
    values = [value for _, _, value in picked]
    comparators = [f.comparator if f is not None and value is not None else None for _, f, value in picked]
    pair: tuple[dt.date, float] | None = None
    if prior is not None and prior.value is not None and prior.date is not None:
        pair = (prior.date, round_half_up(prior.value, decimals) if decimals is not None else prior.value)
    eligible = [f is None or not after_infusion(crf, f) for _, f, _ in picked]
    base, diffs = changes(dates, values, crf.day1, ndigits, since=crf.baseline_from, prior=pair, prior_decided=True,
                          eligible=eligible)
    source = BaselineSource.of(crf, prior, value=pair[1]) if prior is not None and pair is not None else None
    if prior is not None and pair is not None and prior.datetime is not None:
        # a value of the baseline's own date, taken later that day (a Day 1 result after the infusion, the
        # baseline drawn that morning): after it, so it has a change — "last" is by date, then time
        for i, (_, f, value) in enumerate(picked):
            if diffs[i] is None and value is not None and f is not None and f.date == prior.date \
                    and f.datetime is not None and elapsed(prior.datetime, f.datetime) > dt.timedelta(0):
                diff = value - pair[1]
                diffs[i] = round(diff, ndigits) if ndigits is not None else diff
    base_censored = (comparators[base] is not None if base is not None
                     else source is not None and source.comparator is not None)
    out = []
    for i, (v, f, value) in enumerate(picked):
        change = diffs[i]
        if i != base and (base_censored or comparators[i] is not None):
            change = None
        out.append(VisitValue(
            visit=v.visit, date=v.date, study_day=v.study_day, value=value, comparator=comparators[i],
            unit=f.unit if f is not None else None, source=f.source.reference if f is not None else None,
            baseline=i == base, change=change,
        ))
    return out, source

