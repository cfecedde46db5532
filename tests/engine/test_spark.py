"""``run --engine spark``: Spark (local[2]) reads the export and runs the per-subject engine on its executors;
every output equals the local engine's, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.synth import write_feed
from fhir_adapter.testing.outtree import differences, out_tree


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spark")
    write_feed(root / "feed", subjects=34, seed=7)
    return root / "feed"


def test_spark_local2_writes_the_same_out_as_the_local_engine(feed: Path, tmp_path: Path) -> None:
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


def test_spark_engine_reads_folders_only(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["run", "--engine", "spark", "--source", "https://ehr.example.org/fhir",
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 64 and "--engine spark reads a folder" in r.output


def test_spark_connect_is_refused_with_what_to_do(feed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARK_REMOTE", "sc://localhost:15002")
    r = CliRunner().invoke(main, ["run", "--engine", "spark", "--source", str(feed), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "Spark Connect" in r.output and "spark-submit" in r.output
