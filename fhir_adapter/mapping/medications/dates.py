"""The dates of a medication record (docs/clinical-rules.md#glucocorticoid-orders).

A dosage line's ``Timing.repeat.boundsPeriod``; else ``boundsDuration`` (or ``count`` ÷ frequency) counted
from the resource's start; else the resource's own dates: ``effectivePeriod``/``effectiveDateTime``
(Statement), ``dispenseRequest.validityPeriod`` or ``authoredOn`` + ``expectedSupplyDuration`` (Request),
``whenHandedOver`` + ``daysSupply`` (Dispense). Lines with the same ``sequence`` (or none) are concurrent;
increasing ``sequence`` values are consecutive taper steps, step *n+1* starting the day after step *n* ends.
Partial dates stay partial (never imputed).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from fhir_adapter.mapping.common import Unusable, parse_date_or_reject
from fhir_adapter.mapping.medications.settings import MedicationSettings
from fhir_adapter.mapping.medications.timing import duration_days, frequency_per_day
from fhir_adapter.study.timeline import FhirDate


@dataclass
class Step:
    """The dates of one dosage line (or taper step)."""

    start: FhirDate | None
    end: FhirDate | None


def add_days(d: FhirDate | None, days: int) -> FhirDate | None:
    """A full date moved by ``days``; None for a partial or missing date (it is never imputed)."""
    if d is None or d.date is None:
        return None
    return FhirDate(date=d.date + dt.timedelta(days=days))


def span_end(start: FhirDate | None, days: float | None) -> FhirDate | None:
    """The last day of a span of ``days`` days from ``start`` (a part day counts as a day)."""
    if days is None or days <= 0:
        return None
    return add_days(start, max(math.ceil(days - 1e-9), 1) - 1)


class MedicationDates:
    """Reads the dates of medication resources and their dosage lines in the site's timezone."""

    def __init__(self, settings: MedicationSettings, tz: str) -> None:
        self.s = settings
        self.tz = tz

    def parse(self, value: Any) -> FhirDate:
        return parse_date_or_reject(value, self.tz)

    def days(self, duration: Any) -> float | None:
        return duration_days(duration, self.s.period_days)

    def resource_dates(self, r: dict[str, Any]) -> tuple[FhirDate | None, FhirDate | None]:
        """(start, end) of a Statement, Request or Dispense from its own date elements."""
        rtype = r["resourceType"]
        start_s: Any = None
        end_s: Any = None
        days: float | None = None
        if rtype == "MedicationStatement":
            period = r.get("effectivePeriod") or {}
            start_s, end_s = r.get("effectiveDateTime") or period.get("start"), period.get("end")
        elif rtype == "MedicationRequest":
            dr = r.get("dispenseRequest") or {}
            validity = dr.get("validityPeriod") or {}
            start_s, end_s = validity.get("start") or r.get("authoredOn"), validity.get("end")
            days = self.days(dr.get("expectedSupplyDuration"))
        elif rtype == "MedicationDispense":
            start_s = r.get("whenHandedOver") or r.get("whenPrepared")
            days = self.days(r.get("daysSupply"))
        start = self.parse(start_s) if start_s else None
        end = self.parse(end_s) if end_s else span_end(start, days)
        return start, end

    def bounds(self, line: dict[str, Any], start: FhirDate | None) -> tuple[FhirDate | None, FhirDate | None, bool]:
        """(start, end, has_own_start) of a line from Timing.repeat bounds[x] / count."""
        rep = (line.get("timing") or {}).get("repeat") or {}
        bp = rep.get("boundsPeriod") or {}
        own = bool(bp.get("start"))
        s = self.parse(bp["start"]) if own else start
        if bp.get("end"):
            return s, self.parse(bp["end"]), own
        days = self.days(rep.get("boundsDuration"))
        if days is None and isinstance(rep.get("count"), int):
            per_day = frequency_per_day(line.get("timing") or {}, self.s)
            days = rep["count"] / per_day if per_day else None
        return s, span_end(s, days), own

    def steps(self, lines: list[dict[str, Any]], start: FhirDate | None, end: FhirDate | None) -> list[Step]:
        """Dates of each line: unsequenced lines span the resource; sequenced ones are consecutive steps."""
        steps: list[Step | None] = [None] * len(lines)
        seqs = sorted({x["sequence"] for x in lines if isinstance(x.get("sequence"), int)})
        for i, line in enumerate(lines):
            if not isinstance(line.get("sequence"), int) or len(seqs) == 1:
                s, e, _ = self.bounds(line, start)
                steps[i] = Step(s, e or end)
        if len(seqs) > 1:
            cursor: FhirDate | None = start
            groups: list[tuple[list[int], Step]] = []
            for seq in seqs:
                idx = [i for i, x in enumerate(lines) if x.get("sequence") == seq]
                bounds = [self.bounds(lines[i], cursor) for i in idx]
                own = [b for b in bounds if b[2]]
                s = own[0][0] if own else cursor
                e = next((b[1] for b in bounds if b[1] is not None), None)
                if s is None:
                    raise Unusable(
                        "taper-without-dates",
                        f"dosage sequence {seq} has no start date (the step before it has no end)",
                        "give each step a boundsDuration or boundsPeriod",
                    )
                groups.append((idx, Step(s, e)))
                cursor = add_days(e, 1) if e else None
            for k, (_, step) in enumerate(groups):
                if step.end is None:
                    nxt = groups[k + 1][1].start if k + 1 < len(groups) else None
                    step.end = add_days(nxt, -1) if nxt is not None else (end if k + 1 == len(groups) else None)
            for idx, step in groups:
                for i in idx:
                    steps[i] = Step(step.start, step.end)
        return [s if s is not None else Step(start, end) for s in steps]
