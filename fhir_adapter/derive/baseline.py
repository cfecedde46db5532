"""Baseline and change from baseline — the one rule every per-visit endpoint shares.

Definition (docs/clinical-rules.md#baseline, applied to every endpoint with a change from baseline):
baseline = the last assessment dated on or before Day 1 (before the infusion); change = value − baseline.

For a subject's dated visits and one value per visit, the first case that applies defines the change:

1. Day 1 unknown, or no visit on or before Day 1 has a value → no baseline: every change is None;
2. the baseline visit (the latest valued visit dated on or before Day 1; of two on the same date the first in
   the list) → change 0;
3. a visit with a value dated after the baseline visit → value − baseline (rounded to ``ndigits`` when given,
   which strips binary noise such as 0.8 − 1.2 = −0.39999999999999997);
4. anything else (no value, undated, dated before the baseline) → None.

Example: values on study days −28 (2.0), −7 (1.5), 29 (0.5), Day 1 = day 1 → baseline is day −7;
changes None, 0, −1.0.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from typing import TypeVar

from fhir_adapter.crf.models import SubjectCRF

N = TypeVar("N", int, float)

#: Changes of laboratory values are rounded to this many decimals (binary floating-point noise only).
LAB_CHANGE_DIGITS = 6


def baseline_index(
    dates: Sequence[dt.date | None], has_value: Sequence[bool], day1: dt.date | None,
) -> int | None:
    """Index of the baseline: the last entry with a value dated on or before ``day1`` (None if none)."""
    if day1 is None:
        return None
    best: int | None = None
    for i, (date, valued) in enumerate(zip(dates, has_value, strict=True)):
        if not valued or date is None or date > day1:
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
) -> tuple[int | None, list[N | None]]:
    """The baseline index and the change from baseline of every entry (cases 1–4 of the module docstring)."""
    base = baseline_index(dates, [v is not None for v in values], day1)
    out: list[N | None] = [None] * len(values)
    if base is None:
        return None, out
    base_value, base_date = values[base], dates[base]
    assert base_value is not None and base_date is not None
    for i, (date, value) in enumerate(zip(dates, values, strict=True)):
        if i == base:
            out[i] = base_value - base_value
        elif value is not None and date is not None and date > base_date:
            diff = value - base_value
            out[i] = round(diff, ndigits) if ndigits is not None else diff
    return base, out


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
    rows: list[VisitValue] = []
    for v in crf.visits:
        if v.date is None:
            continue
        f = v.values.get(item)
        value = f.value if f is not None else None
        if value is not None and decimals is not None:
            value = round_half_up(value, decimals)
        rows.append(VisitValue(
            visit=v.visit, date=v.date, study_day=v.study_day, value=value,
            comparator=f.comparator if f is not None and value is not None else None,
            unit=f.unit if f is not None else None, source=f.source.reference if f is not None else None,
        ))
    base, diffs = changes([r.date for r in rows], [r.value for r in rows], crf.day1, ndigits)
    base_censored = base is not None and rows[base].comparator is not None
    out = []
    for i, r in enumerate(rows):
        change = diffs[i]
        if i != base and (base_censored or r.comparator is not None):
            change = None
        out.append(replace(r, baseline=i == base, change=change))
    return out


def round_half_up(value: float, decimals: int) -> float:
    """Round half away from zero on the decimal value (35 mm × 0.03 = 1.0499999999999998 → 1.05 → 1.1).

    The value is first rounded to 9 decimals to drop binary noise, then rounded half-up on its decimal text,
    so a half is never lost to a binary representation just below it.
    """
    exact = Decimal(repr(round(value, 9)))
    return float(exact.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))
