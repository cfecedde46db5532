"""Builders for hand-made CRF data in tests."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from fhir_adapter.crf.models import Demographics, Finding, SourceRef, SubjectCRF, VisitRecord
from fhir_adapter.study.timeline import study_day

DAY1 = dt.date(2024, 2, 1)
_ids = itertools.count(1)


def d(day: int, day1: dt.date = DAY1) -> dt.date:
    """The calendar date of a study day (no Day 0)."""
    return day1 + dt.timedelta(days=day - 1 if day > 0 else day)


def finding(item: str, day: int, value: float | None = None, *, domain: str = "LB", day1: dt.date = DAY1,
            **kw: Any) -> Finding:
    date = d(day, day1)
    return Finding(domain=domain, item=item, value=value, date=date, study_day=study_day(date, day1),
                   source=SourceRef(resource_type="Observation", id=f"o{next(_ids)}"), **kw)


def descriptor(code: str, day: int, present: bool, day1: dt.date = DAY1) -> Finding:
    return finding(f"sledai2k.{code}", day, domain="QS", value_bool=present, day1=day1)


def crf(findings: list[Finding], visits: dict[str, int], *, day1: dt.date = DAY1,
        ld_start_day: int | None = None, **kw: Any) -> SubjectCRF:
    """A subject whose visits are on the given study days."""
    recs = [VisitRecord(visit=v, date=d(day, day1), study_day=day) for v, day in visits.items()]
    return SubjectCRF(
        subject_id="T-001", arm="DL1", day1=day1,
        lymphodepletion_start=d(ld_start_day, day1) if ld_start_day is not None else None,
        dm=Demographics(subject_id="T-001", status="follow-up"), findings=findings, visits=recs, **kw,
    )
