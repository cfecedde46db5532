"""``run --engine spark``: Spark (local[2]) lists and reads the export, wherever Spark's readers reach it, and runs
the per-subject engine on its executors; every output equals the local engine's, byte for byte; a subject that
fails on an executor fails alone; over Spark Connect too.

One JVM serves the module: the classic session the first test starts is reused by the next ones (the CLI's
``getOrCreate``); the Spark Connect test runs last, on a Connect server started in the same JVM."""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.engine.spark import SparkSubjects, spark_session
from fhir_adapter.engine.spark_files import SparkFolder
from fhir_adapter.engine.subject import SubjectWork
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.source.files import FileSource
from fhir_adapter.synth import write_feed
from fhir_adapter.testing.outtree import differences, out_tree
from tests.feedkit import recount_manifest


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spark")
    write_feed(root / "feed", subjects=34, seed=7)
    return root / "feed"


def _bulk_layouts(feed: Path, dst: Path) -> None:
    """The layouts of one Bulk export at once: Observation in three gzip'd numbered parts in a sub-folder,
    Condition gzip'd, the SMART server's ``N.Type.ndjson`` names, ``Type.ndjson``, a manifest with absolute
    URLs and an error file."""
    manifest: dict[str, Any] = {"transactionTime": "2026-11-01T00:00:00Z", "request": "https://x/$export",
                                "requiresAccessToken": False, "output": [], "error": []}
    dst.mkdir(parents=True)
    for n, p in enumerate(sorted(feed.glob("*.ndjson")), start=1):
        lines = [line for line in p.read_bytes().splitlines() if line.strip()]
        if p.stem == "Observation":
            third = len(lines) // 3
            for i, part in enumerate([lines[:third], lines[third:2 * third], lines[2 * third:]]):
                name = f"parts/Observation.{i:03d}.ndjson.gz"
                (dst / "parts").mkdir(exist_ok=True)
                (dst / name).write_bytes(gzip.compress(b"\n".join(part) + b"\n"))
                manifest["output"].append({"type": "Observation", "url": f"https://bulk.example.org/f/{name}"})
            continue
        if p.stem == "Condition":
            (dst / "Condition.ndjson.gz").write_bytes(gzip.compress(p.read_bytes()))
            continue  # not in the manifest: found next to the listed files
        name = f"{n}.{p.stem}.ndjson" if n % 2 else p.name
        shutil.copy(p, dst / name)
        manifest["output"].append({"type": p.stem, "url": f"https://bulk.example.org/f/{name}"})
    outcome = {"resourceType": "OperationOutcome", "id": "e1", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": "Immunization export failed: timeout"}]}
    (dst / "errors").mkdir()
    (dst / "errors" / "OperationOutcome.ndjson").write_bytes(orjson.dumps(outcome) + b"\n")
    manifest["error"].append({"type": "OperationOutcome", "url": "https://bulk.example.org/f/errors/"
                              "OperationOutcome.ndjson"})
    (dst / "manifest.json").write_bytes(orjson.dumps(manifest))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six subjects in every Bulk layout at once; the local engine's OUT of it in ``local-out``."""
    root = tmp_path_factory.mktemp("spark-small")
    write_feed(root / "plain", subjects=6, seed=11)
    _bulk_layouts(root / "plain", root / "export")
    r = CliRunner().invoke(main, ["-q", "run", "--source", str(root / "export"), "--out", str(root / "local-out"),
                                  "--workers", "1"])
    assert r.exit_code == 2, r.output  # 2: the export's error file is quarantined
    return root


def _same_out(local: Path, spark: Path, spark_source: str, local_source: str) -> list[str]:
    one = out_tree(local)
    two = {k: v.replace(spark_source.encode(), local_source.encode()) for k, v in out_tree(spark).items()}
    assert len([k for k in one if k.startswith("crf/")]) > 0
    return differences(one, two)


def test_spark_local2_writes_the_same_out_as_the_local_engine(feed: Path, tmp_path: Path) -> None:
    """... and OUT/.spark-staging, where the executors wrote the outcomes, is gone after the run, with what a
    killed run had left there."""
    left = tmp_path / "spark" / ".spark-staging" / "a-killed-run"
    left.mkdir(parents=True)
    (left / "part-00000-x.snappy.parquet").write_bytes(b"half written")
    runner = CliRunner()
    local = runner.invoke(main, ["-q", "run", "--source", str(feed), "--out", str(tmp_path / "local"),
                                 "--workers", "1"])
    spark = runner.invoke(main, ["-q", "run", "--engine", "spark", "--spark-master", "local[2]",
                                 "--source", str(feed), "--out", str(tmp_path / "spark")])
    assert local.exit_code == spark.exit_code == 2, (local.output, spark.output)  # 2: quarantined input
    one, two = out_tree(tmp_path / "local"), out_tree(tmp_path / "spark")
    assert len([k for k in one if k.startswith("crf/")]) == 34
    assert any(k.startswith("export/") for k in one) and any(k.startswith("writeback/") for k in one)
    assert differences(one, two) == []
    assert not (tmp_path / "spark" / ".spark-staging").exists()


def test_spark_keeps_the_lines_it_spills_in_out_not_in_the_temporary_folder(
        small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local master's block manager and shuffle files (the export's lines) and pyspark's broadcast files (the
    roster, the shared resources) are in OUT/.spark-local while the run lasts, not in the system's temporary
    folder (Spark's default), and gone after it (SECURITY.md), with what a killed run had left there."""
    from pyspark import SparkContext

    from fhir_adapter.cli.console import RunProgress

    out = tmp_path / "spark"
    (out / ".spark-local" / "blockmgr-of-a-killed-run").mkdir(parents=True)
    seen: list[tuple[list[Path], Path, list[Path]]] = []
    advance = RunProgress.advance

    def looking(progress: RunProgress, subject_id: str) -> None:   # while the subjects' outcomes come back
        sc = SparkContext._active_spark_context
        assert sc is not None and sc._jsc is not None and sc._jvm is not None
        # the folders Spark's block manager uses (its settings and SPARK_LOCAL_DIRS, as Spark reads them)
        roots = [Path(d) for d in sc._jvm.org.apache.spark.util.Utils.getConfiguredLocalDirs(sc._jsc.sc().conf())]
        spilled = [p for p in out.glob(".spark-local/blockmgr-*/**/*") if p.is_file()]
        seen.append((roots, Path(sc._temp_dir), spilled))
        advance(progress, subject_id)

    monkeypatch.setattr(RunProgress, "advance", looking)
    r = CliRunner().invoke(main, ["run", "--engine", "spark", "--spark-master", "local[2]",
                                  "--source", str(small / "export"), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert len(seen) == 6
    for roots, broadcasts, spilled in seen:
        assert roots == [out / ".spark-local"] and broadcasts.is_relative_to(out / ".spark-local")
        assert spilled   # the export's lines Spark persisted (DISK_ONLY) are there
    assert not (out / ".spark-local").exists()
    assert SparkContext._active_spark_context is None   # stopped with the run, its files removed


def test_spark_reads_a_file_uri_in_every_bulk_layout(small: Path, tmp_path: Path) -> None:
    """The whole export (roster, shared resources, error file, manifest and subject files) read through Spark's
    readers from a ``file://`` URI: gzip'd numbered parts in a sub-folder, ``N.Type`` names, a manifest."""
    uri = (small / "export").as_uri()
    r = CliRunner().invoke(main, ["-q", "run", "--engine", "spark", "--spark-master", "local[2]",
                                  "--source", uri, "--out", str(tmp_path / "spark")])
    assert r.exit_code == 2, r.output
    assert _same_out(small / "local-out", tmp_path / "spark", uri, str(small / "export")) == []
    report = orjson.loads((tmp_path / "spark" / "run-report.json").read_bytes())
    assert report["source"] == f"files:{uri}"
    [error] = [q for q in report["quarantine"] if q["rule"] == "export-error"]
    assert error["file"] == "errors/OperationOutcome.ndjson" and "Immunization export failed" in error["reason"]
    assert report["counts"]["read.Observation"] > 0 and report["counts"]["read.Condition"] > 0


def test_spark_source_that_does_not_exist_is_an_error_naming_it(tmp_path: Path) -> None:
    uri = (tmp_path / "nowhere").as_uri()
    r = CliRunner().invoke(main, ["run", "--engine", "spark", "--spark-master", "local[2]", "--source", uri,
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and uri in r.output and "does not exist" in r.output


def test_a_truncated_gzip_part_read_on_an_executor_is_an_error_naming_it(small: Path, tmp_path: Path) -> None:
    shutil.copytree(small / "export", tmp_path / "export")
    part = tmp_path / "export" / "parts" / "Observation.001.ndjson.gz"
    part.write_bytes(part.read_bytes()[:-40])
    r = CliRunner().invoke(main, ["run", "--engine", "spark", "--spark-master", "local[2]",
                                  "--source", str(tmp_path / "export"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1, r.output
    assert "parts/Observation.001.ndjson.gz: cannot be read" in r.output and "truncated" in r.output
    assert not (tmp_path / "out" / "crf").exists()  # nothing written: the run stopped before moving outputs in


def test_lines_of_a_file_spark_splits_are_numbered_as_the_file_source_numbers_them(small: Path,
                                                                                   tmp_path: Path) -> None:
    """Spark's text reader splits a large NDJSON file between tasks (here every 256 KB) and each task numbers
    its lines from its split's start: the quarantine still names each bad line by its line in the file, and
    every output is the local engine's."""
    shutil.copytree(small / "plain", tmp_path / "feed")
    obs = tmp_path / "feed" / "Observation.ndjson"
    lines = obs.read_bytes().splitlines(keepends=True)
    assert len(obs.read_bytes()) > 8 * 256 * 1024
    malformed, no_id = b"{not json\n", b'{"resourceType": "Observation"}\n'
    bad = {5: malformed, len(lines) // 2: b"\n", len(lines) - 3: no_id}
    for at in sorted(bad, reverse=True):
        lines.insert(at, bad[at])
    obs.write_bytes(b"".join(lines))
    recount_manifest(tmp_path / "feed")
    expected = [n for n, line in enumerate(lines, start=1) if line in (malformed, no_id)]
    assert len(expected) == 2
    spark = spark_session("local[2]")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(256 * 1024))
    try:
        runner = CliRunner()
        local = runner.invoke(main, ["-q", "run", "--source", str(tmp_path / "feed"), "--out", str(tmp_path / "local"),
                                     "--workers", "1"])
        on_spark = runner.invoke(main, ["-q", "run", "--engine", "spark", "--spark-master", "local[2]",
                                        "--source", str(tmp_path / "feed"), "--out", str(tmp_path / "spark")])
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert local.exit_code == on_spark.exit_code == 2, (local.output, on_spark.output)
    report = orjson.loads((tmp_path / "spark" / "run-report.json").read_bytes())
    in_obs = [q for q in report["quarantine"] if q.get("file") == "Observation.ndjson"]
    found = sorted(q["line"] for q in in_obs if q["rule"] in ("malformed-json", "missing-id"))
    assert found == expected and found[-1] > len(lines) // 2  # the last one is in a later split
    # what the mapping quarantined names the line of that resource too (counted across the splits)
    mapped = [q for q in in_obs if q["rule"] not in ("malformed-json", "missing-id")]
    assert mapped and all(f'"{q["id"]}"'.encode() in lines[q["line"] - 1] for q in mapped)
    assert differences(out_tree(tmp_path / "local"), out_tree(tmp_path / "spark")) == []


def test_a_subject_failing_on_an_executor_fails_alone(small: Path, tmp_path: Path, study: Any) -> None:
    """... its outcome (with the error) staged by the executors like the others' (``--spark-staging``: a
    folder shared by other runs) and read back in patient-id order; the run's sub-folder removed at the end."""
    spark = spark_session("local[2]")
    log = RunLog()
    source = FileSource(SparkFolder(spark, str(small / "export")), log)
    shared = tmp_path / "staging"
    subjects = SparkSubjects(spark, source, log, str(shared))
    broken: list[str] = []
    order: list[str] = []
    staged: list[Path] = []

    def with_one_broken(enrolled: dict[str, Enrollee],
                        work: SubjectWork) -> Iterator[tuple[Enrollee, Any, list[Any]]]:
        # an infusion date that is not a date: Day 1 cannot be set for this subject, on the executor
        broken.append(enrolled[sorted(enrolled)[2]].subject_id)
        bad = dataclasses.replace(work, roster_infusions={**work.roster_infusions,
                                                          broken[0]: "not a date"})  # type: ignore[dict-item]
        for e0, outcome, resources in subjects(enrolled, bad):
            staged.extend(shared.glob("*/part-*.parquet"))  # the executors' files, read while the run goes on
            order.append(e0.patient_id)
            yield e0, outcome, resources

    summary = run(source, study, tmp_path / "out", log, engine_outcomes=with_one_broken)
    assert summary.subjects_failed == broken and summary.exit_code == 2
    assert len(order) == 6 and order == sorted(order) and staged
    assert shared.is_dir() and list(shared.iterdir()) == []
    report = orjson.loads((tmp_path / "out" / "run-report.json").read_bytes())
    [failure] = [w for w in report["warnings"] if w.get("rule") == "subject-failed"]
    assert failure["subject_id"] == broken[0] and "date" in failure["message"]
    crfs = sorted(p.name for p in (tmp_path / "out" / "crf").glob("*.json"))
    local_crfs = sorted(p.name for p in (small / "local-out" / "crf").glob("*.json"))
    assert len(crfs) == len(local_crfs) - 1 and len(local_crfs) == 6
    for name in crfs:  # the other subjects' outputs are untouched by the failure
        assert (tmp_path / "out" / "crf" / name).read_bytes() == (small / "local-out" / "crf" / name).read_bytes()


def test_a_staging_location_the_driver_cannot_read_stops_the_run_before_the_subjects(small: Path,
                                                                                      tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["run", "--engine", "spark", "--spark-master", "local[2]", "--spark-staging",
                                  "nowhere://bucket/staging", "--source", str(small / "export"),
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 1, r.output
    assert "--spark-staging nowhere://bucket/staging: the driver cannot open it" in r.output
    assert not (tmp_path / "out" / "crf").exists()


def test_outcomes_written_where_the_driver_does_not_see_them_stop_the_run(small: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A staging folder the executors and the driver do not share (a local path on a cluster): the driver finds
    fewer outcomes than subjects the executors processed, and the run stops (exit 1, OUT untouched) instead of
    taking the missing ones for subjects without data. Here one task's file is gone before the driver reads."""
    import fhir_adapter.engine.spark as spark_engine
    from fhir_adapter.engine.spark_staging import StagedOutcomes

    class NotShared(StagedOutcomes):
        def __init__(self, location: str) -> None:
            folder = Path(unquote(urlsplit(location).path))
            sorted(folder.glob("part-*.parquet"))[0].unlink()
            super().__init__(location)

    monkeypatch.setattr(spark_engine, "StagedOutcomes", NotShared)
    r = CliRunner().invoke(main, ["run", "--engine", "spark", "--spark-master", "local[2]",
                                  "--source", str(small / "export"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1, r.output
    assert "subjects' outcomes are not in" in r.output and "where the driver does not see them" in r.output
    assert not (tmp_path / "out" / "crf").exists() and not (tmp_path / "out" / ".spark-staging").exists()


def test_spark_engine_reads_files_not_fhir_servers(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["run", "--engine", "spark", "--source", "https://ehr.example.org/fhir",
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 64 and "--engine spark reads a folder" in r.output


def test_spark_master_and_spark_remote_together_is_a_usage_error(small: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["run", "--engine", "spark", "--spark-master", "local[2]", "--spark-remote",
                                  "sc://localhost:15002", "--source", str(small / "export"), "--out", str(tmp_path)])
    assert r.exit_code == 64 and "give one" in r.output


_CRASH_ONCE = """
import os

import fhir_adapter.engine.spark as spark_engine

_fresh = spark_engine._fresh


def _crash_once(*args, **kwargs):
    try:  # the first subject of the run, in whichever Python worker gets it first: that worker dies
        os.close(os.open(os.environ["FA_TEST_CRASH_MARKER"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return _fresh(*args, **kwargs)
    os._exit(1)


spark_engine._fresh = _crash_once
"""


def test_a_python_worker_that_dies_is_retried_by_spark_and_reported(small: Path, tmp_path: Path) -> None:
    """A Python worker that dies mid-task (``os._exit`` in the first subject, injected by a ``sitecustomize``
    on the executors' PYTHONPATH — test code only) fails its task; Spark runs the task again
    (``local[2,2]``: two attempts per task), the run's outputs are the local engine's and the run report says
    a task was retried."""
    from pyspark import SparkContext

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CRASH_ONCE)
    marker = tmp_path / "crashed"
    # the executors' Python workers of the run's context start with the hook: set as spark-submit --conf sets
    # it (a JVM system property, which the context the run starts reads)
    SparkContext._ensure_initialized()
    assert SparkContext._jvm is not None
    system = SparkContext._jvm.java.lang.System
    hooked = {"spark.executorEnv.PYTHONPATH": str(hook), "spark.executorEnv.FA_TEST_CRASH_MARKER": str(marker)}
    try:
        for key, value in hooked.items():
            system.setProperty(key, value)
        r = CliRunner().invoke(main, ["-q", "run", "--engine", "spark", "--spark-master", "local[2,2]",
                                      "--source", str(small / "export"), "--out", str(tmp_path / "spark")])
    finally:
        for key in hooked:
            system.clearProperty(key)
    assert r.exit_code == 2, r.output
    assert marker.exists()  # a worker died
    report = orjson.loads((tmp_path / "spark" / "run-report.json").read_bytes())
    [retried] = [w for w in report["warnings"] if w.get("rule") == "spark-task-retried"]
    assert "no output is affected" in retried["message"] and report["counts"]["spark.tasks-retried"] >= 1
    diff = _same_out(small / "local-out", tmp_path / "spark", str(small / "export"), str(small / "export"))
    assert diff == ["run-report.json"]  # the retry's warning and count; every other file is the local engine's


def test_ctrl_c_ends_a_spark_run_with_one_line_and_no_jvm_left(feed: Path, tmp_path: Path) -> None:
    """Ctrl-C while Spark runs the subjects: exit 130 and the `error: interrupted` line last on stderr — no py4j
    or pyspark stack trace (pyspark's own handler cancelled the JVM's jobs in the middle of a call to it, and its
    socket reader failed in its own ``finally``: UnboundLocalError, an "internal error", exit 1), no JVM log or
    Java stack trace after that line, no JVM of the run left."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "fhir_adapter.cli.commands", "run", "--engine", "spark",
                             "--spark-master", "local[2]", "--source", str(feed), "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:  # the 34 subjects take Spark several seconds after this line
        lines.append(line)
        if "progress: processing" in line:
            break
    time.sleep(1)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children  # the JVM Spark started
    proc.send_signal(signal.SIGINT)
    try:
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines) + rest
    assert proc.returncode == 130, stderr
    assert stderr.rstrip().endswith("error: interrupted: OUT keeps the previous run's outputs (a run replaces them "
                                    "only once it has finished); run the same command again"), stderr[-2000:]
    assert "Traceback" not in stderr and "ERROR root" not in stderr and "internal error" not in stderr, stderr
    assert not (tmp_path / "out").exists()
    for pid in children:  # the JVM ended with the run (not orphaned, still logging)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], pid


def test_an_error_raised_while_pyspark_handled_ctrl_c_is_the_ctrl_c() -> None:
    from fhir_adapter.engine.spark import _interrupted

    try:
        try:
            raise KeyboardInterrupt
        finally:
            raise UnboundLocalError("cannot access local variable 'sockfile'")  # as pyspark's own finally does
    except UnboundLocalError as exc:
        assert _interrupted(exc)
    assert not _interrupted(ValueError("not an interrupt"))
    try:  # a Ctrl-C handled long before: the error raised later is that error
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("handled") from None
        except RuntimeError:
            raise ValueError("a real error") from None
    except ValueError as exc:
        assert not _interrupted(exc)


_CONNECT_ENV = ("SPARK_TESTING", "SPARK_LOCAL_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE",
                "SPARK_CONNECT_AUTHENTICATE_TOKEN")


def test_spark_connect_writes_the_same_out_as_the_local_engine(small: Path, tmp_path: Path) -> None:
    """``--spark-remote local[2]``: PySpark starts a Spark Connect server in this process (its jar ships in the
    pyspark package) and the run is a Connect client of it — no SparkContext on the client side. Runs last: a
    classic session cannot be started again in this process once a Connect session was."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:  # the classic session of the tests above: Connect starts its own
        active.stop()
    saved = {k: os.environ.get(k) for k in _CONNECT_ENV}
    os.environ["SPARK_TESTING"] = "1"  # pyspark's switch for a Connect server on a free port (parallel test runs)
    try:
        r = CliRunner().invoke(main, ["-q", "run", "--engine", "spark", "--spark-remote", "local[2]",
                                      "--source", str(small / "export"), "--out", str(tmp_path / "connect")])
        session = SparkSession.getActiveSession()
        assert session is not None and type(session).__module__.startswith("pyspark.sql.connect")
        session.stop()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert r.exit_code == 2, r.output
    assert _same_out(small / "local-out", tmp_path / "connect", str(small / "export"), str(small / "export")) == []
