"""Place findings in the visit schedule and pick one value per item and visit.

* A finding dated on study day ``d`` belongs to the scheduled visit whose window holds ``d``
  (windows are inclusive and never overlap — checked when the mapping loads).
* Outside every window: an item listed in ``unscheduled_items`` starts an unscheduled visit ``UNS<d>``
  (e.g. ``UNS5``, ``UNS-4``); any other item stays in the CRF timeline with no visit (coverage: out of window).
* Only inside the subject's participation (:mod:`participation`): a finding dated before its start keeps no
  visit (look-backs still read it); one dated after its end is left out of the CRF (the caller counts it).
* Visit date = the date of the clinician's assessment at that visit (the latest QS result in the visit),
  else the date of its earliest result — never the schedule's target date.
* Per item, the selection rule of ``items.yaml`` picks the value the visit keeps when it holds several:
  ``closest`` to the target day (ties: the earlier), ``first``, ``last``, ``max``, ``min``, ``any_true``, and
  ``worst``: the most abnormal value, the highest or the lowest as the item's ``worse`` says (ties: the earlier).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from fhir_adapter.crf.models import Finding, VisitRecord
from fhir_adapter.mapping.participation import Span
from fhir_adapter.study.load import Study
from fhir_adapter.study.models import SelectRule, Worse
from fhir_adapter.study.timeline import study_day


def _order(f: Finding) -> tuple[dt.date, tuple[bool, dt.datetime], str]:
    """Earlier first: by date, then time (:attr:`Finding.time_order`)."""
    assert f.date is not None
    return (f.date, f.time_order, f.source.id)


def _numeric(f: Finding) -> float:
    if f.value is not None:
        return f.value
    return 1.0 if f.value_bool else 0.0


def select(findings: list[Finding], rule: SelectRule, target_day: int | None, worse: Worse | None = None) -> Finding:
    """The finding a visit keeps for one item; ``worse`` is the item's direction, which ``worst`` needs."""
    if rule == "worst":
        if worse is None:
            raise ValueError("select: worst needs the item's direction (worse: high or low)")
        rule = "max" if worse == "high" else "min"
    if len(findings) == 1:  # what every rule keeps of one
        return findings[0]
    ordered = sorted(findings, key=_order)
    if rule == "first":
        return ordered[0]
    if rule == "last":
        return ordered[-1]
    if rule == "max":
        return max(ordered, key=_numeric)  # first of equal maxima
    if rule == "min":
        return min(ordered, key=_numeric)
    if rule == "any_true":
        return next((f for f in ordered if f.value_bool), ordered[-1])
    # closest to the target day; a tie goes to the earlier result
    assert target_day is not None
    return min(ordered, key=lambda f: abs((f.study_day or 0) - target_day))


def place(findings: list[Finding], day1: dt.date | None, study: Study,
          span: Span | None = None) -> tuple[list[Finding], list[VisitRecord]]:
    """Set ``study_day`` and ``visit`` on each finding inside ``span`` (on the findings themselves); build the
    subject's visit records. Findings after the end of ``span`` are not returned."""
    span = span or Span(None, None)
    kept = [(f, where) for f in findings if (where := span.position(f.date)) != "after"]
    if day1 is None:
        return [f for f, _ in kept], []
    visits = study.schedule.visits
    unscheduled = set(study.schedule.unscheduled_items)
    placed: list[Finding] = []
    groups: dict[str, list[Finding]] = defaultdict(list)
    visit_of_day: dict[int, str | None] = {}
    for f, where in kept:
        if f.date is None:
            placed.append(f)
            continue
        d = study_day(f.date, day1)
        if d not in visit_of_day:
            visit_of_day[d] = next((v.id for v in visits if v.window[0] <= d <= v.window[1]), None)
        visit = visit_of_day[d]
        if where == "before":
            visit = None
        elif visit is None and f.item in unscheduled:
            visit = f"UNS{d}"
        f.study_day, f.visit = d, visit  # the mapper's own findings: set in place, not copied
        placed.append(f)
        if visit is not None:
            groups[visit].append(f)
    records: list[VisitRecord] = []
    by_id = {v.id: v for v in visits}
    for vid, fs in groups.items():
        sched = by_id.get(vid)
        qs = [f for f in fs if f.domain == "QS"]
        date = max(f.date for f in qs if f.date) if qs else min(f.date for f in fs if f.date)
        target = sched.day if sched else study_day(date, day1)
        per_item: dict[str, list[Finding]] = defaultdict(list)
        for f in fs:
            per_item[f.item].append(f)
        values = {item: select(group, study.items[item].select, target, study.items[item].worse)
                  for item, group in sorted(per_item.items())}
        records.append(VisitRecord(
            visit=vid, label=sched.label if sched else f"Unscheduled (day {target})", target_day=target,
            date=date, study_day=study_day(date, day1), unscheduled=sched is None, values=values,
        ))
    records.sort(key=lambda r: (r.date or dt.date.min, r.visit))
    return placed, records
