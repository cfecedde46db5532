"""The staging folder of ``run --engine spark``: the outcomes Spark's tasks wrote (one Parquet file per task,
in any order) read back by patient id, one row group held at a time; locations as Spark and pyarrow name them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fhir_adapter.engine.spark_staging import (
    StagedOutcomes,
    StagingUnreadable,
    arrow_filesystem,
    remove,
    staging_location,
)


def _write(path: Path, pids: list[str], row_group_size: int) -> None:
    table = pa.table({"pid": pids, "outcome": [f"outcome of {p}".encode() for p in pids]})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_staged_outcomes_are_read_by_patient_id_one_row_group_at_a_time(tmp_path: Path) -> None:
    staged = tmp_path / "run"
    staged.mkdir()
    # two tasks' files, the later range in the first file name; Spark's side files are not outcomes
    _write(staged / "part-00000-a.snappy.parquet", ["p5", "p6", "p7"], row_group_size=2)
    _write(staged / "part-00001-a.snappy.parquet", ["p1", "p2", "p3"], row_group_size=2)
    (staged / "_SUCCESS").write_bytes(b"")
    (staged / ".part-00000-a.snappy.parquet.crc").write_bytes(b"not parquet")
    outcomes = StagedOutcomes(staging_location(str(staged)))
    assert len(outcomes) == 6
    held: list[tuple[str, int]] = []
    for pid in ["p1", "p2", "p3", "p4", "p5", "p6", "p7"]:
        blob = outcomes.pop(pid)
        if pid == "p4":  # not staged: an enrolled subject with no resources in the export
            assert blob is None
            continue
        assert blob == f"outcome of {pid}".encode()
        assert outcomes._held is not None
        if not held or held[-1] != outcomes._held[0]:
            held.append(outcomes._held[0])
    # every row group read once, in patient-id order, whatever the files' order
    assert [(Path(path).name[:10], group) for path, group in held] == [
        ("part-00001", 0), ("part-00001", 1), ("part-00000", 0), ("part-00000", 1)]
    assert outcomes.pop("p1") is None and len(outcomes) == 0  # each outcome is handed out once


def test_a_staging_path_is_the_drivers_local_folder_and_a_uri_stays_as_given(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert staging_location("out/.spark-staging") == (tmp_path / "out" / ".spark-staging").as_uri()
    assert staging_location("s3a://bucket/staging/") == "s3a://bucket/staging"
    assert staging_location("hdfs://nn:8020/tmp/fa") == "hdfs://nn:8020/tmp/fa"
    _, path = arrow_filesystem(staging_location("out/.spark-staging"))
    assert Path(path) == tmp_path / "out" / ".spark-staging"


def test_a_staging_location_the_driver_cannot_read_names_it(tmp_path: Path) -> None:
    with pytest.raises(StagingUnreadable, match=r"--spark-staging nowhere://x/y: the driver cannot open it"):
        arrow_filesystem("nowhere://x/y")


def test_remove_takes_the_folder_and_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "staging" / "run").mkdir(parents=True)
    (tmp_path / "staging" / "run" / "part-0.parquet").write_bytes(b"x")
    remove(staging_location(str(tmp_path / "staging")))
    assert not (tmp_path / "staging").exists()
    remove(staging_location(str(tmp_path / "staging")))  # nothing there: nothing to do
