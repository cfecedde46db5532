"""``workers``: subjects mapped and derived in worker processes give the same OUT, byte for byte, as one
process; a subject that fails in a worker fails alone."""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.engine import parallel
from fhir_adapter.engine.forkserver import context
from fhir_adapter.engine.parallel import subject_outcomes
from fhir_adapter.engine.subject import SubjectEngine, SubjectWork
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.review.store import DecisionStore, new_decision
from fhir_adapter.roster.enrollees import build_roster
from fhir_adapter.source import parts
from fhir_adapter.source.files import FileSource
from fhir_adapter.synth import write_feed
from fhir_adapter.testing.outtree import differences, out_tree
from fhir_adapter.writeback.state import WrittenState, content_hash
from tests.bad_input import build
from tests.review.review_feed import SUBJECT, run_feed


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    write_feed(root / "feed", subjects=34, seed=7)
    return root / "feed"


def test_two_workers_write_the_same_out_as_one_process(feed: Path, tmp_path: Path, study: Any) -> None:
    trees = []
    for workers in (1, 2):
        log = RunLog()
        out = tmp_path / f"out{workers}"
        seen: list[str] = []
        summary = run(FileSource(feed, log), study, out, log, workers=workers, on_subject=seen.append)
        assert summary.subjects == 34 and not summary.subjects_failed
        assert len(seen) == 34  # the progress display advances once per subject, in subject order
        trees.append((out_tree(out), seen))
    (one, seen1), (two, seen2) = trees
    assert seen1 == seen2
    assert len(one) > 34 * 3
    assert differences(one, two) == []


def _outs_of_one_and_two_workers(feed: Path, root: Path, study: Any, subjects: int) -> list[dict[str, bytes]]:
    """The OUT trees of the same run with one worker and with two; every subject processed in both."""
    trees = []
    for workers in (1, 2):
        log = RunLog()
        summary = run(FileSource(feed, log), study, root / f"out{workers}", log, workers=workers)
        assert summary.subjects == subjects and not summary.subjects_failed
        trees.append(out_tree(root / f"out{workers}"))
    return trees


def test_files_that_start_with_a_byte_order_mark_read_as_without_it(tmp_path: Path, study: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows tools save UTF-8 with a byte order mark: the first line of every file kept its BOM and was
    quarantined as malformed JSON (in ResearchSubject.ndjson that dropped a subject). In one process and in
    parts read by two workers, the OUT is the one of the same files without it."""
    write_feed(tmp_path / "plain", subjects=3, seed=11)
    (tmp_path / "bom").mkdir()
    for f in (tmp_path / "plain").iterdir():
        data = f.read_bytes()
        (tmp_path / "bom" / f.name).write_bytes(b"\xef\xbb\xbf" + data if f.suffix == ".ndjson" else data)
    monkeypatch.setattr(parts, "PART_BYTES", 2000)
    log = RunLog()
    plain = run(FileSource(tmp_path / "plain", log), study, tmp_path / "out-plain", log)
    assert plain.subjects == 3
    expected = out_tree(tmp_path / "out-plain")
    for one, two in [_outs_of_one_and_two_workers(tmp_path / "bom", tmp_path, study, 3)]:
        assert differences(expected, one) == ["run-report.json"]  # which names its source folder
        report, expected_report = orjson.loads(one["run-report.json"]), orjson.loads(expected["run-report.json"])
        assert (report["counts"], report["quarantine"]) == (expected_report["counts"], expected_report["quarantine"])
        assert differences(one, two) == []


def test_bad_input_read_in_parts_by_two_workers_gives_the_same_out_as_one_process(
        tmp_path: Path, study: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers read the folder in parts (source/parts.py): the quarantine, counts and every file are the
    one-process run's."""
    build(tmp_path / "feed")
    monkeypatch.setattr(parts, "PART_BYTES", 300)  # every file of more than 450 bytes read in several parts
    source = FileSource(tmp_path / "feed", RunLog())
    assert parts.splittable(source) and len(list(parts.plan(source))) > 2 * len(source.subject_files())
    trees = _outs_of_one_and_two_workers(tmp_path / "feed", tmp_path, study, 3)
    assert differences(*trees) == []
    assert len(orjson.loads(trees[1]["run-report.json"])["quarantine"]) > 10


def test_a_run_starts_no_more_workers_than_it_has_subjects(
        tmp_path: Path, study: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers 8`` (or eight cores) on a trial of three enrolled subjects: three worker processes, not eight
    (each would preload the engine for nothing); one subject: none, the run's own process maps it."""
    build(tmp_path / "feed")
    started: list[int] = []
    pool = parallel._pool

    def counted(workers: int, *args: Any) -> Any:
        started.append(workers)
        return pool(workers, *args)

    monkeypatch.setattr(parallel, "_pool", counted)
    log = RunLog()
    summary = run(FileSource(tmp_path / "feed", log), study, tmp_path / "out8", log, workers=8)
    assert summary.subjects == 3 and not summary.subjects_failed
    assert started == [3]
    write_feed(tmp_path / "one", subjects=1, seed=7)
    summary = run(FileSource(tmp_path / "one", RunLog()), study, tmp_path / "one-out", RunLog(), workers=8)
    assert summary.subjects == 1 and started == [3]
    trees = _outs_of_one_and_two_workers(tmp_path / "feed", tmp_path, study, 3)
    assert differences(trees[0], out_tree(tmp_path / "out8")) == []


class _StartsAfter:
    """A worker-started event that is set once it has been asked ``n`` times."""

    def __init__(self, n: int) -> None:
        self.asked, self.n = 0, n

    def is_set(self) -> bool:
        self.asked += 1
        return self.asked > self.n


@pytest.mark.parametrize("read_here", [0, 3, 1000])
def test_the_parts_read_here_while_the_workers_start_are_those_a_worker_reads(
        tmp_path: Path, study: Any, monkeypatch: pytest.MonkeyPatch, read_here: int) -> None:
    """_routed: until a worker has started, the run's process reads the first parts itself; the results come in
    part order and each part keeps what it keeps in a worker."""
    build(tmp_path / "feed")
    monkeypatch.setattr(parts, "PART_BYTES", 300)
    log = RunLog()
    source = FileSource(tmp_path / "feed", log)
    order = sorted(build_roster(source.roster(), study, log).patient_ids)
    chunk_of = [c for c, size in enumerate(parts.chunks(len(order), 2)) for _ in range(size)]
    planned = list(parts.plan(source))

    def given(name: str) -> parts.PartInput:
        (tmp_path / name).mkdir()
        return parts.PartInput(order, chunk_of, source.roster().base, source.known_patients(), tmp_path / name)

    alone = given("alone")
    expected = [parts.route(p, alone) for p in planned]
    submitted: list[int] = []

    class Pool(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            submitted.append(args[0].index)
            return super().submit(fn, *args, **kwargs)

    with Pool(2) as pool:
        got = parallel._routed(planned, pool, given("split"), _StartsAfter(read_here))  # type: ignore[arg-type]
    assert submitted == list(range(min(read_here, len(planned)), len(planned)))
    assert [r.index for r in got] == [p.index for p in planned]
    for want, have in zip(expected, got, strict=True):
        assert (have.sections, have.refs, have.counts, have.log_counts, have.quarantine) == \
            (want.sections, want.refs, want.counts, want.log_counts, want.quarantine)
        assert have.path.read_bytes() == want.path.read_bytes()


def _dies(*_: Any) -> None:
    os._exit(1)


def test_a_worker_dying_while_reading_a_part_leaves_the_reading_to_the_run_process(
        feed: Path, tmp_path: Path, study: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "route", _dies)  # what the workers are asked to read a part with
    monkeypatch.setattr(parallel, "READ_PARTS_WHILE_WORKERS_START", False)  # (else this process would die)
    trees = _outs_of_one_and_two_workers(feed, tmp_path, study, 34)
    assert differences(*trees) == []


def test_the_subjects_of_a_chunk_whose_worker_dies_are_tried_alone(
        tmp_path: Path, study: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path / "feed")
    monkeypatch.setattr(parallel, "_chunk", _dies)  # every worker given a chunk of subjects dies
    trees = _outs_of_one_and_two_workers(tmp_path / "feed", tmp_path, study, 3)
    assert differences(*trees) == []


def _preloaded() -> tuple[bool, int, bool]:
    from fhir_adapter.fhir import r4_elements
    from fhir_adapter.fhir.r4 import model_class
    from fhir_adapter.terminology import units
    return "fhir_adapter.engine.preload" in sys.modules, units._registry.cache_info().currsize, \
        model_class("Observation") in r4_elements._resource_tables


def test_workers_start_with_the_engine_loaded_and_no_ucum_registry_built() -> None:
    """The registry (a second of CPU) is not built for the workers: the study's units come with the study; the
    quick R4 check's tables are built before the workers are forked."""
    with ProcessPoolExecutor(1, mp_context=context()) as pool:
        assert pool.submit(_preloaded).result() == (True, 0, True)


def test_a_subject_failing_in_a_worker_fails_alone(feed: Path, study: Any) -> None:
    log = RunLog()
    source = FileSource(feed, log)
    roster = build_roster(source.roster(), study, log)
    subjects = [(roster.enrolled[pid], res) for pid, res in source.subject_resources(roster.patient_ids)][:4]
    broken = subjects[1][0].subject_id
    # an infusion date that is not a date: Day 1 cannot be set for this subject
    # deliberately not a RosterInfusion: setting Day 1 raises inside the worker
    work = SubjectWork(study=study, roster_infusions={broken: "not a date"})  # type: ignore[dict-item]
    outcomes = list(subject_outcomes(subjects, work, SubjectEngine(work), workers=2))
    assert [e.subject_id for e, _, _ in outcomes] == [e.subject_id for e, _ in subjects]
    failed = {o.subject_id: o.error for _, o, _ in outcomes if o.error}
    assert list(failed) == [broken] and "date" in str(failed[broken])
    assert all(o.row is not None for _, o, _ in outcomes if o.subject_id != broken)


def test_a_worker_sends_the_content_hash_of_each_result_it_sends(feed: Path, study: Any, tmp_path: Path) -> None:
    """The run's process compares these with the written state instead of hashing each result again: they must
    be the state's own hashes (an earlier run's state would otherwise see every result as updated)."""
    log = RunLog()
    source = FileSource(feed, log)
    roster = build_roster(source.roster(), study, log)
    subjects = [(roster.enrolled[pid], res) for pid, res in source.subject_resources(roster.patient_ids)][:3]
    work = SubjectWork(study=study)
    for _, o, _ in subject_outcomes(subjects, work, SubjectEngine(work), workers=2):
        assert o.resources and o.hashes == [content_hash(r) for r in o.resources]
        state = WrittenState(tmp_path / f"state-{o.subject_id}.json")
        plan = state.plan(o.subject_id, o.resources, [], dt.date(2026, 1, 1), hashes=o.hashes)
        assert plan.entries == state.plan(o.subject_id, o.resources, [], dt.date(2026, 1, 1)).entries


def test_reviewed_values_with_two_workers_write_the_same_out_as_one_process(tmp_path: Path, study: Any) -> None:
    """Rows carrying a reviewer's decision (ODM AuditRecords, reviewer OIDs numbered by the run) and the
    REVSTAT column come out the same when workers render the exports."""
    first, _ = run_feed(tmp_path, study, out=tmp_path / "first")
    store = DecisionStore.under(first)
    for visit, item, action, candidate, reason in [
            ("W24", "c3", "choose", "Observation/c3-w24b", "day-169 sample haemolysed"),
            ("W12", "c3", "accept", None, "")]:
        shown = next(e for e in orjson.loads((first / "review" / "candidates" / f"{SUBJECT}.json").read_bytes())
                     ["items"] if e["visit"] == visit and e["item"] == item)
        store.append(new_decision(subject_id=SUBJECT, visit=visit, item=item, action=action, reviewer="D. Manager",
                                  shown=shown, candidate=candidate, reason=reason))
    trees = []
    for workers in (1, 2):
        out, summary = run_feed(tmp_path, study, out=tmp_path / f"w{workers}", review_state=first / "state",
                                workers=workers)
        assert summary.subjects == 2 and not summary.subjects_failed
        trees.append(out_tree(out))
    assert b"<AuditRecord" in trees[0]["export/odm.xml"] and b"USR.REVIEW.1" in trees[0]["export/odm.xml"]
    assert differences(trees[0], trees[1]) == []


_KILLED_RUN = """
import os, sys, time
from pathlib import Path
from fhir_adapter.engine import parallel
from fhir_adapter.engine.forkserver import context
from fhir_adapter.engine.subject import SubjectWork
from fhir_adapter.study.load import load_study

def _pid_after_a_while():
    time.sleep(0.5)
    return os.getpid()

if __name__ == "__main__":
    pool = parallel._executor(2, SubjectWork(study=load_study(Path(sys.argv[1]))), context())
    pids = {f.result() for f in [pool.submit(_pid_after_a_while) for _ in range(4)]}
    print(" ".join(map(str, sorted(pids))), flush=True)
    time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_workers_and_their_forkserver_end_when_the_run_process_is_killed(tmp_path: Path) -> None:
    """A run killed with SIGKILL (the OOM killer, a scheduler's time limit) leaves no worker behind: each
    worker would otherwise wait forever on its task queue and keep the forkserver alive."""
    import signal
    import subprocess
    import time

    script = tmp_path / "killed_run.py"
    script.write_text(_KILLED_RUN)
    run = subprocess.Popen([sys.executable, str(script), str(Path(__file__).parents[2] / "mappings" / "lcar-aio")],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout is not None
        workers = [int(p) for p in run.stdout.readline().split()]
        assert workers and all(_running(p) for p in workers)
        helpers = {_parent(p) for p in workers} - {run.pid}  # the forkserver that forked them
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_running(p) for p in [*workers, *helpers]):
            time.sleep(0.2)
        assert not [p for p in [*workers, *helpers] if _running(p)]
    finally:
        if run.poll() is None:
            run.kill()


@pytest.mark.parametrize("workers", [1, 2])
def test_what_a_run_spools_of_the_chart_stays_in_its_staging_folder(feed: Path, tmp_path: Path, study: Any,
                                                                    workers: int,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The subjects' lines a run writes to disk — spool files (one process), a local folder's parts (workers) —
    are in OUT's staging folder while it runs, never in the system's temporary folder: a run killed there leaves
    raw EHR lines only inside OUT, where the next run removes its unfinished staging folder (job/staging.py)."""
    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    monkeypatch.setattr(FileSource, "spool_bytes", 0)  # every subject's lines go to a spool file
    out = tmp_path / "out"
    during: list[tuple[list[str], list[str]]] = []

    def look(_subject: str) -> None:
        staged = [p.name.rsplit("-", 1)[0] for p in out.glob(".staging-*/fhir-adapter-*")]
        # (multiprocessing keeps its forkserver's socket in a pymp-* folder there: no chart content)
        during.append((staged, [p.name for p in system_tmp.glob("fhir-adapter-*")]))

    summary = run(FileSource(feed, RunLog()), study, out, RunLog(), on_subject=look, workers=workers)
    assert summary.subjects > 0 and during
    spooled = "fhir-adapter-subjects" if workers == 1 else "fhir-adapter-parts"
    assert all(staged == [spooled] and not elsewhere for staged, elsewhere in during), during[:2]
    assert not list(out.glob(".staging-*")) and not list(system_tmp.glob("fhir-adapter-*"))


def test_a_worker_leaves_ctrl_c_to_the_run_process(study: Any) -> None:
    """Ctrl-C reaches the run's whole process group: a worker ignores it (the run's process says one line and
    shuts the pool down); a worker that took it ended with a KeyboardInterrupt traceback on stderr."""
    import signal
    import time

    with parallel._executor(1, SubjectWork(study=study), context()) as pool:
        pid = pool.submit(os.getpid).result(timeout=120)
        assert pool.submit(signal.getsignal, signal.SIGINT).result(timeout=60) == signal.SIG_IGN
        os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        assert pool.submit(os.getpid).result(timeout=60) == pid  # the same worker, alive and working
