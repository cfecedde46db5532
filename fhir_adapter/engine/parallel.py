"""Subjects in worker processes: the per-subject engine in ``workers`` processes, outcomes in subject order.

The study and the run's shared inputs (:class:`SubjectWork`) are sent once to each worker; each subject's
records go to a worker — a resource, or the NDJSON line it was read from (parsed in the worker, so the calling
process neither parses nor pickles it) — and its :class:`SubjectOutcome` comes back with the statuses of its
source resources (:func:`~fhir_adapter.writeback.state.source_statuses`) instead of the resources. Reading
the source stays in the calling process (a live server is read there; workers only map and derive). At most
a few subjects per worker are in flight, so memory stays flat in the cohort size. A subject whose worker dies
(killed, out of memory) fails alone: the pool is started again for the subjects after it.

Workers are forked by a forkserver that has imported the engine and built the R4 models once
(:mod:`fhir_adapter.engine.forkserver`, :mod:`fhir_adapter.engine.preload`), and they start while the source is
still being read (the first subject is ready only when the source has been read through), so their start-up is
not added to the run's time; the first parts of a local folder are read by this process while they start
(:func:`_routed`).
"""

from __future__ import annotations

import os
import select
import signal
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from fhir_adapter.disk_full import is_disk_full
from fhir_adapter.engine.collector import run_settings
from fhir_adapter.engine.forkserver import context
from fhir_adapter.engine.subject import SubjectEngine, SubjectOutcome, SubjectWork
from fhir_adapter.job.runlog import Locations, RunLog
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.source.base import Resource
from fhir_adapter.source.files import FileSource, checked_records
from fhir_adapter.source.parts import Part, PartInput, PartResult, chunk_records, chunks, plan, route
from fhir_adapter.writeback.state import source_statuses

#: subjects in flight per worker (enough to keep every worker busy while the source is read)
IN_FLIGHT_PER_WORKER = 4

_engine: SubjectEngine | None = None


def _start(work: SubjectWork, run_pid: int) -> None:
    # Ctrl-C reaches the whole process group: the run's process handles it (one line, exit 130) and shuts the pool
    # down; a worker leaves it to that (else each printed a KeyboardInterrupt traceback)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with(run_pid)
    global _engine
    _engine = SubjectEngine(work)
    _engine.prepare()
    run_settings()  # the worker's cycle collector as during a run (fhir_adapter/engine/collector.py)


def _end_with(pid: int) -> None:
    """This worker ends as soon as the run's process ``pid`` has ended. A worker waits for tasks on a queue it
    holds both ends of, and it holds the forkserver's keep-alive pipe: when the run's process is killed
    (SIGKILL, the OOM killer, a scheduler's time limit) neither would ever end on its own."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)  # readable once the process has ended (Linux 5.3)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            select.select([fd], [], [])
            os._exit(1)
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # the pid is another user's: the run's process is gone
                os._exit(1)

    threading.Thread(target=watch, name="fhir-adapter-run-watch", daemon=True).start()


def _executor(workers: int, work: SubjectWork, ctx: Any) -> ProcessPoolExecutor:
    """``workers`` worker processes, each with the engine for ``work``, each ending with this process."""
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start, initargs=(work, os.getpid()))


def _ready() -> None:
    """A task that only makes the pool start a worker."""


def _pool(workers: int, work: SubjectWork, ctx: Any) -> tuple[ProcessPoolExecutor, threading.Event]:
    """A pool of ``workers`` processes, started in the background (a forkserver answers once it has preloaded):
    the caller goes on reading the source meanwhile; the event is set once a worker has started."""
    pool = _executor(workers, work, ctx)
    started = threading.Event()

    def start() -> None:
        try:
            for _ in range(workers):
                pool.submit(_ready).add_done_callback(lambda _: started.set())
        except (RuntimeError, BrokenProcessPool):  # the pool was shut down (the run ended or failed early)
            started.set()

    threading.Thread(target=start, name="fhir-adapter-workers", daemon=True).start()
    return pool, started


#: one subject's resources, each as a dict or as the JSON bytes of one
Records = Sequence[bytes | dict[str, Any]]


def _fresh(e0: Enrollee, records: Records, key: str) -> SubjectOutcome:
    assert _engine is not None
    outcome, resources = fresh(_engine, e0, records, key)
    outcome.statuses = source_statuses(resources)
    return outcome


def fresh(engine: SubjectEngine, e0: Enrollee, records: Records, key: str) -> tuple[SubjectOutcome, list[Resource]]:
    """One subject's outcome from its records (lines routed unparsed are checked here: checked_records), and
    its resources."""
    read = RunLog()
    where: Locations = {}
    resources = checked_records(records, e0.patient_id, engine.work.source_base, read, where)
    outcome = engine.fresh(e0, resources, key, where)
    outcome.read_counts, outcome.read_quarantine = dict(read.counts), read.quarantine
    return outcome, resources


def subject_outcomes(subjects: Iterable[tuple[Enrollee, Records]], work: SubjectWork,
                     engine: SubjectEngine, workers: int = 1,
                     ) -> Iterator[tuple[Enrollee, SubjectOutcome, list[dict[str, Any]]]]:
    """Each subject's outcome, in the order of ``subjects``: in this process with ``engine`` (``workers`` 1;
    the parsed resources come with it), else in ``workers`` worker processes (the outcome carries the
    resources' statuses, the resources are not sent back: an empty list). With ``work.pieces``, each subject's
    files are written where it is processed, named by its position in ``subjects``
    (:class:`~fhir_adapter.engine.subject.SubjectPieces`)."""
    if workers <= 1:
        for i, (e0, records) in enumerate(subjects):
            outcome, resources = fresh(engine, e0, records, str(i))
            yield e0, outcome, resources
        return
    ctx = context()
    pool, _ = _pool(workers, work, ctx)
    pending: deque[tuple[Enrollee, Records, str, Future[SubjectOutcome]]] = deque()
    try:
        it = enumerate(subjects)
        done = False
        while True:
            while not done and len(pending) < workers * IN_FLIGHT_PER_WORKER:
                nxt = next(it, None)
                if nxt is None:
                    done = True
                    break
                key, (e, r) = str(nxt[0]), nxt[1]
                pending.append((e, r, key, pool.submit(_fresh, e, r, key)))
            if not pending:
                return
            e0, records, key, fut = pending.popleft()
            try:
                outcome = fut.result()
            except BrokenProcessPool:  # a worker died: this subject is tried once more on its own
                pool.shutdown(wait=False, cancel_futures=True)
                outcome = _alone(e0, records, key, work, ctx)
                pool = _executor(workers, work, ctx)
                pending = deque((e, r, k, pool.submit(_fresh, e, r, k)) for e, r, k, _ in pending)
            except Exception as exc:  # e.g. an outcome that could not be sent back
                if is_disk_full(exc):  # the run's failure, not the subject's
                    raise
                outcome = SubjectOutcome(subject_id=e0.subject_id, patient_id=e0.patient_id, error=str(exc))
            yield e0, outcome, []
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _alone(e0: Enrollee, records: Records, key: str, work: SubjectWork, ctx: Any) -> SubjectOutcome:
    """One subject in a worker of its own: if that worker dies too, the subject fails (alone)."""
    with _executor(1, work, ctx) as one:
        try:
            return one.submit(_fresh, e0, records, key).result()
        except BrokenProcessPool:
            return SubjectOutcome(subject_id=e0.subject_id, patient_id=e0.patient_id,
                                  error="the worker process mapping this subject stopped (killed or out of memory); "
                                        "run again with --workers 1 to see the error")


#: a chunk of subjects for a worker: (index of its first subject, each subject with its shared resources'
#: records, the (part file, spans) of the chunk's records in part order)
Chunk = tuple[int, list[tuple[Enrollee, list[bytes]]], list[tuple[Path, list[tuple[int, int]]]]]

#: chunks in flight per worker
CHUNKS_PER_WORKER = 2


def _chunk(first: int, subjects: list[tuple[Enrollee, list[bytes]]],
           sections: list[tuple[Path, list[tuple[int, int]]]]) -> list[SubjectOutcome]:
    records = chunk_records(sections, first, len(subjects))
    out = []
    for k, ((e0, shared), mine) in enumerate(zip(subjects, records, strict=True)):
        mine.extend(shared)
        out.append(_fresh(e0, mine, str(first + k)))
    return out


def file_outcomes(source: FileSource, enrolled: dict[str, Enrollee], work: SubjectWork, workers: int,
                  ) -> Iterator[tuple[Enrollee, SubjectOutcome, list[dict[str, Any]]]]:
    """:func:`subject_outcomes` of ``source.subject_records`` (``workers`` above 1), with the subjects pass
    itself read by the workers, part by part (:mod:`fhir_adapter.source.parts`): the parts' counts and
    quarantined lines go to ``source.log`` in the pass's order, then each chunk of subjects goes to a worker,
    which reads its records from the part files. Same outcomes, same order. A worker that dies reading a part
    (killed, out of memory): the folder is read in this process as with :func:`subject_outcomes`."""
    order = sorted(enrolled)
    chunk_of: list[int] = []
    starts: list[int] = []
    for c, size in enumerate(chunks(len(order), workers)):
        starts.append(len(chunk_of))
        chunk_of.extend([c] * size)
    starts.append(len(order))
    ctx = context()
    with tempfile.TemporaryDirectory(prefix="fhir-adapter-parts-", dir=source.scratch) as folder:
        pool, started = _pool(workers, work, ctx)
        try:
            given = PartInput(order, chunk_of, source.roster().base, source.known_patients(), Path(folder))
            try:
                results = _routed(plan(source), pool, given, started)
            except BrokenProcessPool:  # a worker died reading a part: this process reads the folder instead
                pool.shutdown(wait=False, cancel_futures=True)
                subjects = ((enrolled[pid], records) for pid, records in source.subject_records(set(order)))
                yield from subject_outcomes(subjects, work, SubjectEngine(work), workers)
                return
            refs = _merge(results, source)
            shared = source.shared_records(set().union(*refs.values()))

            def chunk(c: int) -> Chunk:
                first = starts[c]
                return first, [(enrolled[pid], [shared[key] for key in sorted(refs.get(pid, ())) if key in shared])
                               for pid in order[first:starts[c + 1]]], \
                    [(r.path, r.sections[c]) for r in results if c in r.sections]

            pending: deque[tuple[Chunk, Future[list[SubjectOutcome]]]] = deque()
            todo = iter(range(len(starts) - 1))
            while True:
                while len(pending) < workers * CHUNKS_PER_WORKER and (nxt := next(todo, None)) is not None:
                    job = chunk(nxt)
                    pending.append((job, pool.submit(_chunk, *job)))
                if not pending:
                    return
                job, fut = pending.popleft()
                try:
                    outcomes = fut.result()
                except BrokenProcessPool:  # a worker died: each subject of the chunk is tried once more alone
                    pool.shutdown(wait=False, cancel_futures=True)
                    outcomes = _alone_chunk(job, work, ctx)
                    pool = _executor(workers, work, ctx)
                    pending = deque((j, pool.submit(_chunk, *j)) for j, _ in pending)
                for (e0, _), outcome in zip(job[1], outcomes, strict=True):
                    yield e0, outcome, []
        finally:  # before the part files are removed: a part that failed (a file that is not gzip) may
            # leave others still being written
            pool.shutdown(wait=True, cancel_futures=True)


#: this process reads parts of the folder while the workers start (off: the workers read every part)
READ_PARTS_WHILE_WORKERS_START = True


def _routed(planned: Iterable[Part], pool: Executor, given: PartInput, started: threading.Event) -> list[PartResult]:
    """The parts' results in part order. Until a worker has started (the forkserver preloads for about a second),
    this process reads the first parts itself; the workers get the others, each as soon as :func:`plan` finds it
    (a large file is cut while the first parts are read). What a part keeps does not depend on which process
    reads it."""
    here: list[PartResult] = []
    parts = iter(planned)
    while READ_PARTS_WHILE_WORKERS_START and not started.is_set() and (part := next(parts, None)) is not None:
        here.append(route(part, given))
    futures = [pool.submit(route, part, given) for part in parts]
    return [*here, *(f.result() for f in futures)]


def _merge(results: list[PartResult], source: FileSource) -> dict[str, set[tuple[str, str]]]:
    """The parts' log entries and counts added to the source's log in part order (as the one-process pass
    adds them); the shared resources each patient's records reference."""
    counts: Counter[str] = Counter()
    refs: dict[str, set[tuple[str, str]]] = {}
    for r in results:
        for key, n in r.log_counts.items():
            source.log.count(key, n)
        source.log.warnings.extend(r.warnings)
        source.log.quarantine.extend(r.quarantine)
        counts.update(r.counts)
        for pid, found in r.refs.items():
            refs.setdefault(pid, set()).update(found)
    for key, n in counts.items():
        source.log.count(key, n)
    return refs


def _alone_chunk(job: Chunk, work: SubjectWork, ctx: Any) -> list[SubjectOutcome]:
    first, subjects, sections = job
    records = chunk_records(sections, first, len(subjects))
    return [_alone(e0, [*mine, *shared], str(first + k), work, ctx)
            for k, ((e0, shared), mine) in enumerate(zip(subjects, records, strict=True))]
