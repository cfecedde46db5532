"""An export's folder as Spark's readers see it: any path or URI Spark reads (``s3a://``, ``abfss://``,
``gs://``, ``hdfs://``, ``file://``, a path on Spark's default file system) listed and opened through
``spark.read.format("binaryFile")``, so the driver needs no access of its own to the files (a classic session
and a Spark Connect session alike).

The files are then classified and read exactly as a local folder's (:mod:`fhir_adapter.source.layout`,
:class:`fhir_adapter.source.files.FileSource`). Spark's file listing leaves out names that start with ``.`` or
``_`` (``_SUCCESS``, ``_temporary/``); the local reader leaves out only the ``.`` ones.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from fhir_adapter.source.base import SourceError
from fhir_adapter.source.layout import DataFile, unreadable

if TYPE_CHECKING:
    from pyspark.sql import DataFrameReader, SparkSession


class SparkJobFailed(SourceError):
    """A Spark job of the run failed (after Spark's task retries): the run stops, outputs untouched."""


#: Spark's error when its reader could not read a file (a damaged or truncated gzip part, a file gone)
_FAILED_READ = re.compile(r"Encountered error while reading file (\S+?)\.?(?:\s|$)")


def job_failed(exc: BaseException, files: Sequence[DataFile] = ()) -> SparkJobFailed:
    """The error a failed Spark job raised, told in one line: an executor's SourceError (a file that cannot be
    read) as it is; a file Spark's own reader could not read (one of ``files``) as the file source says it;
    anything else with what to do."""
    text = str(exc)
    for line in text.splitlines():
        if "SourceError: " in line:
            return SparkJobFailed(line.split("SourceError: ", 1)[1].strip())
    failed = _FAILED_READ.search(text)
    if failed:
        where = unquote(urlsplit(failed.group(1)).path)
        f = next((f for f in files if urlsplit(f.path).path == where), None)
        cause = next((line.split("Caused by: ", 1)[1].strip() for line in text.splitlines() if "Caused by: " in line),
                     "the reader failed")
        if f is not None:
            return SparkJobFailed(str(unreadable(f, OSError(cause))))
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return SparkJobFailed(f"the Spark job failed: {first[:500]}; a task that fails on every attempt "
                          "(spark.task.maxFailures) stops the run: see docs/spark.md, 'When something fails' (run "
                          "with --engine local --workers N to find a subject that stops its worker)")


def spark_errors() -> tuple[type[BaseException], ...]:
    from py4j.protocol import Py4JJavaError  # type: ignore[import-untyped]
    from pyspark.errors import PySparkException

    return (PySparkException, Py4JJavaError)


def _root_path(location: str) -> str:
    """The path part of a folder's location, as Spark's listing writes it (no trailing ``/``); a bare relative
    path is taken relative to this process's working directory (Spark's local file system)."""
    parts = urlsplit(location)
    uri = bool(parts.scheme) and len(parts.scheme) > 1  # a one-letter scheme is a Windows drive
    return (parts.path if uri else os.path.abspath(location)).rstrip("/")


class SparkFolder:
    """A :class:`~fhir_adapter.source.layout.Folder` read through ``spark.read.format("binaryFile")``."""

    def __init__(self, spark: SparkSession, location: str) -> None:
        self.spark = spark
        self.location = location
        self._paths: dict[str, str] | None = None

    def files(self) -> list[str]:
        if self._paths is None:
            self._paths = self._list()
        return sorted(self._paths)

    def path(self, name: str) -> str:
        if self._paths is not None and name in self._paths:
            return self._paths[name]
        return self.location.rstrip("/") + "/" + name

    def open(self, path: str) -> IO[bytes]:
        try:
            rows = self._read().load(path).select("content").collect()
        except spark_errors() as exc:
            raise job_failed(exc) from exc
        if not rows:
            raise FileNotFoundError(f"{path} is gone from {self.location} (it was listed at the start of the run)")
        return io.BytesIO(bytes(rows[0]["content"]))

    def lines(self, f: DataFile) -> Iterator[bytes]:
        """An NDJSON file's lines through Spark's text reader (gzip'd ones decompressed by it), brought to the
        driver one split at a time (``toLocalIterator``): a shared file of any size (a hospital's Specimens)
        never sits whole in the JVM or here. One file's splits come in file order; checked."""
        from pyspark.sql import functions as fn

        try:
            rows = (self.spark.read.option("lineSep", "\n").text(f.path)
                    .select(fn.col("_metadata.file_block_start").alias("block"), "value").toLocalIterator())
            last = 0
            for row in rows:
                if row["block"] < last:
                    raise SparkJobFailed(f"{f.path}: Spark returned the file's splits out of order; read it with "
                                         "--engine local")
                last = row["block"]
                yield str(row["value"]).encode() + b"\n"
        except spark_errors() as exc:
            raise job_failed(exc, [f]) from exc

    def _read(self) -> DataFrameReader:
        return self.spark.read.format("binaryFile")

    def _list(self) -> dict[str, str]:
        from pyspark.errors import AnalysisException

        try:
            rows = self._read().option("recursiveFileLookup", "true").load(self.location).select("path").collect()
        except AnalysisException as exc:
            if "PATH_NOT_FOUND" in str(exc):
                raise FileNotFoundError(f"source {self.location} does not exist (as Spark reads it): give the "
                                        "export folder's URI, e.g. s3a://bucket/export or file:///data/export") \
                    from exc
            raise job_failed(exc) from exc
        except spark_errors() as exc:  # e.g. no file system for the URI's scheme (its jars are missing)
            raise job_failed(exc) from exc
        root = _root_path(self.location)
        paths: dict[str, str] = {}
        for row in rows:
            full = str(row["path"])
            path = urlsplit(full).path
            if not path.startswith(root + "/"):
                raise SourceError(f"{full}: Spark listed it under {self.location}, but its path does not start "
                                  f"with {root}; give --source as an absolute path or a URI")
            paths[path[len(root) + 1:]] = full
        return paths
