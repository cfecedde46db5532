"""Coverage: what the site's EHR feeds into each CRF item at each scheduled visit, and what not.

Per subject, item and scheduled visit the cell is, the first case that applies:

1. ``filled`` — the visit holds a value for the item (the CRF is pre-populated);
2. ``quarantined`` — a result for the item dated in the visit window was quarantined (see the run report's
   ``quarantine`` for the rule and what to do);
3. ``no-data`` — no result for the item in the window.

A subject without Day 1 (no completed infusion) has no visits to fill: it is listed under
``subjects_without_day1`` and counted in no cell. Per item, results outside every window (``out_of_window``;
of them ``out_of_window_before_consent``, dated before the subject's consent: routine care before the trial, not
a visit the site missed) and results with a partial date (``partial_date``, never placed in a visit) are counted
as well.

Written to ``run-report.json`` → ``coverage`` (counts across subjects, per-subject totals, unmapped codes)
and to ``OUT/export/coverage.csv`` (one row per item and visit) and ``OUT/export/coverage-subjects.csv``
(one row per subject and item, one column per visit).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.derive.baseline import before_participation
from fhir_adapter.export.cdisc import testcd_map, visit_numbers
from fhir_adapter.export.sanitize import csv_cells
from fhir_adapter.job.runlog import Quarantined
from fhir_adapter.mapping.common import codings
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import DateError, parse_fhir_date, study_day

FILLED, QUARANTINED, NO_DATA = "filled", "quarantined", "no-data"
STATES = {
    FILLED: "the visit holds a value for the item",
    QUARANTINED: "a result for the item in the visit window was quarantined (see `quarantine`)",
    NO_DATA: "no result for the item in the visit window",
}


def unmapped_codes(counts: dict[str, int]) -> list[dict[str, Any]]:
    """``unmapped.<system>|<code>`` run-log counters as a list, most frequent first."""
    out = []
    for key, n in counts.items():
        if key.startswith("unmapped."):
            system, _, code = key[len("unmapped."):].rpartition("|")
            out.append({"system": system, "code": code, "count": n})
    return sorted(out, key=lambda r: (-r["count"], r["system"], r["code"]))


@dataclass
class SubjectCoverage:
    """One subject's share of the coverage (:meth:`Coverage.subject`): per item the state of each visit, the
    subject's rows of coverage-subjects.csv, its totals for the report."""

    subject_id: str
    partial_date: Counter[str] = field(default_factory=Counter)
    out_of_window: Counter[str] = field(default_factory=Counter)
    #: of ``out_of_window``, those dated before the subject's consent (participation start)
    before_consent: Counter[str] = field(default_factory=Counter)
    #: per item of the study (its order), the state per scheduled visit; empty without Day 1
    states: list[list[str]] = field(default_factory=list)
    csv: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


class Coverage:
    """Accumulates coverage subject by subject; per-subject rows go straight to ``coverage-subjects.csv``."""

    def __init__(self, study: Study, folder: Path | None) -> None:
        """``folder``: where the CSV files go; None for one that only computes subjects' shares (a worker)."""
        self.study = study
        self.visits = [v.id for v in study.schedule.visits]
        self.items = list(study.items)
        self.testcd = testcd_map(study)
        #: per (item, visit), the subjects in each state (filled in by :meth:`close`)
        self.cells: dict[tuple[str, str], Counter[str]] = {
            (i, v): Counter() for i in self.items for v in self.visits
        }
        #: per item (the study's order), the subjects with each sequence of states over the visits
        self._patterns: list[Counter[tuple[str, ...]]] = [Counter() for _ in self.items]
        self.out_of_window: Counter[str] = Counter()
        self.before_consent: Counter[str] = Counter()
        self.partial_date: Counter[str] = Counter()
        self.per_subject: dict[str, dict[str, Any]] = {}
        self.without_day1: list[str] = []
        if folder is None:
            return
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = (self.folder / "coverage-subjects.csv").open("w", newline="", encoding="utf-8")
        csv.writer(self._fh).writerow(["SUBJID", "ITEM", "DOMAIN", "TESTCD", *self.visits])

    def _quarantined_cells(self, crf: SubjectCRF, quarantined: list[Quarantined]) -> set[tuple[str, str]]:
        """(item, visit) of each quarantined Observation of the subject naming a mapped code and a date."""
        cells: set[tuple[str, str]] = set()
        if crf.day1 is None:
            return cells
        idx = self.study.code_index
        windows = [(v.id, v.window) for v in self.study.schedule.visits]
        for q in quarantined:
            raw = q.raw
            if q.resource_type != "Observation" or not isinstance(raw, dict):
                continue
            comps = raw.get("component") or []
            parts = [raw.get("code"), *(c.get("code") for c in comps if isinstance(c, dict))]
            items = {idx[k] for cc in parts for k in codings(cc) if k in idx}
            period = raw.get("effectivePeriod")
            when = raw.get("effectiveDateTime") or raw.get("effectiveInstant") or \
                (period.get("start") if isinstance(period, dict) else None)
            try:
                fd = parse_fhir_date(when, self.study.info.timezone) if isinstance(when, str) else None
            except DateError:
                fd = None
            if fd is None or fd.date is None:
                continue
            d = study_day(fd.date, crf.day1)
            visit = next((vid for vid, (lo, hi) in windows if lo <= d <= hi), None)
            if visit is not None:
                cells |= {(item, visit) for item in items}
        return cells

    def add(self, crf: SubjectCRF, quarantined: list[Quarantined]) -> None:
        """Count one subject; ``quarantined`` = the run-log entries added while mapping it."""
        self.merge(self.subject(crf, quarantined))

    def subject(self, crf: SubjectCRF, quarantined: list[Quarantined]) -> SubjectCoverage:
        """One subject's share (wherever the subject is processed: a worker); :meth:`merge` counts it."""
        sc = SubjectCoverage(subject_id=crf.subject_id)
        for f in crf.findings:
            if f.partial_date and f.date is None:
                sc.partial_date[f.item] += 1
            elif f.visit is None and crf.day1 is not None:
                sc.out_of_window[f.item] += 1
                if f.date is not None and before_participation(crf, f.date):
                    sc.before_consent[f.item] += 1
        if crf.day1 is None:
            sc.summary = {"day1": None}
            return sc
        filled = {(item, v.visit) for v in crf.visits for item in v.values}
        q_cells = self._quarantined_cells(crf, quarantined)
        totals: Counter[str] = Counter()
        q_list: list[str] = []
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        for item in self.items:
            states = [FILLED if (item, visit) in filled else QUARANTINED if (item, visit) in q_cells else NO_DATA
                      for visit in self.visits]
            if QUARANTINED in states:
                q_list += [f"{item}@{v}" for v, state in zip(self.visits, states, strict=True) if state == QUARANTINED]
            totals.update(states)
            sc.states.append(states)
            domain = self.study.items[item].domain
            w.writerow([*csv_cells([crf.subject_id, item, domain, self.testcd[item]]), *states])  # states: plain
        sc.csv = buf.getvalue()
        sc.summary = {
            "day1": crf.day1.isoformat(), FILLED: totals[FILLED], NO_DATA: totals[NO_DATA],
            QUARANTINED: totals[QUARANTINED], "quarantined_cells": q_list,
        }
        return sc

    def merge(self, sc: SubjectCoverage) -> None:
        """Count one subject's share (:meth:`subject`): the cells, the totals, its rows of coverage-subjects.csv."""
        self.partial_date.update(sc.partial_date)
        self.out_of_window.update(sc.out_of_window)
        self.before_consent.update(sc.before_consent)
        if sc.summary.get("day1") is None:
            self.without_day1.append(sc.subject_id)
        for patterns, states in zip(self._patterns, sc.states, strict=False):
            patterns[tuple(states)] += 1   # an item's states over the visits repeat from subject to subject
        self._fh.write(sc.csv)
        self.per_subject[sc.subject_id] = sc.summary

    def close(self, run_counts: dict[str, int]) -> dict[str, Any]:
        """Write ``coverage.csv``; return the ``coverage`` section of the run report."""
        self._fh.close()
        for item, patterns in zip(self.items, self._patterns, strict=True):
            for states, n in patterns.items():
                for visit, state in zip(self.visits, states, strict=True):
                    self.cells[(item, visit)][state] += n
        vnum = visit_numbers(self.study)
        items_report = []
        with (self.folder / "coverage.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["ITEM", "DOMAIN", "TESTCD", "LABEL", "VISIT", "VISITNUM", "SUBJECTS", "FILLED",
                        "QUARANTINED", "NO_DATA", "PCT_FILLED"])
            for item in self.items:
                it = self.study.items[item]
                per_visit = {}
                for visit in self.visits:
                    c = self.cells[(item, visit)]
                    n = sum(c.values())
                    pct = f"{100 * c[FILLED] / n:.1f}" if n else ""
                    w.writerow(csv_cells([item, it.domain, self.testcd[item], it.label, visit, vnum[visit], n,
                                          c[FILLED], c[QUARANTINED], c[NO_DATA], pct]))
                    per_visit[visit] = {FILLED: c[FILLED], QUARANTINED: c[QUARANTINED], NO_DATA: c[NO_DATA]}
                items_report.append({
                    "item": item, "domain": it.domain, "testcd": self.testcd[item],
                    FILLED: sum(v[FILLED] for v in per_visit.values()),
                    QUARANTINED: sum(v[QUARANTINED] for v in per_visit.values()),
                    NO_DATA: sum(v[NO_DATA] for v in per_visit.values()),
                    "out_of_window": self.out_of_window[item],
                    "out_of_window_before_consent": self.before_consent[item], "partial_date": self.partial_date[item],
                    "visits": per_visit,
                })
        return {
            "states": STATES,
            "subjects": len(self.per_subject),
            "subjects_without_day1": self.without_day1,
            "never_filled": [r["item"] for r in items_report if not r[FILLED]],
            "items": items_report,
            "per_subject": self.per_subject,
            "unmapped_codes": unmapped_codes(run_counts),
            "files": ["export/coverage.csv", "export/coverage-subjects.csv"],
        }
