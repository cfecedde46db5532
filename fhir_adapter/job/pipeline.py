"""The job: source → roster → map → CRF → derive → results; write-back bundles (and, with a sink, the writes
to the FHIR server), exports and the run report.

Each subject is processed on its own: a subject whose data cannot be mapped is reported and skipped,
never stopping the others.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import orjson

from fhir_adapter.crf.document import crf_document
from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.disk_full import is_disk_full
from fhir_adapter.engine.collector import fewer_collections
from fhir_adapter.engine.parallel import file_outcomes, subject_outcomes
from fhir_adapter.engine.subject import SubjectEngine, SubjectOutcome, SubjectWork, json_file
from fhir_adapter.export import ExportWriter
from fhir_adapter.fhir.errors import FhirAuthError, FhirError, FhirHttpError, FhirServerUnavailable
from fhir_adapter.fhir.flow import is_unavailability
from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.fhir.server_config import last_run
from fhir_adapter.job import exit_codes
from fhir_adapter.job.outlock import hold_out
from fhir_adapter.job.outpaths import (
    OutFolders,
    SubjectFileNames,
    UnsafePath,
    inside,
    quarantine_file_name,
    subject_file_name,
)
from fhir_adapter.job.quarantine import quarantine_record
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.job.staging import Staging
from fhir_adapter.mapping.exposure import infusion_record
from fhir_adapter.results.spill import SubjectRows, write_study_json
from fhir_adapter.review.run import ReviewRun
from fhir_adapter.roster.check import nobody_enrolled
from fhir_adapter.roster.enrollees import Enrollee, RosterError, build_roster, is_owned
from fhir_adapter.roster.site_csv import csv_identifiers, csv_subject_ids, infusion_dates, reconcile
from fhir_adapter.roster.subject_ids import subject_id
from fhir_adapter.source.base import Source, ref_id
from fhir_adapter.source.parts import splittable
from fhir_adapter.study.load import Study
from fhir_adapter.study.timeline import zone
from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.version import __version__
from fhir_adapter.writeback.bundle import offline_transaction
from fhir_adapter.writeback.sink import PARTIAL_WHAT_TO_DO, WriteResult
from fhir_adapter.writeback.state import Plan, WrittenState, result_id

log = logging.getLogger(__name__)


#: (enrolled patients by id, the run's SubjectWork) → (enrollee, outcome, source resources) in patient-id order
EngineOutcomes = Callable[[dict[str, Enrollee], SubjectWork],
                          Iterator[tuple[Enrollee, SubjectOutcome, list[dict[str, Any]]]]]


class SubjectFailed(Exception):
    """A subject the per-subject engine could not process (the message says why)."""


class Sink(Protocol):
    """Where results are written besides OUT (a FHIR server)."""

    def start(self, enrolled_patients: set[str], left_patients: set[str] | None = None,
              subject_ids: Collection[str] = ()) -> None:
        """``subject_ids``: every subject ID of the study the run knows (enrolled, left, written before)."""

    def write(self, e: Enrollee, resources: list[dict[str, Any]], retractions: Sequence[dict[str, Any]] = (),
              held: Collection[str] = (), former_patients: Collection[str] = ()) -> WriteResult: ...


@dataclass
class RunSummary:
    out: Path
    subjects: int = 0
    subjects_failed: list[str] = field(default_factory=list)
    visits: int = 0
    results_written: int = 0
    server_writes: int = 0
    server_unchanged: int = 0
    subjects_not_written: list[str] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)
    quarantined: int = 0
    warnings: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    #: per subject not processed or not written: stage, request, last status, error, what to do
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: set when the run stopped early (server unavailable, authentication failed): see :class:`Stopped`
    stopped: Stopped | None = None
    #: ``--dry-run``: nothing is written to the server nor recorded, so ``results_written``, ``server_writes``
    #: and the ``writeback_state`` changes stay 0; what the run would have written is counted here instead
    #: (run report: ``summary.would_write``)
    dry_run: bool = False
    would_write: dict[str, int] = field(default_factory=lambda: {"results": 0, "server_writes": 0})
    #: the SHA-256 of the roster CSV as the run read it (recorded in ``state/last-run.json``), None: no CSV
    roster_csv_sha256: str | None = None
    #: the study's mapping files (and site overlay) and this version, as one hash (recorded in
    #: ``state/last-run.json``): an incremental run whose CRFs of unchanged subjects were mapped by other rules
    #: reads every subject in full (:func:`mapping_fingerprint`)
    mapping_fingerprint: str = ""
    #: subject ID → its Day 1 (ISO date, None: none) in this run, recorded in ``state/last-run.json``: the next
    #: run says when a subject's Day 1 moved
    day1: dict[str, str | None] = field(default_factory=dict)
    #: subjects who left (withdrawn, off-study) whose CRF of an earlier run is in the outputs again, not read
    #: (docs/clinical-rules.md#withdrawn-subjects); not counted in ``subjects``
    carried_forward: list[str] = field(default_factory=list)
    #: subjects who left whose CRF could not be carried forward (kept in OUT/crf as it was); also in
    #: ``subjects_failed``
    carried_failed: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 ok, 1 nobody processed (every enrolled subject read failed, or nothing at all, not even a subject who
        left, could be processed), 2 completed with quarantined input or
        subjects not processed / not written, 3 server unavailable (stopped early), 4 authentication failed
        (fhir_adapter/job/exit_codes.py)."""
        if self.stopped is not None:
            return self.stopped.exit_code
        read_failed = len(self.subjects_failed) - len(self.carried_failed)
        if self.subjects == 0 and self.subjects_failed and (read_failed or not self.carried_forward):
            return exit_codes.FAILED  # every subject read failed, or nothing at all could be processed
        if self.quarantined or self.subjects_failed or self.subjects_not_written:
            return exit_codes.COMPLETED_WITH_WARNINGS
        return exit_codes.OK


@dataclass
class Stopped:
    """Why and where a run stopped before every subject was processed."""

    exit_code: int
    reason: str            # server-unavailable | auth-failed
    since: str             # when the server was first seen failing (UTC, ISO 8601)
    error: str
    subjects_done: list[str] = field(default_factory=list)
    subjects_left: list[str] = field(default_factory=list)
    roster_read: bool = True
    #: subjects of ``subjects_left`` whose write, split into several transactions, stopped part-way (the parts
    #: the server confirmed are recorded in state/written.json; the rerun writes the rest)
    subjects_partly_written: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        """The one line the command prints. ``subjects done``: processed and, with ``--post``, written."""
        done = f"{len(self.subjects_done)} subjects done, " + (
            f"{len(self.subjects_left)} left" if self.roster_read else "roster not read")
        partly = f"{len(self.subjects_partly_written)} partly written (recorded: the rerun completes them)" \
            if self.subjects_partly_written else "nothing half-written"
        if self.reason == "auth-failed":
            return f"authentication failed: {self.error}; {done}; {partly} — fix it, then rerun"
        if self.subjects_partly_written:
            done += f", {partly}"
        return f"server unavailable since {self.since}; {done}; rerun ({self.error})"

    def as_report(self) -> dict[str, Any]:
        return {"reason": self.reason, "exit_code": self.exit_code, "since": self.since, "error": self.error,
                "message": self.message, "subjects_done": len(self.subjects_done),
                "subjects_left": self.subjects_left, "subjects_partly_written": self.subjects_partly_written}


class _Stop(Exception):
    """Internal: end the subject loop (the server is down, or authentication failed for good)."""

    def __init__(self, error: FhirError) -> None:
        super().__init__(str(error))
        self.error = error


def _stop_for(exc: BaseException) -> _Stop | None:
    """The failures that end a run instead of one subject."""
    if isinstance(exc, FhirServerUnavailable) or (isinstance(exc, FhirAuthError) and not exc.transient):
        return _Stop(exc)
    return None


def _too_large(exc: FhirHttpError) -> str | None:
    """What to do about a request the server refused for its size (413, 414), by the kind of request; None for
    another status."""
    if exc.status == 414:  # a first search page it refuses goes again as POST: a next-page link or a history query
        return ("the server refused a URL this long (HTTP 414 URI Too Long) — one it built itself (a next-page link) "
                "or a history query; ask its administrators to raise the URL limit of the server or its proxy")
    if exc.status != 413:
        return None
    if (exc.url or "").split("?", 1)[0].endswith("/_search"):  # a subject's own search (a group's is re-asked)
        return ("the server refused a search of a few kilobytes (HTTP 413 Content Too Large): ask its administrators "
                "to raise the request body limit of the server or its proxy")
    return ("the server refused a request body this large (HTTP 413 Content Too Large): lower "
            "client.max_transaction_entries in the --config file (a subject's results are then written in several "
            "transactions), or have the server's (or its proxy's) body limit raised")


def _failure(subject_id: str, stage: str, exc: BaseException | None, error: str | None = None) -> dict[str, Any]:
    """A subject not processed / not written, for the run report: the request, last status, what to do."""
    entry: dict[str, Any] = {"subject_id": subject_id, "stage": stage, "error": error or str(exc)}
    if isinstance(exc, FhirError):
        if exc.method and exc.url:
            entry["request"] = f"{exc.method} {exc.url}"
        status = getattr(exc, "status", None)
        entry["last_status"] = status if status is not None else getattr(exc, "kind", "network")
        entry["attempts"] = exc.attempts
    again = "the next run (full or --since last) picks this subject up again"
    if isinstance(exc, FhirHttpError) and (too_large := _too_large(exc)) is not None:
        entry["what_to_do"] = f"{too_large}; {again}"
    elif isinstance(exc, FhirHttpError) and exc.status < 500 and exc.status != 429:
        entry["what_to_do"] = f"the server refused the request (HTTP {exc.status}): fix what the error names; {again}"
    elif isinstance(exc, FhirError):
        entry["what_to_do"] = f"the server kept failing after every retry: {again}; nothing to repair"
    else:
        entry["what_to_do"] = f"fix what the error names; {again}"
    return entry


def _dump(folders: OutFolders, path: Path, data: Any) -> None:
    folders.file(path).write_bytes(json_file(data))


def run(
    source: Source,
    study: Study,
    out: Path,
    runlog: RunLog | None = None,
    on_subject: Callable[[str], None] | None = None,
    sink: Sink | None = None,
    on_start: Callable[[int], None] | None = None,
    roster_csv: Path | None = None,
    review_state: Path | None = None,
    reviewed_only: bool = False,
    workers: int = 1,
    quarantine_full_copies: bool = False,
    engine_outcomes: EngineOutcomes | None = None,
) -> RunSummary:
    """Run the job. With a ``sink``, results are also written to the server (only what changed).

    ``roster_csv``: a site roster reconciled into adapter-owned ResearchSubjects (see roster_csv.py).
    Incremental runs: subjects the source reports unchanged since the last run (``source.unchanged_subjects()``)
    are not read again; their CRF from the previous run in ``OUT/crf`` is derived again instead.
    Review decisions (``review_state``/review-decisions.jsonl, default ``OUT/state``) replace the rule's pick
    before deriving; ``reviewed_only`` holds back results not derived solely from reviewed values
    (fhir_adapter/review/run.py).
    ``workers``: subjects are processed by the per-subject engine (fhir_adapter/engine/subject.py) in this
    many worker processes (1: in this process); outputs are the same for any number. ``engine_outcomes``: the
    subjects' outcomes from another engine (fhir_adapter/engine/spark.py) instead of ``source.subject_resources``.

    Outputs are atomic (:mod:`fhir_adapter.job.staging`): everything is written into ``OUT/.staging-<run id>/`` and
    moved into OUT when the run has finished. A run that stops early (server unavailable, authentication
    failed: :attr:`RunSummary.stopped`) keeps the previous outputs and replaces only ``run-report.json`` and
    ``state/written.json`` (which records the writes the server confirmed); so does a run that processed nobody
    (exit 1) — its state only when a server confirmed writes; a run that fails with an exception (a full disk
    among them: :mod:`fhir_adapter.disk_full`), is interrupted or killed changes nothing in OUT. The run holds
    the lock of OUT throughout (:mod:`fhir_adapter.job.outlock`): :class:`~fhir_adapter.job.outlock.OutInUse`
    when another process holds it.
    """
    for o in study.overrides:
        log.warning("site overlay overrides the study's factor of item %s for %s: %s -> %s (%s)", o["item"],
                    o["unit"], o["study_factor"], o["site_factor"], o["where"])
    out = Path(out)
    with hold_out(out):   # one run per OUT at a time (OutInUse otherwise)
        staging = Staging(out)
        work_dir = staging.open()
        try:
            with fewer_collections():  # the cycle collector's settings for a run (engine/collector.py)
                summary = _run(source, study, out, work_dir, runlog or RunLog(), on_subject, sink, on_start,
                               roster_csv, review_state or out / "state", reviewed_only, workers,
                               quarantine_full_copies, engine_outcomes)
        except BaseException:
            staging.discard()
            raise
        if summary.stopped is not None:
            staging.commit(("run-report.json", "state/written.json"))
        elif summary.exit_code == exit_codes.FAILED:
            # nobody processed: the previous outputs stay; the report says why, and — when a server confirmed
            # writes meanwhile (a subject who left is written while the others fail) — the state records them
            # (without a server the state follows OUT/writeback, which stays as it was)
            staging.commit(("run-report.json", "state/written.json") if summary.server_writes
                           else ("run-report.json",))
        else:
            staging.commit()
    return summary


def _run(
    source: Source,
    study: Study,
    out: Path,
    work_dir: Path,
    runlog: RunLog,
    on_subject: Callable[[str], None] | None,
    sink: Sink | None,
    on_start: Callable[[int], None] | None,
    roster_csv: Path | None,
    review_state: Path,
    reviewed_only: bool,
    workers: int,
    quarantine_full_copies: bool,
    engine_outcomes: EngineOutcomes | None,
) -> RunSummary:
    """The run itself: reads ``out`` (the previous CRFs, state), writes only into the staging folder."""
    started = dt.datetime.now(dt.UTC)
    summary = RunSummary(out=out, mapping_fingerprint=mapping_fingerprint(study))
    state = WrittenState(out / "state" / "written.json")
    if roster_csv is not None:  # before the CSV is read: an edit made meanwhile differs from what is recorded
        try:
            summary.roster_csv_sha256 = hashlib.sha256(roster_csv.read_bytes()).hexdigest()
        except OSError as exc:
            raise RosterError(f"roster CSV {roster_csv} cannot be read: {exc.strerror or exc} — give the site's "
                              "roster CSV (docs/integrator-guide.md, the roster CSV)") from None
    try:
        roster_input = source.roster(csv_identifiers(roster_csv) if roster_csv is not None else ())
    except FhirError as exc:
        stop = _stop_for(exc)
        if stop is None and not is_unavailability(exc):
            raise
        summary.stopped = _stopped(stop.error if stop else exc, [], [], roster_read=False)
        _write_report(work_dir, source, study, runlog, summary, state, started)
        return summary
    roster_infusions = {}
    if roster_csv is not None:
        roster_input = reconcile(roster_input, roster_csv, study, runlog)
        roster_infusions = infusion_dates(roster_csv, study, runlog)
    owned_study = next((s for s in roster_input.studies if is_owned(s)), None)  # from study.yaml
    day1_sources: list[dict[str, Any]] = []
    roster = build_roster(roster_input, study, runlog)

    def previous_crf(sid: str) -> Path:
        """The subject's CRF in OUT from the last run (an unchanged or carried subject is derived from it)."""
        return inside(out, out / "crf" / f"{subject_file_name(sid)}.json")

    # each subject's Day 1 in the last recorded run into this OUT (state/last-run.json: not a dry run's nor a
    # stopped one's): a Day 1 that moves is said (every date of the subject is counted from it)
    before_day1 = _previous_day1(out)
    # subjects who left, whose CRF of the last run that read them is in OUT: carried forward, never read
    carried = {sid: e for sid, e in roster.left.items() if previous_crf(sid).is_file()}
    not_carried = {sid: why for sid, why in roster.left_unsure.items() if previous_crf(sid).is_file()}
    if not carried and (empty := nobody_enrolled(roster_input, roster, study, runlog,
                                                 roster_csv=roster_csv is not None)) is not None:
        raise RosterError(empty)
    owned = {str(ref_id((rs.get("individual") or {}).get("reference"), "Patient", roster_input.base)): rs
             for rs in roster_input.subjects
             if any(i.get("system") == SID_RESULT for i in rs.get("identifier") or [])}
    summary.excluded = dict(roster.excluded)
    _warn_arms_outside_escalation(study, roster.enrolled.values(), runlog)
    for sid, why in roster_input.roster_rows_skipped.items():  # enrolled by the site, not processed
        summary.subjects_failed.append(sid)
        summary.failures.append({"subject_id": sid, "stage": "roster-csv", "error": why,
                                 "what_to_do": "correct the subject's row of the roster CSV (the error names the "
                                               "line); the next run enrols the subject"})
    if on_start:
        on_start(len(roster.enrolled) + len(carried) + len(not_carried))  # on_subject calls to come (progress)
    labels = {pid: e.subject_id for pid, e in roster.enrolled.items()}
    source.label_subjects(labels)
    # an incremental read may skip only subjects whose last CRF is at hand
    source.reusable = {pid for pid, e in roster.enrolled.items()
                       if (out / "crf" / f"{subject_file_name(e.subject_id)}.json").is_file()}
    if source.since is not None and _mapping_changed(summary, out):
        # the CRF of an unchanged subject was mapped by the last run's mapping files (or version): reused, it
        # would keep the old mapping beside subjects mapped by the new one
        source.reusable = set()
        runlog.warn("the study's mapping files, its site overlay or the adapter version changed since the last "
                    "run: every subject is read in full (an unchanged subject's CRF of that run was mapped by the "
                    "old ones)", rule="incremental")
        runlog.count("incremental.mapping_changed")
    if source.since is not None:
        # a subject the last run failed or did not write (the server refused its write: duplicates, a foreign
        # resource with the adapter's identifier) may match the state file and still differ on the server: read
        # it in full, so its results are compared with the server again
        again = {str(s) for s in (last_run(out) or {}).get("subjects_to_recheck") or [] if isinstance(s, str)}
        recheck = {pid for pid, e in roster.enrolled.items() if e.subject_id in again}
        source.reusable -= recheck
        if recheck:
            runlog.count("incremental.rechecked_subjects", len(recheck))
    if roster_csv is not None and source.since is not None and _roster_csv_changed(roster_csv, summary, out,
                                                                               source.since):
        # the site edited its roster since: the arm, dates or infusion date of the subjects it names may differ
        named = csv_subject_ids(roster_csv)
        source.reusable -= {pid for pid, e in roster.enrolled.items() if e.subject_id in named}
    source.scratch = work_dir  # what the source spools of the chart is removed with the staging folder
    exports = ExportWriter(work_dir / "export", study)
    reviews = ReviewRun(work_dir, study, review_state, reviewed_only, runlog)
    site_today = dt.datetime.now(zone(study.info.timezone)).date()  # the date a retraction note gives
    if sink is not None:
        # every subject ID of the study the run knows: a write counts as the subject's only its own results, not
        # those of a subject whose ID extends its own (101 and 101.2: identifiers keep the '.')
        sink.start(roster.patient_ids, {e.patient_id for e in carried.values() if e.patient_id},
                   {x for x in (subject_id(rs, study.subject_id_rule) for rs in roster_input.subjects) if x}
                   | {e.subject_id for e in roster.enrolled.values()} | set(roster.left) | set(state.by_subject))
    dry_run = summary.dry_run = bool(getattr(sink, "dry_run", False))
    workers = min(workers, max(1, len(roster.enrolled)))  # never a worker process with no subject to process
    # the subjects' files are written where they are processed (a worker), unless another engine runs them or
    # the write-back is held back per reviewed value (which needs each subject's review here)
    pieces = work_dir / ".subjects" if engine_outcomes is None and not reviewed_only else None
    if pieces is not None:
        pieces.mkdir()
    # a finished run replaces these even when it writes nothing into them (every subject carried forward; no
    # diff against the server): what an earlier run left there is never taken for this run's
    for produced in ("writeback", *(("writeback-diff",) if sink is not None else ())):
        (work_dir / produced).mkdir()
    known = {subject_id(rs, study.subject_id_rule) for rs in roster_input.subjects}  # withdrawn ones too
    for sid in sorted({s for s, _, _ in reviews.current} - known - {e.subject_id for e in roster.enrolled.values()}):
        runlog.warn(f"the review decisions name subject {sid}, whom no ResearchSubject of the study names: they are "
                    "not applied", subject_id=sid, rule="review-subject",
                    fix="check the subject ID in the decisions (fhir-adapter review) and the ResearchSubjects")
    work = SubjectWork(study=study, decisions=reviews.current, roster_infusions=roster_infusions, owned=owned,
                       owned_study=owned_study, render_exports=workers > 1 and engine_outcomes is None,
                       pieces=pieces, source_base=roster_input.base)
    engine = SubjectEngine(work)
    file_names = SubjectFileNames()
    folders = OutFolders(work_dir)
    rows = SubjectRows(work_dir / ".rows")  # on disk: memory stays flat in the number of subjects
    done: list[str] = []

    def write_back(o: SubjectOutcome, e: Enrollee, source_resources: list[dict[str, Any]] | None,
                   diff_path: Path) -> tuple[list[dict[str, Any]], Plan, WriteResult | None]:
        """The subject's results: planned against the write-back state, written to the server (if any)."""
        bundle_resources = list(o.resources)
        problems = {id(r): p for r, p in zip(o.resources, o.problems, strict=True)}
        # a subject who left: what it no longer has lies after the end of its participation
        ended = (f"the subject's participation ended on {e.end_of_study.isoformat()} (ResearchSubject.period.end): "
                 "the result is not derived from its data up to then" if o.carried and e.end_of_study is not None
                 else None)
        hashes = o.hashes
        elsewhere = sorted(state.written_about(e.subject_id) - {e.patient_id}) if o.carried else []
        if elsewhere:
            # a subject who left, its ResearchSubject repointed: the carried CRF was read from another Patient's
            # records, so none of its results goes to this Patient's chart (those on the other are retracted)
            bundle_resources, hashes = [], []
            ended = (f"the subject's ResearchSubject now names Patient/{e.patient_id}: the result was derived from "
                     f"the records of Patient/{', Patient/'.join(elsewhere)}")
            runlog.warn(f"subject who left, now linked to Patient/{e.patient_id}: its carried data were read from "
                        f"Patient/{', Patient/'.join(elsewhere)}, so no result of it is written to Patient/"
                        f"{e.patient_id} (a subject who left is never read again); its results on the other Patient "
                        "are retracted with --post", subject_id=e.subject_id, rule="subject-moved",
                        fix="if the new link is right, the carried CRF is another patient's data: tell the trial's "
                            "data manager")
        plan = state.plan(e.subject_id, bundle_resources, source_resources or [], statuses=o.statuses,
                          hashes=hashes, retract_reason=ended, today=site_today, patient_id=e.patient_id)
        writable = reviews.writable(o.review, bundle_resources) if o.review is not None else bundle_resources
        held: set[str] = set()
        if len(writable) < len(bundle_resources):
            held = {result_id(r) for r in bundle_resources if r not in writable}
            reviews.hold(plan, state, held)
            bundle_resources = writable
        invalid = [p for p in [problems[id(x)] for x in bundle_resources]
                   + [r4_problem(x, full=True) for x in plan.retractions] if p]
        if invalid:
            raise ValueError(f"a result resource is not valid FHIR R4: {invalid[0]}")
        bundle_resources = plan.amend(bundle_resources)  # a value that replaces one written before is amended
        # an incremental run's unchanged subject (source_resources None) whose results equal what the last run
        # wrote needs no request to the server at all
        former = state.patients_of(e.subject_id) - {e.patient_id}  # its results may be on another Patient's chart
        unchanged_since_last = source_resources is None and not plan.retractions and not former and \
            plan.changes["new"] == plan.changes["updated"] == 0
        w: WriteResult | None = None
        if sink is not None and not unchanged_since_last:
            # may stop the run; a retraction is the one the offline bundle holds, and the Provenance names its
            # sources too (as the bundle's does); a result held back for review is neither written nor retracted
            # results written about another Patient (the ResearchSubject was repointed since) are retracted there
            w = sink.write(e, bundle_resources, plan.retractions, held, former)
            # final or amended as the server holds each result now (its copy decides, not this state's history)
            bundle_resources = plan.settle(bundle_resources, w.statuses)
            if not w.error and not summary.dry_run:
                plan.moved_away_done()
            if w.stop is not None:  # the server went down part-way through a split write: what it confirmed
                state.commit(plan, pending=w.pending)
                _record_write(w, summary, runlog, diff_path)
                raise w.stop
        return bundle_resources, plan, w

    def finish(o: SubjectOutcome, source_resources: list[dict[str, Any]] | None = None) -> None:
        """One subject's outputs into the staging folder (and its results to the server); for a subject who left,
        carried forward from its last CRF (``o.carried``), never read again, its results planned as any subject's."""
        o.merge_log(runlog)
        name = file_names.name(o.subject_id) if o.enrollee is not None else ""
        p = o.pieces  # the subject's files, written where it was processed
        if o.review is not None:
            reviews.record(o.review, name)
        elif p is not None and p.review is not None:
            reviews.account(p.review)
            os.replace(p.path("candidates"), reviews.candidates_path(name))
        if o.error is not None:
            raise SubjectFailed(o.error)
        assert o.enrollee is not None and ((o.row is not None and o.review is not None) or p is not None)
        e = o.enrollee
        was = before_day1.get(e.subject_id)  # None: no Day 1 then (not infused yet), nothing moved
        if was and was != (e.day1.isoformat() if e.day1 else None):
            runlog.warn(f"Day 1 of {e.subject_id} moved from {was} to "
                        f"{e.day1.isoformat() if e.day1 else 'none'} ({e.day1_source or 'no infusion record'}): "
                        "its study days, visits, baseline, DLT window, TEAE flags and kinetics follow it, and its "
                        "results of visits that moved are retracted", subject_id=e.subject_id, rule="day1-changed",
                        fix="nothing, if the infusion record was corrected; else correct the record that is wrong")
        summary.day1[e.subject_id] = e.day1.isoformat() if e.day1 else None
        day1_sources.append({"subject_id": e.subject_id, "day1": e.day1.isoformat() if e.day1 else None,
                             "source": e.day1_source})
        diff_path = inside(work_dir, work_dir / "writeback-diff" / f"{name}.diff")
        bundle_resources, plan, w = write_back(o, e, None if o.carried else source_resources, diff_path)
        if p is not None:
            assert p.row is not None
            rows.add_json(o.subject_id, p.row)
        else:
            assert o.row is not None
            rows.add(o.row)
        crf_path, writeback_path = work_dir / "crf" / f"{name}.json", work_dir / "writeback" / f"{name}.json"
        if p is not None:
            os.replace(p.path("crf"), folders.file(crf_path))
        elif o.crf_json is not None:  # rendered by a worker
            folders.file(crf_path).write_bytes(o.crf_json)
        else:
            assert o.review is not None
            _dump(folders, crf_path, crf_document(o.review.crf_file(o.export_updates)))
        if plan is not None:
            if p is not None and "writeback" in p.written and not plan.retractions and not plan.moved and \
                    not any(r.get("status") == "amended" for r in bundle_resources):
                os.replace(p.path("writeback"), folders.file(writeback_path))
            else:  # with the retractions, on the Patients the subject is no longer about too
                _dump(folders, writeback_path, offline_transaction(bundle_resources + plan.retractions + plan.moved,
                                                                   e.patient_id))
            if w is None or not w.error or w.partial:  # the state records only what the server confirmed (or
                state.commit(plan, pending=w.pending if w is not None else ())  # the file run), part by part
        if p is not None:
            assert o.export is not None and o.export.coverage is not None
            exports.write(o.export)
            visits = p.visits
        else:
            crf = o.crf
            assert o.review is not None
            exported = o.review.export_crf(o.export_updates)
            if o.export is not None:  # rendered by a worker
                exports.write(o.export, exported, o.quarantine)
            else:
                exports.add(exported, o.quarantine, o.review.status, o.review.decisions)
            visits = sum(1 for v in crf.visits if not v.unscheduled)
        if o.carried:
            summary.carried_forward.append(e.subject_id)
            if w is not None:
                _record_write(w, summary, runlog, diff_path)
            return
        summary.visits += visits
        if dry_run:
            summary.would_write["results"] += len(bundle_resources)
        else:
            summary.results_written += len(bundle_resources)
        summary.subjects += 1
        if sink is not None and w is None:
            summary.server_unchanged += len(bundle_resources)
        elif w is not None:
            _record_write(w, summary, runlog, diff_path)
        if w is None or not w.error:  # done: processed, and written when there is a server to write to
            done.append(e.subject_id)

    def guarded(e: Enrollee, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # one subject's failure never stops the others (a full disk stops them all)
            if is_disk_full(exc):
                raise
            stop = _stop_for(exc)
            if stop is not None:
                raise stop from exc
            log.debug("subject %s failed", e.subject_id, exc_info=True)
            if e.subject_id in carried:  # its last CRF is all there is of it (it is never read again): kept as is
                keep_left_crf(e.subject_id, str(exc))
            else:
                # a failed subject leaves no CRF in this run's outputs (when it failed after writing it): the next
                # incremental run (--since last) then reads it in full, never reusing it as unchanged
                if (name := file_names.held_by(e.subject_id)) is not None:
                    inside(work_dir, work_dir / "crf" / f"{name}.json").unlink(missing_ok=True)
                runlog.warn(f"subject not processed: {exc}", subject_id=e.subject_id, rule="subject-failed")
                summary.subjects_failed.append(e.subject_id)
                summary.failures.append(_failure(e.subject_id, "map", exc))
        if on_subject:
            on_subject(e.subject_id)

    def keep_left_crf(sid: str, why: str) -> None:
        """A subject who left whose CRF cannot be carried forward: the file is kept in OUT/crf as it was (it is
        all there is of the subject: it is never read again), and the subject counts as not processed."""
        try:
            shutil.copyfile(previous_crf(sid), folders.file(work_dir / "crf" / f"{file_names.name(sid)}.json"))
            kept = "its CRF of an earlier run is kept in OUT/crf as it was"
        except UnsafePath as exc:  # its file name is another subject's in this run
            kept = f"its CRF of an earlier run could not be kept: {exc}"
        runlog.warn(f"subject who left not carried forward: {why}; {kept}", subject_id=sid, rule="subject-failed",
                    fix="restore OUT/crf/<subject>.json from a backup of OUT (or run the adapter version that wrote "
                        "it), or correct the subject's ResearchSubjects in the EHR")
        summary.subjects_failed.append(sid)
        summary.carried_failed.append(sid)
        summary.failures.append({"subject_id": sid, "stage": "carry-forward", "error": f"{why}; {kept}",
                                 "what_to_do": "the subject has left and is never read again: restore its CRF "
                                               "(OUT/crf) from a backup of OUT, or run the adapter version that "
                                               "wrote it, or correct its ResearchSubjects in the EHR; the next run "
                                               "carries it forward then"})

    def cached(e0: Enrollee, left: bool = False) -> None:
        crf = SubjectCRF.model_validate_json(previous_crf(e0.subject_id).read_bytes())
        e = replace(e0, day1=crf.day1, infusion=infusion_record(crf.ex),
                    day1_source="previous run (OUT/crf)" if crf.day1 else None)
        finish(engine.cached(e, crf, left=left))

    #: an incremental run's unchanged subjects (known once the source reads) and the subjects who left
    reused: deque[tuple[str, str, bool]] | None = None

    def reuse_before(pid: str | None) -> None:
        """Derive the unchanged subjects (from their last CRF) that come before ``pid`` (None: all that are
        left), so that every subject's rows are in the exports in the order of a full run (by patient id)."""
        nonlocal reused
        if reused is None:  # unchanged enrolled subjects, and subjects who left, by patient id
            reused = deque(sorted([(p, roster.enrolled[p].subject_id, False) for p in source.unchanged_subjects()]
                                  + [(e.patient_id, sid, True) for sid, e in carried.items()]))
        while reused and (pid is None or reused[0][0] < pid):
            p, sid, left = reused.popleft()
            e0 = carried[sid] if left else roster.enrolled[p]
            guarded(e0, partial(cached, e0, left))

    try:
        try:
            if not roster.enrolled:  # only subjects who left, carried forward: nothing is read
                outcomes: Iterable[tuple[Enrollee, SubjectOutcome, list[dict[str, Any]]]] = ()
            elif engine_outcomes is not None:  # another engine (Spark) reads the subjects' resources, runs it
                outcomes = engine_outcomes(roster.enrolled, work)
            else:
                read = getattr(source, "subject_records", source.subject_resources)  # files: unparsed lines
                subjects = ((roster.enrolled[pid], records) for pid, records in read(roster.patient_ids))
                # a local folder with workers: the workers read it too, in parts
                outcomes = file_outcomes(source, roster.enrolled, work, workers) \
                    if workers > 1 and splittable(source) else subject_outcomes(subjects, work, engine, workers)
            try:
                for e0, outcome, resources in outcomes:

                    def fresh(o: SubjectOutcome = outcome, resources: list[dict[str, Any]] = resources) -> None:
                        finish(o, resources)

                    reuse_before(e0.patient_id)
                    guarded(e0, fresh)
            finally:
                # the run stopped early (the server down, a full disk): the worker pool is shut down now, not
                # when the abandoned generator is collected at exit — by then its pipes may be closed, and Python
                # printed "Exception ignored in <generator subject_outcomes>" after the one-line error
                if isinstance(outcomes, Generator):
                    outcomes.close()
        except FhirError as exc:  # raised by the source between subjects (e.g. the incremental probes)
            stop = _stop_for(exc) or (_Stop(exc) if is_unavailability(exc) else None)
            if stop is None:
                raise
            raise stop from exc
        for pid, read_error in sorted(source.failed.items()):
            e0 = roster.enrolled[pid]
            runlog.warn(f"subject not processed: reading its data failed: {read_error}", subject_id=e0.subject_id,
                        rule="subject-read-failed")
            summary.subjects_failed.append(e0.subject_id)
            summary.failures.append(_failure(e0.subject_id, "read", read_error))
            if on_subject:
                on_subject(e0.subject_id)
        reuse_before(None)
        for sid, why in sorted(not_carried.items()):  # subjects who left, whose last CRF cannot be carried
            keep_left_crf(sid, why)
            if on_subject:
                on_subject(sid)
    except _Stop as stop:
        left = sorted(e.subject_id for e in roster.enrolled.values() if e.subject_id not in done)
        summary.stopped = _stopped(stop.error, done, left)
        summary.stopped.subjects_partly_written = sorted(w["subject_id"] for w in summary.writes
                                                         if w.get("partly_written"))
        if not dry_run:
            state.save(work_dir / "state" / "written.json")
        _write_report(work_dir, source, study, runlog, summary, state, started, review=reviews.report(),
                      day1_sources=day1_sources)
        return summary
    write_study_json(work_dir / "results" / "study.json", study, rows)
    rows.close()
    coverage = exports.close(dict(runlog.counts))
    for sid, n in sorted(exports.odm.removed.items()):
        runlog.warn(f"{n} character(s) that XML 1.0 forbids (NUL, control characters) removed from this subject's "
                    "text in export/odm.xml; correct the source text in the EHR",
                    subject_id=sid, rule="xml-forbidden-characters")
    if not dry_run:  # a dry run changes nothing, OUT/state included
        state.save(work_dir / "state" / "written.json")
    _write_quarantine(work_dir, runlog, full_copies=quarantine_full_copies)
    _write_report(work_dir, source, study, runlog, summary, state, started, coverage=coverage,
                  review=reviews.report(), cdisc=exports.cdisc_report(), day1_sources=day1_sources)
    return summary


def _stopped(error: FhirError, done: list[str], left: list[str], *, roster_read: bool = True) -> Stopped:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    if isinstance(error, FhirAuthError) and not error.transient:
        return Stopped(exit_codes.AUTH_FAILED, "auth-failed", now, str(error), done, left, roster_read)
    since = error.since if isinstance(error, FhirServerUnavailable) else now
    cause = error.last_error if isinstance(error, FhirServerUnavailable) and error.last_error else error
    return Stopped(exit_codes.SERVER_UNAVAILABLE, "server-unavailable", since, str(cause), done, left, roster_read)


def _warn_arms_outside_escalation(study: Study, enrolled: Iterable[Enrollee], runlog: RunLog) -> None:
    """A warning ``arm`` per enrolled subject whose arm dose escalation does not know (a typo such as 'DL9', or
    no arm): its DLTs would otherwise be left out of the decisions silently."""
    if "escalation" not in study.rules:
        return
    # imported only for a study that escalates doses: a study naming some endpoints imports only those
    from fhir_adapter.derive.escalation import EscalationSettings
    from fhir_adapter.endpoints.escalation import arms_outside

    outside = arms_outside(study.rule("escalation", EscalationSettings), {e.subject_id: e.arm for e in enrolled})
    for sid, why in outside.items():
        runlog.warn(why, subject_id=sid, rule="arm",
                    fix="correct ResearchSubject.assignedArm (or the roster CSV's arm), or add the arm to "
                        "escalation.yaml")


def mapping_fingerprint(study: Study) -> str:
    """One hash of the contents of the study's mapping files and site overlay, and of the adapter version: what
    an unchanged subject's CRF was mapped by (by content only: the overlay named by a relative or an absolute path
    is the same mapping)."""
    return hashlib.sha256(orjson.dumps({"files": sorted(study.files.values()), "version": __version__})).hexdigest()


def _mapping_changed(summary: RunSummary, out: Path) -> bool:
    """The last run into ``out`` mapped with other mapping files or another version (or recorded none: a run of
    an earlier version)."""
    last = last_run(out) or {}
    return bool(last) and last.get("mapping_fingerprint") != summary.mapping_fingerprint


def _roster_csv_changed(roster_csv: Path, summary: RunSummary, out: Path, since: dt.datetime) -> bool:
    """The roster CSV may differ from the one the CRFs of the last run were made from: its content differs from
    what ``state/last-run.json`` records of that run (also a copy that kept an old modification time), or,
    with nothing recorded, it was saved at or after ``since``."""
    last = last_run(out)
    if last is not None and (recorded := last.get("roster_csv_sha256")) is not None:
        return bool(recorded != summary.roster_csv_sha256)
    if last is not None and "started" in last:  # the last run read no roster CSV
        return True
    return dt.datetime.fromtimestamp(roster_csv.stat().st_mtime, dt.UTC) >= since


def _write_report(work: Path, source: Source, study: Study, runlog: RunLog, summary: RunSummary,
                  state: WrittenState, started: dt.datetime, *, coverage: Any = None,
                  review: dict[str, Any] | None = None, cdisc: Any = None,
                  day1_sources: list[dict[str, Any]] | None = None) -> None:
    summary.quarantined = len(runlog.quarantine)
    summary.warnings = len(runlog.warnings)
    _dump(OutFolders(work), work / "run-report.json", {
        "generated_by": f"fhir-adapter {__version__}",
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": source.description,
        "study": study.info.id,
        "exit_code": summary.exit_code,
        "site_overrides": study.overrides,
        "summary": {
            "subjects": summary.subjects, "subjects_failed": summary.subjects_failed, "visits": summary.visits,
            "results_written": summary.results_written, "quarantined": summary.quarantined,
            "server_writes": summary.server_writes, "server_unchanged": summary.server_unchanged,
            "subjects_not_written": summary.subjects_not_written,
            "warnings": summary.warnings, "excluded_research_subjects": summary.excluded,
            "subjects_carried_forward": summary.carried_forward,
            **({"would_write": summary.would_write} if summary.dry_run else {}),
        },
        "subject_failures": summary.failures,
        **({"stopped": summary.stopped.as_report()} if summary.stopped is not None else {}),
        "counts": dict(sorted(runlog.counts.items())),
        "writes": summary.writes,
        "warnings": runlog.warnings,
        "quarantine": [q.as_report() for q in runlog.quarantine],
        **({"coverage": coverage} if coverage is not None else {}),
        **({"cdisc": cdisc} if cdisc is not None else {}),
        "day1_sources": day1_sources or [],
        "writeback_state": _state_report(state, dry_run=summary.dry_run),
        **({"review": review} if review is not None else {}),
        **({"server_requests": requests} if (requests := source.request_stats()) is not None else {}),
    })


def _state_report(state: WrittenState, *, dry_run: bool) -> dict[str, Any]:
    """The run report's ``writeback_state``; a dry run records nothing: its changes are under ``would_write``."""
    report = state.report()
    if not dry_run:
        return report
    would = {k: report[k] for k in ("new", "updated", "retracted", "retractions")}
    return {**report, "new": 0, "updated": 0, "retracted": 0, "retractions": [], "would_write": would}


def _previous_day1(out: Path) -> dict[str, str | None]:
    """Subject ID → Day 1 (ISO date, None: none) of the last recorded run into ``out``."""
    recorded = (last_run(out) or {}).get("day1")
    if not isinstance(recorded, dict):
        return {}
    return {str(k): v for k, v in recorded.items() if v is None or isinstance(v, str)}


def _record_write(w: WriteResult, summary: RunSummary, runlog: RunLog, diff_path: Path) -> None:
    """Account for one subject's write to the server: counts, the diff (dry runs and real ones), failures. A
    dry run's writes are counted as what it would write (``would_write``), never as written."""
    if summary.dry_run:
        summary.would_write["server_writes"] += len(w.written) + len(w.retracted) + len(w.moved)
        counts = {"written": 0, "retracted": 0, "would_write": len(w.written), "would_retract": len(w.retracted)}
        counts |= {"would_retract_on_former_patients": len(w.moved)} if w.moved else {}
    else:
        summary.server_writes += len(w.written) + len(w.retracted) + len(w.moved)
        counts = {"written": len(w.written), "retracted": len(w.retracted)}
        counts |= {"retracted_on_former_patients": len(w.moved)} if w.moved else {}
    if w.moved:
        patients = sorted({m.split(":")[0] for m in w.moved})
        runlog.warn(f"{len(w.moved)} results of the subject on {', '.join(patients)}, a Patient its ResearchSubject no "
                    f"longer names, {'would be' if summary.dry_run else 'were'} retracted there (entered-in-error): "
                    "they were written while the subject was linked to that Patient", subject_id=w.subject_id,
                    rule="subject-moved", fix="check that the ResearchSubject names the right Patient; the results "
                    "on the current Patient are written as usual")
    summary.server_unchanged += w.unchanged
    summary.writes.append({"subject_id": w.subject_id, **counts, "unchanged": w.unchanged,
                           **({"error": w.error} if w.error else {}),
                           **({"partly_written": True, "not_confirmed": len(w.pending)} if w.partial else {})})
    if w.diff:
        diff_path.parent.mkdir(parents=True, exist_ok=True)
        diff_path.write_text(w.diff)
    if w.error:
        runlog.warn(f"results not written to the server: {w.error}", subject_id=w.subject_id, rule="write-failed")
        summary.subjects_not_written.append(w.subject_id)
        failure = _failure(w.subject_id, "write", w.exception, w.error)
        if w.partial:
            failure["what_to_do"] = PARTIAL_WHAT_TO_DO
        summary.failures.append(failure)


def _write_quarantine(out: Path, runlog: RunLog, *, full_copies: bool = False) -> None:
    qdir = out / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[bytes]] = {}
    for q in runlog.quarantine:
        line = orjson.dumps(quarantine_record(q, full_copy=full_copies))
        by_type.setdefault(quarantine_file_name(q.resource_type), []).append(line)
    for name, lines in by_type.items():
        inside(out, qdir / name).write_bytes(b"\n".join(lines) + b"\n")
