"""Subjects in worker processes: the per-subject engine in ``workers`` processes, outcomes in subject order.

The study and the run's shared inputs (:class:`SubjectWork`) are sent once to each worker; each subject's
records go to a worker — a resource, or the NDJSON line it was read from (parsed in the worker, so the calling
process neither parses nor pickles it) — and its :class:`SubjectOutcome` comes back with the statuses of its
source resources (:func:`~fhir_adapter.writeback.state.source_statuses`) instead of the resources. Reading
the source stays in the calling process (a live server is read there; workers only map and derive). At most
a few subjects per worker are in flight, so memory stays flat in the cohort size. A subject whose worker dies
(killed, out of memory) fails alone: the pool is started again for the subjects after it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fhir_adapter.engine.subject import SubjectEngine, SubjectOutcome, SubjectWork
from fhir_adapter.job.collector import run_settings
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.source.files import parsed
from fhir_adapter.writeback.state import source_statuses

#: subjects in flight per worker (enough to keep every worker busy while the source is read)
IN_FLIGHT_PER_WORKER = 4

_engine: SubjectEngine | None = None


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _start(work: SubjectWork) -> None:
    global _engine
    _engine = SubjectEngine(work)
    run_settings()  # the worker's cycle collector as during a run (fhir_adapter/job/collector.py)


#: one subject's resources, each as a dict or as the JSON bytes of one
Records = Sequence[bytes | dict[str, Any]]


def _fresh(e0: Enrollee, records: Records) -> SubjectOutcome:
    assert _engine is not None
    resources = [parsed(x) for x in records]
    outcome = _engine.fresh(e0, resources)
    outcome.statuses = source_statuses(resources)
    return outcome


def subject_outcomes(subjects: Iterable[tuple[Enrollee, Records]], work: SubjectWork,
                     engine: SubjectEngine, workers: int = 1,
                     ) -> Iterator[tuple[Enrollee, SubjectOutcome, list[dict[str, Any]]]]:
    """Each subject's outcome, in the order of ``subjects``: in this process with ``engine`` (``workers`` 1;
    the parsed resources come with it), else in ``workers`` worker processes (the outcome carries the
    resources' statuses, the resources are not sent back: an empty list)."""
    if workers <= 1:
        for e0, records in subjects:
            resources = [parsed(x) for x in records]
            yield e0, engine.fresh(e0, resources), resources
        return
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start, initargs=(work,))
    pending: deque[tuple[Enrollee, Records, Future[SubjectOutcome]]] = deque()
    try:
        it = iter(subjects)
        done = False
        while True:
            while not done and len(pending) < workers * IN_FLIGHT_PER_WORKER:
                nxt = next(it, None)
                if nxt is None:
                    done = True
                    break
                pending.append((nxt[0], nxt[1], pool.submit(_fresh, nxt[0], nxt[1])))
            if not pending:
                return
            e0, records, fut = pending.popleft()
            try:
                outcome = fut.result()
            except BrokenProcessPool:  # a worker died: this subject is tried once more on its own
                pool.shutdown(wait=False, cancel_futures=True)
                outcome = _alone(e0, records, work, ctx)
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start, initargs=(work,))
                pending = deque((e, r, pool.submit(_fresh, e, r)) for e, r, _ in pending)
            except Exception as exc:  # e.g. an outcome that could not be sent back
                outcome = SubjectOutcome(subject_id=e0.subject_id, patient_id=e0.patient_id, error=str(exc))
            yield e0, outcome, []
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _alone(e0: Enrollee, records: Records, work: SubjectWork, ctx: Any) -> SubjectOutcome:
    """One subject in a worker of its own: if that worker dies too, the subject fails (alone)."""
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=_start, initargs=(work,)) as one:
        try:
            return one.submit(_fresh, e0, records).result()
        except BrokenProcessPool:
            return SubjectOutcome(subject_id=e0.subject_id, patient_id=e0.patient_id,
                                  error="the worker process mapping this subject stopped (killed or out of memory); "
                                        "run again with --workers 1 to see the error")
