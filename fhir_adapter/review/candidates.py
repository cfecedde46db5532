"""Every value a CRF item could take at a visit, and the one the item's rule picks — what a reviewer sees.

For each visit record of a subject and each findings item with a result at or near that visit:

* the **candidates**: every result of the item placed in the visit's window, plus results of the item that
  lie in no scheduled window (or in an unscheduled visit) within :data:`OUT_OF_WINDOW_DAYS` days of the
  window's edges (flagged ``out_of_window``; the rule never picks them);
* the **rule's pick**: :func:`fhir_adapter.mapping.visits.select` over the in-window results, as the run
  does — recomputed from the CRF's findings, so it does not depend on a decision already applied;
* per candidate: value, unit, date/time, status, source type/id/version and the flags ``unit_converted``
  (the EHR sent another unit), ``amended`` (status amended/corrected, or a version above 1), ``out_of_window``,
  ``below_lloq`` (a censored ``<``/``<=`` result, or a value under the item's LLOQ).

A candidate is identified by its source reference without version (``Observation/123``, plus ``#2``… when one
resource feeds the item twice); its version and value tell when the EHR changed it after a review.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fhir_adapter.crf.models import Finding, SubjectCRF
from fhir_adapter.mapping.visits import select
from fhir_adapter.study.load import Study

#: results of an item this many days outside a visit's window are shown as (out-of-window) candidates
OUT_OF_WINDOW_DAYS = 7


def candidate_id(f: Finding) -> str:
    return f"{f.source.resource_type}/{f.source.id}"


def display_value(f: Finding) -> str:
    """The value as a reviewer reads it, in the CRF unit."""
    if f.value is not None:
        text = f"{f.comparator or ''}{f.value:g}"
    elif f.value_bool is not None:
        text = f.value_text or ("yes" if f.value_bool else "no")
    else:
        text = f.value_text or ""
    return text


def _amended(f: Finding) -> bool:
    if f.status in ("amended", "corrected"):
        return True
    try:
        return f.source.version is not None and int(f.source.version) > 1
    except ValueError:
        return False


def candidate(f: Finding, cid: str, visit: str, lloq: float | None) -> dict[str, Any]:
    below = f.comparator in ("<", "<=") or (lloq is not None and f.value is not None and f.value < lloq)
    return {
        "id": cid,
        "value": display_value(f),
        "unit": f.unit,
        "orig_value": f.orig_value,
        "orig_unit": f.orig_unit,
        "date": f.date.isoformat() if f.date else None,
        "datetime": f.datetime.isoformat() if f.datetime else None,
        "study_day": f.study_day,
        "status": f.status,
        "source": {"resource_type": f.source.resource_type, "id": f.source.id, "version": f.source.version},
        "flags": {
            "unit_converted": f.orig_unit is not None and f.orig_unit != f.unit,
            "amended": _amended(f),
            "out_of_window": f.visit != visit,
            "below_lloq": below,
        },
    }


def _ids(findings: list[Finding]) -> list[str]:
    """A stable id per finding: the source reference, ``#n`` for a resource feeding the item again."""
    out: list[str] = []
    seen: dict[str, int] = defaultdict(int)
    for f in findings:
        base = candidate_id(f)
        seen[base] += 1
        out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return out


def item_candidates(crf: SubjectCRF, study: Study) -> list[dict[str, Any]]:
    """One entry per (visit, item) of the subject: rule, window, the rule's pick and every candidate."""
    if crf.day1 is None:
        return []
    windows = {v.id: v.window for v in study.schedule.visits}
    by_item: dict[str, list[Finding]] = defaultdict(list)
    for f in crf.findings:
        if f.study_day is not None and f.item in study.items:
            by_item[f.item].append(f)
    ids: dict[str, list[str]] = {}
    outside: dict[str, list[int]] = {}  # item → its results in no visit or in an unscheduled one
    placed: dict[str, dict[str, list[int]]] = defaultdict(dict)  # visit → item → its results placed there
    for item_id, findings in by_item.items():
        ids[item_id] = _ids(findings)
        outside[item_id] = []
        for i, f in enumerate(findings):
            if f.visit is not None:
                placed[f.visit].setdefault(item_id, []).append(i)
            if f.visit is None or f.visit.startswith("UNS"):
                outside[item_id].append(i)
    entries: list[dict[str, Any]] = []
    for rec in crf.visits:
        window = windows.get(rec.visit)
        at_visit = placed.get(rec.visit, {})
        visit_date = rec.date.isoformat() if rec.date else None
        for item_id in sorted(at_visit):
            inside, item_ids, findings = at_visit[item_id], ids[item_id], by_item[item_id]
            near: list[int] = []
            if window and outside[item_id]:
                lo, hi = window[0] - OUT_OF_WINDOW_DAYS, window[1] + OUT_OF_WINDOW_DAYS
                near = [i for i in outside[item_id] if i not in inside and lo <= (findings[i].study_day or 0) <= hi]
            item = study.items[item_id]
            if len(inside) == 1:
                picked_id = item_ids[inside[0]]
            else:
                picked = select([findings[i] for i in inside], item.select, rec.target_day, item.worse)
                picked_id = next(item_ids[i] for i in inside if findings[i] is picked)
            shown = inside + near
            if len(shown) > 1:
                # as the visit orders them (fhir_adapter.mapping.visits): a date-only result at 00:00 of its date
                shown.sort(key=lambda i: (findings[i].study_day or 0, findings[i].time_order, item_ids[i]))
            cands = [candidate(findings[i], item_ids[i], rec.visit, item.lloq) for i in shown]
            entries.append({
                "visit": rec.visit, "visit_label": rec.label or rec.visit, "visit_date": visit_date,
                "item": item_id, "label": item.label, "domain": item.domain, "unit": item.unit,
                "rule": item.select, "target_day": rec.target_day,
                "window": list(window) if window else None,
                "picked": picked_id, "candidates": cands,
            })
    return entries


def finding_for(crf: SubjectCRF, study: Study, visit: str, item: str, cid: str) -> Finding | None:
    """The finding behind candidate ``cid`` of (visit, item), or None when it is no longer a candidate."""
    findings = [f for f in crf.findings if f.item == item and f.study_day is not None]
    ids = _ids(findings)
    return next((f for i, f in enumerate(findings) if ids[i] == cid), None)


def subject_candidates(crf: SubjectCRF, study: Study) -> dict[str, Any]:
    """The ``OUT/review/candidates/<subject>.json`` document."""
    return {
        "subject_id": crf.subject_id, "arm": crf.arm, "day1": crf.day1.isoformat() if crf.day1 else None,
        "out_of_window_days": OUT_OF_WINDOW_DAYS, "items": item_candidates(crf, study),
    }
