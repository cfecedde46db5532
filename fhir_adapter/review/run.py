"""The review's part of a run: decisions applied per subject, candidates written, write-back held.

* ``OUT/review/candidates/<subject>.json`` — every candidate per visit and item (:mod:`.candidates`) with
  the item's review status as of this run; the review app reads it.
* ``run-report.json`` → ``review``: the decision file, how many decisions applied, and every decision
  flagged for re-review with what changed in the EHR.
* ``reviewed_only``: result resources not derived solely from reviewed values are held back from the
  write-back (not written, not retracted; written by a later run once reviewed).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.job.outpaths import OutFolders
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.review.apply import SubjectReview, apply_decisions
from fhir_adapter.review.store import DecisionStore
from fhir_adapter.study.load import Study
from fhir_adapter.writeback.sources import result_sources
from fhir_adapter.writeback.state import Plan, WrittenState, result_id

CANDIDATES_DIR = Path("review") / "candidates"


def candidates_document(review: SubjectReview) -> dict[str, Any]:
    crf = review.crf
    items = [{**e, "review_status": review.status.get((e["visit"], e["item"]), "unreviewed")}
             for e in review.candidates]
    return {"subject_id": crf.subject_id, "arm": crf.arm, "day1": crf.day1.isoformat() if crf.day1 else None,
            "items": items}


def candidates_file(review: SubjectReview) -> bytes:
    """The bytes of ``OUT/review/candidates/<subject>.json``."""
    return orjson.dumps(candidates_document(review))


@dataclass
class ReviewCounts:
    """What the run report counts of one subject's review (sent instead of the review by a worker)."""

    applied: int
    re_review: list[dict[str, Any]]
    #: the review status of each (visit, item), in the review's order
    statuses: list[str]

    @classmethod
    def of(cls, review: SubjectReview) -> ReviewCounts:
        return cls(review.applied, review.re_review, list(review.status.values()))


def _sources(resource: dict[str, Any]) -> set[str]:
    return {r.split("/_history/")[0] for r in result_sources(resource)}


class ReviewRun:
    def __init__(self, out: Path, study: Study, state_dir: Path | None = None, reviewed_only: bool = False,
                 runlog: RunLog | None = None) -> None:
        self.out = Path(out)
        self._folders = OutFolders(self.out)
        self.runlog = runlog
        self.study = study
        self.store = DecisionStore.under(out, state_dir)
        chain = self.store.read()  # TamperedError: the run stops, decisions are never silently dropped
        self.torn = chain.torn
        self.decisions = len(chain.entries)
        self.head = chain.head
        self.current = chain.current()
        self.reviewed_only = reviewed_only
        self.applied = 0
        self.re_review: list[dict[str, Any]] = []
        self.held: list[str] = []
        self.status_counts: dict[str, int] = {}
        shutil.rmtree(self.out / CANDIDATES_DIR, ignore_errors=True)

    def subject(self, crf: SubjectCRF, file_name: str) -> SubjectReview:
        """Apply the subject's decisions; write its candidates file."""
        review = apply_decisions(crf, self.study, self.current)
        self.record(review, file_name)
        return review

    def record(self, review: SubjectReview, file_name: str) -> None:
        """Account for decisions applied elsewhere (the per-subject engine); write the candidates file."""
        self.account(ReviewCounts.of(review))
        self.candidates_path(file_name).write_bytes(candidates_file(review))

    def candidates_path(self, file_name: str) -> Path:
        """Where the subject's candidates file goes (its folder created)."""
        return self._folders.file(self.out / CANDIDATES_DIR / f"{file_name}.json")

    def account(self, counts: ReviewCounts) -> None:
        """Account for one subject's decisions (:meth:`record` without the candidates file)."""
        self.applied += counts.applied
        self.re_review.extend(counts.re_review)
        for r in counts.re_review if self.runlog else []:
            assert self.runlog is not None
            self.runlog.warn(f"{r['item']} at {r['visit']}: decision #{r['decision_seq']} of {r['reviewer']} needs "
                             f"re-review: {'; '.join(r['changes'])}", subject_id=r["subject_id"], rule="re-review")
        for s in counts.statuses:
            self.status_counts[s] = self.status_counts.get(s, 0) + 1

    def writable(self, review: SubjectReview, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The result resources that may be written back: all, or with ``reviewed_only`` those derived
        solely from values a reviewer accepted or chose."""
        if not self.reviewed_only:
            return resources
        ok = review.reviewed_sources()
        keep = []
        for r in resources:
            src = _sources(r)
            if r.get("resourceType") == "Observation" and not (src and src <= ok):
                self.held.append(result_id(r))
            else:
                keep.append(r)
        return keep

    def hold(self, plan: Plan, state: WrittenState, held: set[str]) -> None:
        """Keep held results out of the state: neither recorded as written nor retracted."""
        for ident in held:
            old = state.results.get(ident)
            if old is not None:
                plan.entries[ident] = old
            else:
                plan.entries.pop(ident, None)

    def report(self) -> dict[str, Any]:
        """The ``review`` section of the run report."""
        return {
            "decisions_file": str(self.store.path),
            "decisions": self.decisions,
            "decisions_head": self.head,  # hash of the last entry: keep it to detect a later truncation
            "applied": self.applied,
            "items": dict(sorted(self.status_counts.items())),
            "re_review": self.re_review,
            "writeback_reviewed_only": self.reviewed_only,
            "held_back": sorted(self.held),
            **({"torn_last_line": self.torn} if self.torn else {}),
        }
