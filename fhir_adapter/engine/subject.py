"""The per-subject work as one function: (study, one subject's resources) → :class:`SubjectOutcome`.

Everything a subject needs is in :class:`SubjectWork` (the study, the reviewers' current decisions, the site
roster's infusion dates and adapter-owned ResearchSubjects) and everything it produces is in the outcome (CRF,
results row, write-back resources with their R4 check, and the log entries: quarantine, counts, warnings).
Both are picklable, so the same function runs in the run's own process, in worker processes
(:mod:`fhir_adapter.engine.parallel`) or on Spark executors (:mod:`fhir_adapter.engine.spark`); what is
study-wide (file names, the write-back state, exports, study.json, the run report) stays with the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fhir_adapter.crf.document import crf_document
from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.disk_full import is_disk_full
from fhir_adapter.export.writer import ExportRenderer, SubjectExport
from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.job.runlog import Locations, Quarantined, RunLog
from fhir_adapter.mapping.subject import SubjectMapper
from fhir_adapter.results.spill import row_json
from fhir_adapter.results.study_json import subject_row
from fhir_adapter.results.subject import SubjectResults, derive_subject
from fhir_adapter.review.apply import SubjectReview, apply_decisions
from fhir_adapter.review.run import ReviewCounts, candidates_file
from fhir_adapter.roster.day1 import RosterInfusion, with_day1
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.roster.site_csv import research_subject_resource
from fhir_adapter.study.load import Study
from fhir_adapter.terminology import units
from fhir_adapter.writeback.bundle import offline_transaction
from fhir_adapter.writeback.sources import result_sources
from fhir_adapter.writeback.state import content_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubjectWork:
    """What every subject of one run shares (sent once to each worker or executor)."""

    study: Study
    #: the reviewers' current decisions per (subject, visit, item) (DecisionStore.current())
    decisions: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    #: subject ID → infusion date/time from the site roster CSV
    roster_infusions: dict[str, RosterInfusion] = field(default_factory=dict)
    #: patient id → ResearchSubject the adapter owns (created from the site roster CSV)
    owned: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the ResearchStudy the adapter created from study.yaml, if any
    owned_study: dict[str, Any] | None = None
    #: render each subject's export rows into the files' text here (:class:`SubjectOutcome.export`), so the
    #: run's process only appends them (worker processes: with ``pieces``, the text goes to a file,
    #: :meth:`SubjectExport.to_piece`)
    render_exports: bool = False
    #: a folder (in the run's staging folder) where each subject's files — CRF, review candidates, write-back
    #: bundle — are written where the subject is processed (:class:`SubjectPieces`); the run's process moves
    #: them into place. Implies ``render_exports``.
    pieces: Path | None = None
    #: the FHIR base of the source's export (absolute references to it are its own): routed NDJSON lines are
    #: checked with it (source/files.py checked_records)
    source_base: str | None = None


@dataclass
class SubjectPieces:
    """A subject's files written where it was processed (``SubjectWork.pieces``), named ``<key>.<kind>.json``,
    and what the run's process counts from them instead of receiving the CRF and review."""

    folder: Path
    key: str
    #: the kinds written: ``candidates`` (review/candidates/), ``crf`` (crf/), ``writeback`` (writeback/: the
    #: bundle of :attr:`SubjectOutcome.resources` as they are, without retractions); in a worker the export
    #: text too, as ``<key>.export`` (:meth:`SubjectExport.to_piece`)
    written: list[str] = field(default_factory=list)
    review: ReviewCounts | None = None
    #: scheduled visits of the CRF
    visits: int = 0
    #: the subject's row of results/study.json, as JSON (:func:`fhir_adapter.results.spill.row_json`)
    row: bytes | None = None

    def path(self, kind: str) -> Path:
        return self.folder / f"{self.key}.{kind}.json"

    def export_path(self) -> Path:
        """Where a worker writes the subject's export text (:meth:`SubjectExport.to_piece`)."""
        return self.folder / f"{self.key}.export"

    def write(self, kind: str, data: bytes) -> None:
        self.path(kind).write_bytes(data)
        self.written.append(kind)


@dataclass
class SubjectOutcome:
    """One subject's results and log entries; ``error`` set when the subject could not be processed (the log
    entries up to the failure are kept, as a run in one process keeps them)."""

    subject_id: str
    patient_id: str
    enrollee: Enrollee | None = None
    review: SubjectReview | None = None
    row: dict[str, Any] | None = None
    #: CRF fields with the endpoints' per-record derived values (the AEs' TEAE flag, the glucocorticoid records'
    #: prednisolone-equivalent dose): the CRF file and the exports show them (the CRF the derivations read is
    #: the mapping's output with the reviewers' decisions)
    export_updates: dict[str, Any] = field(default_factory=dict)
    #: write-back resources (before the state's retractions and reviewed-only hold-back) and, per resource,
    #: its R4 problem (None: valid)
    resources: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str | None] = field(default_factory=list)
    #: per resource, its content hash (writeback/state.py content_hash), made where the resource was: the run's
    #: process compares it with the written state without hashing every result again
    hashes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)
    error: str | None = None
    #: a subject who left, carried forward from its last CRF (never read again; its results planned as any
    #: subject's: docs/clinical-rules.md#withdrawn-subjects)
    carried: bool = False
    #: ``Type/id`` → status of the subject's source resources, when the caller does not keep the resources
    #: (writeback/state.py source_statuses)
    statuses: dict[str, str] | None = None
    #: the subject's exports and its CRF file rendered (with ``SubjectWork.render_exports``)
    export: SubjectExport | None = None
    crf_json: bytes | None = None
    #: the subject's files already written (with ``SubjectWork.pieces``); ``review`` is then not sent
    pieces: SubjectPieces | None = None
    #: what reading the subject's records counted and quarantined (lines that were not its resources after
    #: all): the run's, not the subject's (not in the subject's coverage)
    read_counts: dict[str, int] = field(default_factory=dict)
    read_quarantine: list[Quarantined] = field(default_factory=list)

    @property
    def crf(self) -> SubjectCRF:
        assert self.review is not None
        return self.review.crf

    def merge_log(self, runlog: RunLog) -> None:
        """Add this subject's counts, warnings and quarantined input to the run's log."""
        for k, n in self.read_counts.items():
            runlog.count(k, n)
        runlog.quarantine.extend(self.read_quarantine)
        for k, n in self.counts.items():
            runlog.count(k, n)
        runlog.warnings.extend(self.warnings)
        runlog.quarantine.extend(self.quarantine)


def json_file(data: Any) -> bytes:
    """The bytes of an OUT JSON file (indented, keys sorted)."""
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def writeback_resources(r: SubjectResults, e: Enrollee, study: Study,
                        runlog: RunLog | None = None) -> list[dict[str, Any]]:
    """The result resources of one subject, endpoint by endpoint in study.yaml's order; a result that names
    no source is never written back (counted ``writeback.no-source``)."""
    results = r.observations(e, study)
    kept = [x for x in results if result_sources(x)]
    if runlog is not None and len(kept) < len(results):
        runlog.count("writeback.no-source", len(results) - len(kept))
    return kept


class SubjectEngine:
    """Holds what is costly to build once per process (the mappers); :meth:`fresh` and :meth:`cached` are
    the per-subject function."""

    def __init__(self, work: SubjectWork) -> None:
        self.work = work
        units.learn(work.study.unit_conversions)  # a worker converts the study's units without the UCUM registry
        self.log = RunLog()
        self.mapper = SubjectMapper(work.study, self.log)
        self._renderer: ExportRenderer | None = None

    def prepare(self) -> None:
        """Build now what the first subject would otherwise build (the export renderer and its tables)."""
        if self._renderer is None and (self.work.render_exports or self.work.pieces is not None):
            self._renderer = ExportRenderer(self.work.study)

    def fresh(self, e0: Enrollee, resources: list[dict[str, Any]], key: str | None = None,
              where: Locations | None = None) -> SubjectOutcome:
        """Day 1, map, review decisions, derive, write-back resources from the subject's source resources;
        with ``key`` and ``SubjectWork.pieces``, the subject's files are written too (:class:`SubjectPieces`).
        ``where``: the file, line and Bundle entry of the resources (source/files.py checked_records), given to
        what the mapping quarantines."""
        out = SubjectOutcome(subject_id=e0.subject_id, patient_id=e0.patient_id)
        if key is not None and self.work.pieces is not None:
            out.pieces = SubjectPieces(self.work.pieces, key)
        try:
            resources = self.mapper.checked(e0.subject_id, resources)  # Day 1 from valid records only
            e = with_day1(e0, resources, self.work.study, self.log, self.work.roster_infusions.get(e0.subject_id))
            crf = self.mapper.map(e, resources, checked=True)
            if where:
                self.log.locate(where)
            self._derive(out, e, crf)
        except Exception as exc:  # one subject's failure never stops the others (a full disk stops them all)
            if is_disk_full(exc):
                raise
            log.debug("subject %s failed", e0.subject_id, exc_info=True)
            out.error = str(exc)
            if where:
                self.log.locate(where)
        self._drain(out)
        if out.pieces is not None:  # what the run's process needs of these is in the pieces
            out.review = None
            if out.row is not None:
                out.pieces.row, out.row = row_json(out.row), None
        return out

    def cached(self, e: Enrollee, crf: SubjectCRF, *, left: bool = False) -> SubjectOutcome:
        """The same from a CRF of an earlier run (an incremental run's unchanged subject). ``left``: a subject who
        has left, carried forward — its CRF bounded by its ResearchSubject now (:meth:`SubjectMapper.left`), its
        results derived from it as from any CRF (what is unchanged is not written again)."""
        out = SubjectOutcome(subject_id=e.subject_id, patient_id=e.patient_id, carried=left)
        try:
            self._derive(out, e, self.mapper.left(crf, e) if left else crf, left=left)
        except Exception as exc:
            if is_disk_full(exc):
                raise
            log.debug("subject %s failed", e.subject_id, exc_info=True)
            out.error = str(exc)
        self._drain(out)
        return out

    def _derive(self, out: SubjectOutcome, e: Enrollee, crf: SubjectCRF, *, left: bool = False) -> None:
        work = self.work
        out.enrollee = e
        review = apply_decisions(crf, work.study, work.decisions)  # the reviewers' decisions replace the picks
        out.review = review
        if out.pieces is not None:
            out.pieces.review = ReviewCounts.of(review)
            out.pieces.write("candidates", candidates_file(review))
        res = derive_subject(review.crf, work.study)
        for b in res.baselines():  # listed in results/study.json `baselines`; counted in the run report
            self.log.count("baseline.before-participation" if b.before_participation
                           else "baseline.not-the-visits-pick" if b.visit else "baseline.outside-visits")
        out.row = subject_row(res)
        out.export_updates = res.export_updates()
        resources = writeback_resources(res, e, work.study, self.log)
        if not left and e.patient_id in work.owned:  # a ResearchSubject the adapter created from the site roster CSV
            resources.insert(0, research_subject_resource(work.owned[e.patient_id], infused=e.day1 is not None))
            if work.owned_study is not None:  # ... of the ResearchStudy it created from study.yaml
                resources.insert(0, dict(work.owned_study))
        out.resources = resources
        out.problems = [r4_problem(x, full=True) for x in resources]
        out.hashes = [content_hash(x) for x in resources]
        if work.render_exports or out.pieces is not None:
            if self._renderer is None:
                self._renderer = ExportRenderer(work.study)
            crf_json = json_file(crf_document(review.crf_file(out.export_updates)))
            out.export = self._renderer.render(
                review.export_crf(out.export_updates), review.status, review.decisions,
                quarantined=list(self.log.quarantine) if out.pieces is not None else None)
            if out.pieces is None:
                out.crf_json = crf_json
                return
            if work.render_exports:  # a worker: the export text goes to a file, not through the pipe
                out.export.to_piece(out.pieces.export_path())
            out.pieces.visits = sum(1 for v in review.crf.visits if not v.unscheduled)
            out.pieces.write("crf", crf_json)
            if not any(out.problems):  # else the run's process reports the invalid resource
                out.pieces.write("writeback", json_file(offline_transaction(resources, e.patient_id)))

    def _drain(self, out: SubjectOutcome) -> None:
        out.counts = dict(self.log.counts)
        out.warnings = list(self.log.warnings)
        out.quarantine = list(self.log.quarantine)
        self.log.counts.clear()
        self.log.warnings.clear()
        self.log.quarantine.clear()


_engines: dict[int, SubjectEngine] = {}


def process_subject(work: SubjectWork, e0: Enrollee, resources: list[dict[str, Any]]) -> SubjectOutcome:
    """The per-subject function: one engine (mappers) per ``work`` and process, reused across subjects."""
    engine = _engines.get(id(work))
    if engine is None or engine.work is not work:
        _engines.clear()
        engine = _engines[id(work)] = SubjectEngine(work)
    return engine.fresh(e0, resources)
