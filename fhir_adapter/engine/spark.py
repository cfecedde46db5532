"""Subjects on Apache Spark: the export's subject files read by Spark, grouped per subject, and the per-subject
engine (:mod:`fhir_adapter.engine.subject`) run on the executors; everything study-wide stays on the driver
(:func:`fhir_adapter.job.pipeline.run` with ``engine_outcomes``).

The reader model is the file source's (:mod:`fhir_adapter.source.files`) over a folder Spark lists and reads
(:class:`fhir_adapter.engine.spark_files.SparkFolder`: any URI Spark's readers accept): the driver classifies
the files and reads the roster (ResearchStudy, ResearchSubject, Patient) and, once the subjects' references
are known, the shared resources (Medication, Organization, Location, Specimen), each file fetched through
Spark. Spark reads the subject files on the executors — NDJSON through its text reader, split and streamed
line by line (a task numbers its split's lines; the driver adds the line counts of the file's earlier splits),
JSON documents whole through ``binaryFile`` — and each task finds every line's patient exactly as the file
source does (same line numbers, same quarantine entries, same counts). Lines of enrolled patients (the
roster broadcast) are grouped per subject (``groupBy(pid).applyInPandas``), sorted back into file order, and
the engine runs on them; each task writes its subjects' pickled outcomes into a staging folder
(:mod:`fhir_adapter.engine.spark_staging`), from which the driver reads them one row group at a time and
merges them in patient-id order, so every output equals the local engine's and the driver's memory stays flat
in the number of subjects. A subject whose engine fails fails alone (its outcome
carries the error).

A classic session (``--spark-master``, spark-submit) broadcasts the study, the roster and the shared
resources; a Spark Connect session (``--spark-remote``, ``SPARK_REMOTE``) has no SparkContext and sends them
inside the functions' closures (in the plan, once per query).

Needs the ``spark`` extra (``pip install 'fhir-adapter[spark]'``) and Java 17+; see docs/spark.md.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import unquote

import orjson

from fhir_adapter.engine.spark_files import job_failed, spark_errors
from fhir_adapter.engine.spark_staging import StagedOutcomes, StagingUnreadable, arrow_filesystem, staging_location
from fhir_adapter.engine.spark_staging import remove as remove_staged
from fhir_adapter.engine.subject import SubjectEngine, SubjectOutcome, SubjectWork
from fhir_adapter.job.runlog import Locations, Quarantined, RunLog
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.source.base import Resource, shared_references
from fhir_adapter.source.files import FileSource
from fhir_adapter.source.layout import UNREADABLE, DataFile, unreadable
from fhir_adapter.writeback.state import source_statuses

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

#: the lines Spark keeps: an enrolled patient's line (pid set) or a file's log (pid null)
#: ``block``: the first byte of the file split the line was read from (lines are numbered within it); for a
#: split's log, ``line`` holds its number of lines
LINES_SCHEMA = "pid string, file int, block long, line int, entry int, raw binary, log binary"
_LINE_COLUMNS = ["pid", "file", "block", "line", "entry", "raw", "log"]
OUTCOME_SCHEMA = "pid string, outcome binary"
#: shuffle partitions on one machine (Spark's 200 cost a Python worker round trip each); a cluster's setting
#: (spark-submit --conf spark.sql.shuffle.partitions=N) is kept
LOCAL_SHUFFLE_PARTITIONS = 8
#: at most this many subjects in one partition of the grouping (its lines are sorted in one task's memory, its
#: outcomes are one row group the driver holds at a time): a large cohort gets more partitions than
#: ``spark.sql.shuffle.partitions``
SUBJECTS_PER_PARTITION = 50
#: the ``spark.local.dir`` values :func:`spark_session` has set in this process
_LOCAL_DIRS_SET: set[str] = set()


class SparkUnavailable(RuntimeError):
    """pyspark (or Java) is missing: the message says how to install it."""




def spark_session(master: str | None = None, remote: str | None = None,
                  local_dir: str | None = None) -> SparkSession:
    """A Spark session: Spark Connect to ``remote`` (``sc://host:15002``, or ``local[N]`` for a Connect server
    in this process); else a classic session on ``master``; else on spark-submit's master; else ``local[*]``.
    Executors run this interpreter unless PYSPARK_PYTHON says otherwise.

    ``local_dir``: Spark's local folder (``spark.local.dir``: the block manager's files, shuffle files, pyspark's
    broadcast files — lines of the chart) for a classic session on a local master, unless ``spark.local.dir`` is
    configured (SparkConf: spark-submit ``--conf``, ``spark-defaults.conf``) or ``SPARK_LOCAL_DIRS`` is set
    (which Spark puts first); else Spark's default, the system's temporary folder. Spark fixes that folder
    when its context starts, so a context this process already runs is stopped first (:func:`stop_local`)."""
    try:
        from pyspark import SparkConf
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailable("--engine spark needs pyspark: pip install 'fhir-adapter[spark]' (and Java 17+)") \
            from exc
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if remote:
        try:
            import pyspark.sql.connect.session  # noqa: F401  (grpcio and the other Connect client packages)
        except ImportError as exc:
            raise SparkUnavailable(f"--spark-remote {remote} needs the Spark Connect client: pip install "
                                   f"'fhir-adapter[spark]' ({exc})") from exc
        return SparkSession.builder.remote(remote).appName("fhir-adapter").getOrCreate()
    builder = SparkSession.builder.appName("fhir-adapter")
    conf = SparkConf()
    if master:
        builder = builder.master(master)
    elif not conf.contains("spark.master"):
        builder = builder.master("local[*]")
    local = (master or conf.get("spark.master", "local")).startswith("local")
    if local and not conf.contains("spark.sql.shuffle.partitions"):
        builder = builder.config("spark.sql.shuffle.partitions", str(LOCAL_SHUFFLE_PARTITIONS))
    # an earlier run of this process set its own (pyspark passes a session's settings to the JVM it starts as
    # system properties, which every later SparkConf reads): not the user's
    earlier = conf.get("spark.local.dir") in _LOCAL_DIRS_SET
    configured = conf.contains("spark.local.dir") and not earlier
    if local and local_dir is None and earlier:   # Spark's default again, not an earlier run's OUT
        builder = builder.config("spark.local.dir", tempfile.gettempdir())
    if local_dir is not None and local and not configured and not os.environ.get("SPARK_LOCAL_DIRS"):
        _LOCAL_DIRS_SET.add(local_dir)
        from pyspark import SparkContext

        active = SparkContext._active_spark_context
        if active is not None:
            _stop_context(active)
        builder = builder.config("spark.local.dir", local_dir)
        session = builder.getOrCreate()
        kept = os.path.realpath(getattr(session.sparkContext, "_temp_dir", None) or local_dir)
        if os.path.commonpath([kept, os.path.realpath(local_dir)]) != os.path.realpath(local_dir):
            stop_local(session)
            raise SparkUnavailable(f"Spark keeps this process's temporary files (pyspark's broadcasts) in {kept}, "
                                   f"a folder of an earlier Spark context, not in {local_dir}: run each "
                                   "--engine spark run in a process of its own (as the command line does)")
        return session
    return builder.getOrCreate()


def local_dir_of(spark: SparkSession) -> str | None:
    """The ``spark.local.dir`` a classic session was started with (None: Spark's default, or Spark Connect)."""
    if is_connect(spark):
        return None
    value: str | None = spark.sparkContext.getConf().get("spark.local.dir")
    return value


def stop_local(spark: SparkSession) -> None:
    """Stop a classic session and forget the local root folder its JVM keeps for later contexts (Spark keeps
    the first context's for the JVM's life: pyspark's broadcast files of a next context would go there)."""
    jvm: Any = spark.sparkContext._jvm
    spark.stop()
    _forget_local_root(jvm)


def _stop_context(sc: Any) -> None:
    jvm = sc._jvm
    sc.stop()
    _forget_local_root(jvm)


def _forget_local_root(jvm: Any) -> None:
    # Spark's own reset of that folder (org.apache.spark.util.Utils.clearLocalRootDirs); a Spark without it: the
    # next context of this JVM keeps the first folder, which spark_session refuses
    with suppress(Exception):
        getattr(getattr(jvm.org.apache.spark.util, "Utils$"), "MODULE$").clearLocalRootDirs()


#: Spark's local folder of a run on a local master, in OUT (:func:`local_dir_in`)
LOCAL_DIR = ".spark-local"


@dataclasses.dataclass
class Scratch:
    """Spark's local folder of one run, and the session started with it (set once it is)."""

    path: Path
    session: Any = None


@contextmanager
def local_dir_in(out: Path) -> Iterator[Scratch]:
    """``OUT/.spark-local``, Spark's local folder for a run on ``out`` (:func:`spark_session` ``local_dir``): the
    export's lines Spark persists and shuffles and pyspark's broadcast files stay in OUT, never in the system's
    temporary folder. The run holds OUT's lock, so what a killed run left there is removed first; at the end the
    session is stopped (Spark removes its own files) and the folder removed."""
    folder = Path(out) / LOCAL_DIR
    _remove_tree(folder)
    folder.mkdir(mode=0o700)
    scratch = Scratch(folder)
    try:
        yield scratch
    finally:
        try:
            from pyspark import SparkContext

            if scratch.session is not None and SparkContext._active_spark_context is not None and \
                    local_dir_of(scratch.session) == str(folder):
                stop_local(scratch.session)
        except Exception:  # a JVM already ended (Ctrl-C): nothing of it to stop
            pass
        _remove_tree(folder)


def _remove_tree(folder: Path) -> None:
    if folder.is_symlink():   # not a folder of the adapter: the link goes, not what it points to
        folder.unlink()
    else:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def jvm_ended_on_interrupt(spark: SparkSession | None) -> Iterator[None]:
    """Ctrl-C during a run on a classic session: the local JVM (Spark's driver: its jobs end with it) is ended
    before the command says its one line. pyspark's own SIGINT handler is set back to Python's while the run
    lasts: it asks the JVM to cancel every job first, which the JVM logs as errors with stack traces (as it does
    the Python workers the same Ctrl-C stopped), around that line on stderr. A Spark Connect session has no JVM
    here."""
    import signal
    import threading

    restore = None
    if spark is not None and threading.current_thread() is threading.main_thread():
        restore = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        if spark is not None and not is_connect(spark):
            sc = spark.sparkContext
            proc = getattr(getattr(sc, "_gateway", None), "proc", None)
            if proc is not None and proc.poll() is None:
                accumulators = getattr(sc, "_accumulatorServer", None)
                if accumulators is not None:  # its connection to the JVM ends: a traceback on stderr otherwise
                    accumulators.handle_error = lambda request, client_address: None
                try:  # stopped as Spark stops (its temporary files removed), saying nothing of the jobs cut short
                    sc.setLogLevel("OFF")
                    spark.stop()
                except Exception:  # the gateway cut off by the same Ctrl-C: the JVM is ended all the same
                    pass
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise KeyboardInterrupt from exc
    finally:
        if restore is not None:
            signal.signal(signal.SIGINT, restore)


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, or an error raised while pyspark handled it (its socket reader, cut short, fails in its own
    ``finally``: UnboundLocalError whose context is the KeyboardInterrupt itself): the run was interrupted. An
    error whose chain holds a Ctrl-C handled long before is that error."""
    return isinstance(exc, KeyboardInterrupt) or isinstance(exc.__context__, KeyboardInterrupt)


def is_connect(spark: SparkSession) -> bool:
    """A Spark Connect session (no SparkContext on this side)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


T = TypeVar("T")


class Shipped(Generic[T]):
    """A value sent to the executors inside a function's closure (what a broadcast is on Spark Connect)."""

    def __init__(self, value: T) -> None:
        self.value = value


def ship(spark: SparkSession, value: T) -> Any:
    """``value`` for the executors (``.value`` there): a broadcast on a classic session, the closure on Connect."""
    if is_connect(spark):
        return Shipped(value)
    return spark.sparkContext.broadcast(value)


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number, line) as :func:`fhir_adapter.source.layout.read_lines` gives them."""
    for n, line in enumerate(io.BytesIO(data), start=1):
        if line.strip():
            yield n, line


class _Block:
    """What one task saw of one split of an NDJSON file (Spark's text reader: a split's lines in order; a
    gzip'd file is one split): its line count, and the file source's counts, quarantine and shared references
    for its lines, with line numbers counted from the split's first line (the driver adds the lines of the
    file's earlier splits), and the enrolled patients whose lines it kept."""

    def __init__(self, known: set[str]) -> None:
        self.log = RunLog()
        self.source = FileSource.line_reader(known, self.log)
        self.counts: Counter[str] = Counter()
        self.refs: set[tuple[str, str]] = set()
        self.pids: set[str] = set()
        self.lines = 0

    def keep(self, found: Iterable[tuple[int, int | None, Resource, bytes | None]], f: DataFile, i: int,
             start: int, enrolled: frozenset[str], base: str | None, out: list[tuple[Any, ...]]) -> None:
        """The enrolled patients' resources of ``found`` (the file source's reading of file ``i``, split
        ``start``) as rows of :data:`LINES_SCHEMA`; the others counted or quarantined."""
        for n, entry, res, raw in found:
            pid = self.source.enrolled_patient(f, n, entry, res, enrolled, self.counts, base)
            if pid is not None:
                out.append((pid, i, start, n, entry or 0, raw.strip() if raw is not None else orjson.dumps(res), None))
                self.refs |= shared_references([res])
                self.pids.add(pid)

    def summary(self) -> bytes:
        self.counts.update(self.log.counts)
        return pickle.dumps((dict(self.counts), self.log.warnings, self.log.quarantine, self.refs, self.pids))


def _read_ndjson(files: list[DataFile], enrolled: frozenset[str], known: set[str], base: str | None,
                 batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Executor: the enrolled patients' lines of NDJSON files read line by line by Spark (``path``, ``block``:
    the split's first byte, ``value``: the line without its ``\\n``), and per split its line count, counts,
    quarantine and shared references (the file source's subjects pass, one split at a time)."""
    import pandas as pd

    index = {f.path: (i, f) for i, f in enumerate(files)}
    key: tuple[str, int] | None = None
    block = _Block(known)
    out: list[tuple[Any, ...]] = []

    def close() -> None:
        if key is not None:
            out.append((None, index[key[0]][0], key[1], block.lines, 0, None, block.summary()))

    for batch in batches:
        for path, start, value in zip(batch["path"], batch["block"], batch["value"], strict=True):
            here = (unquote(str(path)), int(start))
            if here != key:
                close()
                key, block = here, _Block(known)
            block.lines += 1
            line = str(value).encode()
            if not line.strip():
                continue
            i, f = index[key[0]]
            block.keep(block.source.ndjson_resources(f, [(block.lines, line)], True), f, i, key[1], enrolled, base,
                       out)
        if out:
            yield pd.DataFrame(out, columns=_LINE_COLUMNS)
            out = []
    close()
    if out:
        yield pd.DataFrame(out, columns=_LINE_COLUMNS)


def _read_documents(files: list[DataFile], enrolled: frozenset[str], known: set[str], base: str | None,
                    batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Executor: the enrolled patients' resources of JSON documents (a Bundle or a resource per file, read
    whole), and per file its counts, quarantine and shared references."""
    import pandas as pd

    index = {f.path: (i, f) for i, f in enumerate(files)}
    for batch in batches:
        rows: list[tuple[Any, ...]] = []
        for path, content in zip(batch["path"], batch["content"], strict=True):
            i, f = index[str(path)]
            data = bytes(content)
            if f.name.endswith(".gz"):
                try:
                    data = gzip.decompress(data)
                except UNREADABLE as exc:
                    raise unreadable(f, exc) from exc
            block = _Block(known)
            block.keep(block.source.document_resources(f, data, True), f, i, 0, enrolled, base, rows)
            rows.append((None, i, 0, 0, 0, None, block.summary()))
        yield pd.DataFrame(rows, columns=_LINE_COLUMNS)


def _file_logs(rows: list[tuple[int, int, int, bytes]], files: list[DataFile]) -> Iterator[
        tuple[dict[str, int], list[dict[str, Any]], list[Quarantined], set[tuple[str, str]], set[str]]]:
    """The splits' summaries in file order, their quarantine entries numbered from the start of the file (the
    line counts of the file's earlier splits added), as the file source's pass gives them; with each split's
    shared references and the patients whose lines it kept."""
    offset: dict[int, int] = {}
    for i, _, lines, blob in sorted(rows, key=lambda r: (r[0], r[1])):
        counts, warnings, quarantine, refs, pids = pickle.loads(blob)
        skip = offset.get(i, 0)
        if skip:
            quarantine = [dataclasses.replace(q, line=q.line + skip) if q.line is not None and q.file == files[i].name
                          else q for q in quarantine]
        offset[i] = skip + lines
        yield counts, warnings, quarantine, refs, pids


_engine: tuple[str, SubjectEngine] | None = None


#: what names a subject line's place in the export: each file's (name, NDJSON?) by index, and per (file
#: index, split) the lines of the file's earlier splits (a split numbers its lines from its start)
Places = tuple[list[tuple[str, bool]], dict[tuple[int, int], int]]


def _places(logs: list[tuple[int, int, int, bytes]], files: list[DataFile]) -> Places:
    """:data:`Places` of the splits' logs (the line counts :func:`_file_logs` adds up)."""
    skip: dict[tuple[int, int], int] = {}
    seen: dict[int, int] = {}
    for i, block, lines, _ in sorted(logs, key=lambda r: (r[0], r[1])):
        skip[(i, block)] = seen.get(i, 0)
        seen[i] = seen.get(i, 0) + lines
    return [(f.name, f.ndjson) for f in files], skip


def _subject(run: str, work: Any, enrolled: Any, shared: Any, places: Any, pdf: pd.DataFrame) -> pd.DataFrame:
    """Executor: one subject's lines in file order → its pickled :class:`SubjectOutcome`."""
    import pandas as pd

    global _engine
    if _engine is None or _engine[0] != run:  # one engine per Python worker and run
        _engine = (run, SubjectEngine(work.value))
    pdf = pdf.sort_values(["file", "block", "line", "entry"], kind="stable")
    pid = str(pdf["pid"].iloc[0])
    resources = [orjson.loads(bytes(r)) for r in pdf["raw"]]
    files, skip = places.value
    where: Locations = {}  # as the file source's records give them (source/files.py checked_records)
    for res, i, block, n, entry in zip(resources, pdf["file"], pdf["block"], pdf["line"], pdf["entry"], strict=True):
        name, ndjson = files[int(i)]
        if isinstance(res.get("id"), str):
            where.setdefault((res["resourceType"], res["id"]),
                             (name, int(n) + skip.get((int(i), int(block)), 0) if ndjson or not entry else None,
                              int(entry) or None))
    outcome = _fresh(_engine[1], enrolled.value[pid], resources, shared.value, where)
    return pd.DataFrame({"pid": [pid], "outcome": [pickle.dumps(outcome)]})


def _fresh(engine: SubjectEngine, e0: Enrollee, resources: list[Resource],
           shared: dict[tuple[str, str], bytes], where: Locations | None = None) -> SubjectOutcome:
    resources.extend(orjson.loads(shared[key]) for key in sorted(shared_references(resources)) if key in shared)
    outcome = engine.fresh(e0, resources, where=where)
    outcome.statuses = source_statuses(resources)
    return outcome


class SparkSubjects:
    """``engine_outcomes`` for :func:`fhir_adapter.job.pipeline.run`: the subjects of a file source on Spark."""

    def __init__(self, spark: SparkSession, source: FileSource, runlog: RunLog, staging: str | None = None, *,
                 own: bool = False) -> None:
        """``staging``: the folder (a path of the driver, or a URI) the executors write the subjects' outcomes
        into and the driver reads them from (:mod:`fhir_adapter.engine.spark_staging`): each run writes a
        sub-folder of its own and removes it at the end; ``own``: the folder is this run's alone (in OUT, whose
        lock the run holds), so what a killed run left there is removed and the folder with it. None: a new
        folder in this machine's temporary folder (a local master only)."""
        self.spark = spark
        self.source = source
        self.runlog = runlog
        self.staging = staging_location(staging) if staging is not None else None
        self.own = own or staging is None

    def __call__(self, enrolled: dict[str, Enrollee],
                 work: SubjectWork) -> Iterator[tuple[Enrollee, SubjectOutcome, list[Resource]]]:
        try:
            yield from self._outcomes(enrolled, work)
        except spark_errors() as exc:
            raise job_failed(exc, self.source.subject_files()) from exc

    def _outcomes(self, enrolled: dict[str, Enrollee],
                  work: SubjectWork) -> Iterator[tuple[Enrollee, SubjectOutcome, list[Resource]]]:
        spark, source = self.spark, self.source
        files = source.subject_files()
        known = source.known_patients()
        base = source.roster().base
        pids = frozenset(enrolled)
        run = uuid.uuid4().hex
        if not is_connect(spark):  # the run's jobs, for their failed tasks (Spark Connect has no status tracker)
            spark.sparkContext.setJobGroup(run, "fhir-adapter run")
        if not files:
            yield from self._driver_only(enrolled, work)
            return
        from pyspark import StorageLevel

        location = self.staging or staging_location(tempfile.mkdtemp(prefix="fhir-adapter-spark-"))
        if self.own:  # what a killed run left (or the empty temporary folder: Spark's writer creates its own)
            remove_staged(location)
        else:  # one the driver cannot read stops the run now, not after every subject was processed
            arrow_filesystem(location)
        # on disk: the memory of an executor's JVM stays for sorting the subjects' lines (a cached copy of the
        # export's lines filled a 1 GB heap at 3,400 subjects)
        lines = self._lines(files, pids, known, base).persist(StorageLevel.DISK_ONLY)
        try:
            wanted: set[tuple[str, str]] = set()
            logs = [(r["file"], r["block"], r["line"], r["log"])
                    for r in lines.where("pid is null").select("file", "block", "line", "log").collect()]
            kept: set[str] = set()  # the subjects with lines: each one's outcome must come back
            for counts, warnings, quarantine, refs, seen in _file_logs(logs, files):  # as the file source adds them
                for k, n in counts.items():
                    self.runlog.count(k, n)
                self.runlog.warnings.extend(warnings)
                self.runlog.quarantine.extend(quarantine)
                wanted |= refs
                kept |= seen
            shared = source.shared_records(wanted)  # as JSON bytes: a hospital's Specimens go to every executor
            b_work, b_enrolled, b_shared = ship(spark, work), ship(spark, enrolled), ship(spark, shared)
            b_places = ship(spark, _places(logs, files))
            # subjects in ranges of patient ids (at most SUBJECTS_PER_PARTITION per range), each range's outcomes
            # written by its task into the staging folder: one row group the driver reads at a time
            partitions = max(int(spark.conf.get("spark.sql.shuffle.partitions") or LOCAL_SHUFFLE_PARTITIONS),
                             -(-len(enrolled) // SUBJECTS_PER_PARTITION))
            outcomes = (lines.where("pid is not null").repartitionByRange(partitions, "pid").groupBy("pid")
                        .applyInPandas(lambda pdf: _subject(run, b_work, b_enrolled, b_shared, b_places, pdf),
                                       OUTCOME_SCHEMA))
            # every subject at once on the executors, each task writing its subjects' outcomes
            outcomes.write.parquet(f"{location}/{run}")
            staged = StagedOutcomes(f"{location}/{run}")
            if missing := kept - staged.index.keys():
                raise StagingUnreadable(
                    f"{len(missing)} of {len(kept)} subjects' outcomes are not in {location}/{run} as the driver "
                    "reads it: the executors wrote them where the driver does not see them; on a cluster give "
                    "--spark-staging on storage both reach (s3a://, gs://, hdfs://, abfss://, a path mounted on "
                    "every node; docs/spark.md)")
            engine: SubjectEngine | None = None
            for pid in sorted(enrolled):
                blob = staged.pop(pid)
                if blob is not None:
                    yield enrolled[pid], pickle.loads(blob), []
                else:  # an enrolled subject with no resources in the export
                    engine = engine or SubjectEngine(work)
                    yield enrolled[pid], _fresh(engine, enrolled[pid], [], shared), []
            self._report_retries(run)
        finally:
            spark.catalog.clearCache()
            remove_staged(location if self.own else f"{location}/{run}")

    def _lines(self, files: list[DataFile], pids: frozenset[str], known: set[str], base: str | None) -> DataFrame:
        """The subject files' kept lines and per-split logs (:data:`LINES_SCHEMA`): NDJSON files through Spark's
        text reader, split by Spark and streamed line by line (gzip'd ones whole, still streamed), so no file
        is ever held in memory; JSON documents whole, through ``binaryFile``."""
        from pyspark.sql import functions as fn

        ndjson = [f for f in files if f.ndjson]
        documents = [f for f in files if not f.ndjson]
        parts: list[DataFrame] = []
        if ndjson:
            text = (self.spark.read.option("lineSep", "\n").text([f.path for f in ndjson])
                    .select(fn.col("_metadata.file_path").alias("path"),
                            fn.col("_metadata.file_block_start").alias("block"), "value"))
            parts.append(text.mapInPandas(lambda b: _read_ndjson(files, pids, known, base, b), LINES_SCHEMA))
        if documents:
            whole = self.spark.read.format("binaryFile").load([f.path for f in documents]).select("path", "content")
            parts.append(whole.mapInPandas(lambda b: _read_documents(files, pids, known, base, b),
                                           LINES_SCHEMA))
        return parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])

    def _report_retries(self, run: str) -> None:
        """Tasks Spark ran again (a Python worker or an executor that stopped, a task that raised): every task
        succeeded in the end, so no output differs, but the run report says so."""
        if is_connect(self.spark):
            return
        sc = self.spark.sparkContext
        tracker = sc.statusTracker()
        failed = 0
        for job in tracker.getJobIdsForGroup(run):
            info = tracker.getJobInfo(job)
            for stage in info.stageIds if info is not None else []:
                stage_info = tracker.getStageInfo(stage)
                failed += stage_info.numFailedTasks if stage_info is not None else 0
        if failed:
            self.runlog.count("spark.tasks-retried", failed)
            self.runlog.warn(f"Spark ran {failed} failed task(s) again (an executor or its Python worker stopped, "
                             "or a task raised) and every task then succeeded: no output is affected; the Spark "
                             f"UI and logs of application {sc.applicationId} say why", rule="spark-task-retried")

    def _driver_only(self, enrolled: dict[str, Enrollee],
                     work: SubjectWork) -> Iterator[tuple[Enrollee, SubjectOutcome, list[Resource]]]:
        engine = SubjectEngine(work)
        for pid in sorted(enrolled):
            yield enrolled[pid], _fresh(engine, enrolled[pid], [], {}), []
