"""Decisions → the CRF a run derives from: the adjudicated value replaces the rule's pick.

Per subject, visit and item, the current decision (:meth:`Chain.current`) gives the item's **review status**:

* ``unreviewed`` — no decision: the rule's pick stays;
* ``accepted`` — the reviewer accepted the rule's pick;
* ``changed`` — the reviewer chose another candidate: the visit keeps that one (an out-of-window result the
  rule had put in an unscheduled visit leaves it: one result, one visit);
* ``not-available`` — the visit keeps no value for the item: the derivations see none, and the exports get a
  NOT DONE record with the reviewer's reason instead (:attr:`SubjectReview.not_available`);
* ``query`` — a query is open (the value stays as it was: the rule's pick, or the earlier decision's);
* ``re-review`` — the EHR changed what the reviewer saw: a candidate's value or version changed, one was
  added, or one is gone. The decision still applies where it can (the chosen resource, at its current
  version; "not available" stays) and is listed in the run report and the review app until a reviewer
  decides again; when the chosen resource is no longer a candidate, the rule's pick is used.

An item a decision changes at a visit (another candidate chosen, or declared not available, and a re-review
whose decision still applies) is listed in the visit's ``settled``
(:meth:`fhir_adapter.crf.models.VisitRecord.settled_results`): every derivation of that visit uses the
adjudicated value of the item — or none — instead of the results its own look-back would take (SLEDAI-2K's lab
descriptors read every result of the window from ``crf.findings``), so a result the reviewer set aside is
neither scored nor cited as a source at that visit, and a chosen one is the only one of its item there.
Accepting the rule's pick changes nothing a derivation reads (it confirms the value; SLEDAI-2K still judges
its whole look-back, as without a decision) — an accept never moves a score. Every candidate the reviewer saw
when accepting counts as reviewed (:meth:`SubjectReview.reviewed_sources`, for ``--reviewed-only``). This
module is the one place the rule is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_adapter.crf.models import Finding, NotDone, SourceRef, SubjectCRF, VisitRecord
from fhir_adapter.mapping.visits import select
from fhir_adapter.review.candidates import finding_for, item_candidates

STATUS_BY_ACTION = {"accept": "accepted", "choose": "changed", "not_available": "not-available", "query": "query"}
#: statuses whose value a person has looked at and settled
REVIEWED = ("accepted", "changed", "not-available")


@dataclass
class SubjectReview:
    """What the decisions did to one subject."""

    crf: SubjectCRF
    candidates: list[dict[str, Any]]
    status: dict[tuple[str, str], str] = field(default_factory=dict)  # (visit, item) → review status
    decisions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    re_review: list[dict[str, Any]] = field(default_factory=list)
    applied: int = 0
    #: one NOT DONE record per item a reviewer declared not available: for the exports only (never in the CRF
    #: the derivations read, nor in crf/<subject>.json)
    not_available: list[NotDone] = field(default_factory=list)

    def crf_file(self, updates: dict[str, Any] | None = None) -> SubjectCRF:
        """The CRF of ``OUT/crf/<subject>.json``: the CRF the derivations read, with ``updates`` — the
        per-record values the endpoints derive (``Endpoint.annotate``: each AE's TEAE and pre-infusion flags,
        each glucocorticoid record's prednisolone-equivalent daily dose), the same records the exports show."""
        return self.crf.model_copy(update=updates) if updates else self.crf

    def export_crf(self, updates: dict[str, Any] | None = None) -> SubjectCRF:
        """The CRF the exports are built from: with ``updates`` and the not-available records among the NOT
        DONE ones."""
        extra = {"not_done": [*self.crf.not_done, *self.not_available]} if self.not_available else {}
        return self.crf.model_copy(update={**(updates or {}), **extra})

    def reviewed_sources(self) -> set[str]:
        """Source references without version (``Observation/1``) a reviewer has seen and settled: the value
        chosen, and — for an accepted pick — every candidate shown with it (the reviewer saw them and kept the
        pick; the derivations' look-back may still use them, so they count as reviewed)."""
        refs: set[str] = set()
        for v in self.crf.visits:
            for item, f in v.values.items():
                if self.status.get((v.visit, item)) in ("accepted", "changed"):
                    refs.add(f"{f.source.resource_type}/{f.source.id}")
        for e in self.candidates:
            if self.status.get((e["visit"], e["item"])) == "accepted":
                refs.update(f"{c['source']['resource_type']}/{c['source']['id']}" for c in e["candidates"])
        return refs


def _fingerprint(cands: list[dict[str, Any]]) -> dict[str, tuple[Any, Any, Any]]:
    return {c["id"]: ((c.get("source") or {}).get("version"), c.get("value"), c.get("study_day")) for c in cands}


def changes_since(shown: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[str]:
    """What differs between the candidates a reviewer saw and the current ones (empty: nothing): a candidate
    gone or new, another version or value, or another study day (Day 1 corrected: the visit's distances to its
    target, which the rule picks by, are not what the reviewer saw)."""
    before, after = _fingerprint(shown), _fingerprint(now)
    out = []
    for cid in sorted(before.keys() | after.keys()):
        if cid not in after:
            out.append(f"{cid} is no longer a candidate (removed, retracted or moved out of the window)")
        elif cid not in before:
            out.append(f"{cid} is a new candidate ({after[cid][1]})")
        elif before[cid] != after[cid]:
            (v0, x0, d0), (v1, x1, d1) = before[cid], after[cid]
            if (v0, x0) != (v1, x1):
                what = f"value {x0} → {x1}" if x0 != x1 else "same value"
                out.append(f"{cid} changed in the EHR: version {v0} → {v1}, {what}")
            if d0 != d1:
                out.append(f"{cid} is now on study day {d1} (was {d0}): Day 1 changed")
    return out


def not_available_record(rec: VisitRecord, item: str, domain: str, decision: dict[str, Any],
                         set_aside: Finding | None) -> NotDone:
    """The NOT DONE record of an item a reviewer declared not available at visit ``rec``: the reviewer's reason,
    the visit's date, and as its source the result the reviewer set aside (the value in use, else the rule's
    pick the reviewer was shown)."""
    if set_aside is not None:
        source, status = set_aside.source, set_aside.status
        category, loinc = set_aside.category, set_aside.loinc
    else:
        shown = decision.get("shown") or {}
        c = next((c for c in shown.get("candidates") or [] if c["id"] == shown.get("picked")), None) or {}
        src = c.get("source") or {}
        ref = str(shown.get("picked") or "").split("#")[0].partition("/")
        source = SourceRef(resource_type=src.get("resource_type") or ref[0], id=src.get("id") or ref[2],
                           version=src.get("version"))
        status, category, loinc = c.get("status") or "", None, None
    return NotDone(domain=domain, item=item, reason=str(decision.get("reason") or ""), date=rec.date,
                   study_day=rec.study_day, visit=rec.visit, category=category, loinc=loinc, status=status,
                   source=source)


def _take_out(crf: SubjectCRF, study: Any, f: Finding, new_values: dict[str, dict[str, Finding]],
              visits: dict[str, VisitRecord], moved: list[Finding]) -> None:
    """A result a decision put in another visit leaves the visit the rule had placed it in (an unscheduled
    one): that visit keeps the rule's pick among its other results of the item, or none — never the same
    result twice in the CRF and its exports."""
    home = f.visit
    if home is None or home not in new_values or new_values[home].get(f.item) != f:
        return  # the home visit keeps another result (the rule's pick, or a decision's)
    rest = [g for g in crf.findings if g.item == f.item and g.visit == home and g not in moved]
    if rest and f.item in study.items:
        item = study.items[f.item]
        new_values[home][f.item] = select(rest, item.select, visits[home].target_day, item.worse)
    else:
        del new_values[home][f.item]


def status_of(entry: dict[str, Any] | None, decision: dict[str, Any] | None) -> tuple[str, list[str]]:
    """An item's review status given its candidates entry (None: no result any more) and its current
    decision, with what changed in the EHR since the decision (empty unless ``re-review``)."""
    if decision is None:
        return "unreviewed", []
    diffs = changes_since(decision["shown"].get("candidates") or [], entry["candidates"] if entry else [])
    if entry is None:
        diffs = diffs or [f"no result of {decision['item']} at {decision['visit']} any more"]
    elif decision["action"] == "accept" and entry.get("picked") != decision["shown"].get("picked"):
        # an accept confirms the rule's pick the reviewer saw: a pick the rule now makes was never confirmed
        diffs.append(f"the rule now picks {entry.get('picked')} (the reviewer accepted "
                     f"{decision['shown'].get('picked')})")
    if diffs:
        return "re-review", diffs
    if decision.get("open_query"):
        return "query", []
    return STATUS_BY_ACTION[decision["action"]], []


def apply_decisions(crf: SubjectCRF, study: Any, current: dict[tuple[str, str, str], dict[str, Any]]) -> SubjectReview:
    """The subject's CRF with its decisions applied, and each item's review status."""
    cands = item_candidates(crf, study)
    review = SubjectReview(crf=crf, candidates=cands)
    entries = {(e["visit"], e["item"]): e for e in cands}
    for e in cands:
        review.status[(e["visit"], e["item"])] = "unreviewed"
    mine = {(v, i): d for (s, v, i), d in current.items() if s == crf.subject_id}
    if not mine:
        return review
    visits = {v.visit: v for v in crf.visits}
    new_values = {v.visit: dict(v.values) for v in crf.visits}
    settled: dict[str, set[str]] = {v.visit: set() for v in crf.visits}  # visit → items its decision settles
    moved: list[Finding] = []  # results a decision put in another visit than the one the rule placed them in
    for (visit, item), d in sorted(mine.items()):
        review.decisions[(visit, item)] = d
        entry = entries.get((visit, item))
        status, diffs = status_of(entry, d)
        if d["action"] in ("accept", "choose") and visit in visits:
            f = finding_for(crf, study, visit, item, d["candidate"])
            if f is not None and entry is not None and any(c["id"] == d["candidate"] for c in entry["candidates"]):
                new_values[visit][item] = f
                if d["action"] == "choose":  # an accept confirms the pick: the look-back stays the rule's
                    settled[visit].add(item)
                review.applied += 1
                if f.visit is not None and f.visit != visit:
                    moved.append(f)
            elif not diffs:  # a result the decision names that is no candidate (nor was when it was shown): the
                # rule's pick stands, so the item is not "changed" — it needs a reviewer again
                status, diffs = "re-review", [f"{d['candidate']} is not a candidate of {item} at {visit}: the "
                                              "rule's pick is used"]
        elif d["action"] == "not_available" and visit in visits:
            set_aside = new_values[visit].pop(item, None)
            if set_aside is None and entry is not None and entry.get("picked"):
                # a CRF an earlier run wrote with this decision applied (an incremental run's unchanged subject):
                # its value was set aside then — the rule's pick among its findings, the same result
                set_aside = finding_for(crf, study, visit, item, entry["picked"])
            settled[visit].add(item)
            if item in study.items:
                review.not_available.append(
                    not_available_record(visits[visit], item, study.items[item].domain, d, set_aside))
            review.applied += 1
        if diffs:
            review.re_review.append({
                "subject_id": crf.subject_id, "visit": visit, "item": item, "decision_seq": d["seq"],
                "action": d["action"], "reviewer": d["reviewer"], "at": d["at"], "changes": diffs,
            })
        review.status[(visit, item)] = status
    for f in moved:
        _take_out(crf, study, f, new_values, visits, moved)
    review.crf = crf.model_copy(update={"visits": [
        v.model_copy(update={"values": new_values[v.visit], "settled": frozenset(settled[v.visit])})
        for v in crf.visits]})
    return review
