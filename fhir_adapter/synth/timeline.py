"""Dates and times of the synthetic feed: the data cut, study days, site-local clock times with offsets.

All sites run on Central European time: +01:00 in winter, +02:00 from the last Sunday of March to the last
Sunday of October (EU rule). Times are kept as naive site-local ``datetime`` objects and formatted with the
offset in force on that date; generated clinic times stay out of the 02:00-03:00 switch hour.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import lru_cache

#: fixed data cut of the export: nothing is dated after this day
DATA_CUT = date(2026, 10, 31)
#: the manifest's transactionTime (end of the data-cut day, site-local)
TRANSACTION_TIME = "2026-10-31T23:59:59+01:00"
#: the last instant at which a resource may have been issued or updated
LAST_INSTANT = datetime(2026, 10, 31, 23, 59, 0)


def study_day_to_date(day1: date, study_day: int) -> date:
    """Date of a study day (Day 1 = infusion; no Day 0, as SDTM --DY)."""
    return day1 + timedelta(days=study_day - 1 if study_day >= 1 else study_day)


def date_to_study_day(day1: date, d: date) -> int:
    """Study day of a date: d - day1 + 1 on or after Day 1, d - day1 before it."""
    delta = (d - day1).days
    return delta + 1 if delta >= 0 else delta


def _last_sunday(year: int, month: int) -> date:
    last = date(year, month + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() + 1) % 7)


@lru_cache(maxsize=8192)
def utc_offset_hours(d: date) -> int:
    """+1 (CET) or +2 (CEST) for a site-local calendar date."""
    return 2 if _last_sunday(d.year, 3) <= d < _last_sunday(d.year, 10) else 1


_DAYS: dict[date, tuple[str, str, int]] = {}


def _day(d: date) -> tuple[str, str, int]:
    hit = _DAYS.get(d)
    if hit is None:
        hours = utc_offset_hours(d)
        hit = _DAYS[d] = (d.isoformat(), f"+0{hours}:00", hours)
    return hit


_LOCAL: dict[datetime, str] = {}
_UTC: dict[datetime, str] = {}
_MEMO_SIZE = 4096   # results of one subject's visit share a handful of timestamps


def fmt_local(moment: datetime) -> str:
    """Site-local dateTime with seconds and offset, e.g. 2024-03-05T09:41:00+01:00."""
    text = _LOCAL.get(moment)
    if text is None:
        if len(_LOCAL) >= _MEMO_SIZE:
            _LOCAL.clear()
        day, offset, _ = _day(moment.date())
        text = _LOCAL[moment] = f"{day}T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}{offset}"
    return text


def fmt_utc(moment: datetime) -> str:
    """The same instant in UTC (server timestamps such as meta.lastUpdated)."""
    text = _UTC.get(moment)
    if text is None:
        if len(_UTC) >= _MEMO_SIZE:
            _UTC.clear()
        utc = moment - timedelta(hours=_day(moment.date())[2])
        text = _UTC[moment] = f"{_day(utc.date())[0]}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}Z"
    return text


def at(d: date, minutes: int) -> datetime:
    """Site-local datetime at ``minutes`` after midnight of ``d``."""
    return datetime(d.year, d.month, d.day, minutes // 60, minutes % 60)
