"""The subjects' outcomes staged by the executors: each task of the per-subject stage writes its subjects'
pickled outcomes as a Parquet file into a staging folder (Spark's own writer, so any URI Spark writes), and the
driver reads them back with pyarrow one row group at a time, in patient-id order, so they never pass through
the driver's JVM (``toLocalIterator`` kept every outcome served in the JVM heap: 3,400 subjects filled 2 GB)
and the driver's memory holds at most one task's outcomes (one row group: at most ``SUBJECTS_PER_PARTITION``
subjects).

The staging folder must be one location the executors write and the driver reads: a local folder with a
local master (the default, ``OUT/.spark-staging``), shared storage on a cluster (``s3a://``, ``gs://``,
``hdfs://``, ``abfss://``, or a file system mounted at the same path everywhere). pyarrow reads it on the
driver (``s3a://`` read as ``s3://``; credentials from the driver's environment, as pyarrow takes them).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fhir_adapter.source.base import SourceError

if TYPE_CHECKING:
    import pyarrow as pa
    from pyarrow.fs import FileSystem

#: the same object stores under the names pyarrow knows them by
_ARROW_SCHEMES = {"s3a": "s3", "s3n": "s3", "abfss": "abfs"}


class StagingUnreadable(SourceError):
    """The driver cannot read the staging location the executors wrote."""


def _has_scheme(location: str) -> bool:
    scheme = urlsplit(location).scheme
    return len(scheme) > 1  # a one-letter scheme is a Windows drive


def staging_location(location: str) -> str:
    """``location`` as Spark writes to it: a URI as it is; a path as the driver's local folder (``file://``),
    never a path on Spark's default file system (HDFS on a cluster), where the driver would not find it."""
    if _has_scheme(location):
        return location.rstrip("/")
    from pathlib import Path

    return Path(os.path.abspath(location)).as_uri()


def arrow_filesystem(location: str) -> tuple[FileSystem, str]:
    """pyarrow's file system and path of a location given as :func:`staging_location` makes it."""
    from pyarrow import fs

    scheme = urlsplit(location).scheme
    uri = _ARROW_SCHEMES[scheme] + location[len(scheme):] if scheme in _ARROW_SCHEMES else location
    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid, ValueError, OSError by scheme
        raise StagingUnreadable(f"--spark-staging {location}: the driver cannot open it with pyarrow ({exc}); give "
                                "a local folder (local master), or shared storage pyarrow reads: s3a://, gs://, "
                                "hdfs://, abfss://, a path mounted on every node (docs/spark.md)") from exc
    return filesystem, str(path)


def exists(location: str) -> bool:
    from pyarrow import fs

    filesystem, path = arrow_filesystem(location)
    return bool(filesystem.get_file_info(path).type != fs.FileType.NotFound)


def remove(location: str) -> None:
    """Remove a staging folder and everything in it (nothing if it is not there)."""
    from pyarrow import fs

    filesystem, path = arrow_filesystem(location)
    if filesystem.get_file_info(path).type != fs.FileType.NotFound:
        filesystem.delete_dir(path)


class StagedOutcomes:
    """The outcomes a Spark write left in ``location`` (columns ``pid``, ``outcome``), by patient id: the
    patient ids of every file first (their column only), then each outcome from its row group, one row group
    held at a time (read in patient-id order, each row group is read once)."""

    def __init__(self, location: str) -> None:
        import pyarrow.parquet as pq
        from pyarrow import fs

        self.fs, self.path = arrow_filesystem(location)
        self.index: dict[str, tuple[str, int, int]] = {}
        files = sorted(i.path for i in self.fs.get_file_info(fs.FileSelector(self.path))
                       if i.type == fs.FileType.File and i.base_name.endswith(".parquet")
                       and not i.base_name.startswith(("_", ".")))
        for path in files:
            with self.fs.open_input_file(path) as f:
                parquet = pq.ParquetFile(f)
                for group in range(parquet.num_row_groups):
                    pids = parquet.read_row_group(group, columns=["pid"]).column(0).to_pylist()
                    for row, pid in enumerate(pids):
                        self.index[str(pid)] = (path, group, row)
        self._held: tuple[tuple[str, int], pa.ChunkedArray] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def pop(self, pid: str) -> bytes | None:
        """The pickled outcome of ``pid`` (None: no subject of that id was staged)."""
        import pyarrow.parquet as pq

        where = self.index.pop(pid, None)
        if where is None:
            return None
        path, group, row = where
        if self._held is None or self._held[0] != (path, group):
            self._held = None  # the row group read before is let go first
            with self.fs.open_input_file(path) as f:
                self._held = ((path, group), pq.ParquetFile(f).read_row_group(group, columns=["outcome"]).column(0))
        value = self._held[1][row].as_py()
        assert isinstance(value, bytes)
        return value
