"""Dates and study days (docs/clinical-rules.md#study-day, docs/clinical-rules.md#dates).

* Day 1 is the date of the LCAR-AIO infusion. Study day of a date d is ``d − day1 + 1`` on or after Day 1 and
  ``d − day1`` before it: there is no Day 0 (CDISC SDTM IG v3.4 §4.4.4 "Use of the Study Day Variables").
* Dates are compared as calendar dates in the site time zone (study setting, default UTC); a FHIR dateTime
  with an offset is converted first. A partial date (year, year-month) stays partial and is never imputed.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

_PARTIAL = re.compile(r"^\d{4}(-\d{2})?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class DateError(ValueError):
    """A FHIR date or dateTime could not be read."""


@dataclass(frozen=True)
class FhirDate:
    """A FHIR date/dateTime read into the site time zone: full (``date``), or partial (``partial``)."""

    date: dt.date | None
    datetime: dt.datetime | None = None
    partial: str | None = None
    had_offset: bool = True


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def parse_fhir_date(value: str, tz: str = "UTC") -> FhirDate:
    """Read a FHIR ``date`` or ``dateTime`` string.

    The first case that applies defines the value:

    1. ``YYYY`` or ``YYYY-MM`` → partial, kept as written (``date`` is None);
    2. ``YYYY-MM-DD`` → that calendar date (no time zone to apply);
    3. a dateTime with an offset or ``Z`` → converted to ``tz``, then its calendar date;
    4. a dateTime without an offset (invalid in R4, common in practice) → read as local time in ``tz``,
       flagged ``had_offset=False`` so the caller can warn.

    >>> parse_fhir_date("2024-03-05T23:30:00-02:00", "UTC").date
    datetime.date(2024, 3, 6)
    >>> parse_fhir_date("2024-03").partial
    '2024-03'
    """
    if not isinstance(value, str) or not value:
        raise DateError(f"not a FHIR date: {value!r}")
    return _parsed(value, tz)


#: the same dateTimes come again and again (a panel's results, a specimen's collection): each string read once
@lru_cache(maxsize=20_000)
def _parsed(value: str, tz: str) -> FhirDate:
    if _PARTIAL.match(value):
        return FhirDate(date=None, partial=value)
    if _DATE.match(value):
        try:
            return FhirDate(date=dt.date.fromisoformat(value))
        except ValueError as exc:
            raise DateError(f"not a calendar date: {value!r}") from exc
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise DateError(f"not a FHIR dateTime: {value!r}") from exc
    site = zone(tz)
    if stamp.tzinfo is None:
        local = stamp.replace(tzinfo=site)
        return FhirDate(date=local.date(), datetime=local, had_offset=False)
    try:
        local = stamp.astimezone(site)
    except OverflowError:  # 0001-01-01T00:30:00+14:00 is still year 0 in UTC; 9999-12-31T23:30-12:00 is year 10000
        raise DateError(f"{value!r} lies outside years 1 to 9999 in the site time zone ({tz})") from None
    return FhirDate(date=local.date(), datetime=local)


def elapsed(start: dt.datetime, end: dt.datetime) -> dt.timedelta:
    """``end − start`` as elapsed time. Python subtracts two times that share one zone object on the wall clock
    (a night the clocks go back would be an hour short); as instants, a 24-h collection is 24 h whatever the
    clocks did. Both aware (a CRF's times are, in the site time zone) or both naive."""
    if start.tzinfo is not None and end.tzinfo is not None:
        return end.astimezone(dt.UTC) - start.astimezone(dt.UTC)
    return end - start


def before_infusion(on: dt.date | None, at: dt.datetime | None, day1: dt.date | None,
                    infused: dt.datetime | None) -> bool:
    """Is an event of Day 1 (date ``on``, time ``at``) timed before the infusion (``infused``)? Only when both
    times are known, both with an offset or both without: a date alone is never before the infusion of its day.

    >>> import datetime as dt
    >>> infused = dt.datetime(2024, 2, 1, 10, tzinfo=dt.UTC)
    >>> before_infusion(dt.date(2024, 2, 1), dt.datetime(2024, 2, 1, 8, tzinfo=dt.UTC), dt.date(2024, 2, 1), infused)
    True
    >>> before_infusion(dt.date(2024, 2, 1), None, dt.date(2024, 2, 1), infused)
    False
    """
    if on is None or on != day1 or at is None or infused is None or (at.tzinfo is None) != (infused.tzinfo is None):
        return False
    return elapsed(at, infused) > dt.timedelta(0)


def study_day(d: dt.date, day1: dt.date) -> int:
    """SDTM --DY: ``d − day1 + 1`` on or after Day 1, ``d − day1`` before it (no Day 0).

    >>> import datetime as dt
    >>> study_day(dt.date(2024, 1, 1), dt.date(2024, 1, 1)), study_day(dt.date(2023, 12, 31), dt.date(2024, 1, 1))
    (1, -1)
    """
    delta = (d - day1).days
    return delta + 1 if delta >= 0 else delta


def date_of_study_day(day: int, day1: dt.date) -> dt.date:
    """Inverse of :func:`study_day`; study day 0 does not exist."""
    if day == 0:
        raise ValueError("study day 0 does not exist")
    return day1 + dt.timedelta(days=day - 1 if day > 0 else day)


def days_after_infusion(d: dt.date, day1: dt.date) -> int:
    """Elapsed days since the infusion (Day 1 = time 0), the time axis of cellular kinetics."""
    return (d - day1).days


def site_date(value: object, tz: str = "UTC") -> dt.date | None:
    """The calendar date of a FHIR date/dateTime in the site time zone; None when absent or unreadable
    (callers that must report an unreadable date use ``parse_fhir_date`` and its ``DateError``)."""
    if not isinstance(value, str):
        return None
    try:
        return parse_fhir_date(value, tz).date
    except DateError:
        return None


def partial_period(text: str | None) -> tuple[dt.date, dt.date] | None:
    """First and last calendar date of a partial date ``YYYY`` or ``YYYY-MM`` (None if not partial)."""
    if not text:
        return None
    parts = text.split("-")
    try:
        year = int(parts[0])
        if len(parts) == 1:
            return dt.date(year, 1, 1), dt.date(year, 12, 31)
        month = int(parts[1])
        return dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1])
    except (ValueError, IndexError):
        return None
