"""fhir_adapter.run(...) from Python, with endpoints and CRF domains as pandas DataFrames."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import fhir_adapter
from fhir_adapter.api import DOMAINS, RunResult
from fhir_adapter.study.yamlfile import MappingError


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    from fhir_adapter.synth import write_feed

    base = tmp_path_factory.mktemp("api")
    write_feed(base / "feed", subjects=3, seed=7)
    return fhir_adapter.run(base / "feed", base / "out", site="example-site")


def test_run_returns_what_the_cli_writes(result: RunResult) -> None:
    assert result.exit_code in (0, 2) and result.exit_code == result.summary.exit_code
    assert result.study == json.loads((result.out / "results" / "study.json").read_text())
    assert result.run_report["summary"]["subjects"] == 3 == len(result.crfs)


def test_endpoints_per_subject_and_visit(result: RunResult) -> None:
    df = result.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert {"subject_id", "arm", "day1", "visit", "study_day", "sledai2k", "upcr_mg_mg"} <= set(df.columns)
    expected = sum(len(s["visits"]) for s in result.study["subjects"])
    assert len(df) == expected and df["subject_id"].nunique() == 3
    first = result.study["subjects"][0]
    row = df[(df.subject_id == first["subject_id"]) & (df.visit == first["visits"][0]["visit"])].iloc[0]
    assert row["study_day"] == first["visits"][0]["study_day"]
    subjects = result.subjects()
    assert len(subjects) == 3 and "kinetics.cmax" in subjects.columns and "visits" not in subjects.columns


def test_crf_domains_as_dataframes(result: RunResult) -> None:
    domains = result.crf_domains()
    assert set(domains) == set(DOMAINS)
    assert len(domains["DM"]) == 3 and "sex" in domains["DM"].columns
    lb = result.domain("lb")
    assert len(lb) > 0 and set(lb["domain"]) == {"LB"}
    assert {"subject_id", "item", "value", "unit", "source.resource_type", "source.id"} <= set(lb.columns)
    n_lb = sum(1 for c in result.crfs for f in c["findings"] if f["domain"] == "LB")
    assert len(lb) == n_lb
    assert set(domains["EX"]["kind"]) >= {"infusion"}
    for name in ("MH", "PR"):  # medical history and procedures, as the README's example names them
        assert len(domains[name]) == sum(len(c[name.lower()]) for c in result.crfs) > 0, name
    with pytest.raises(ValueError, match="unknown CRF domain"):
        result.domain("XX")


def test_errors_are_the_adapters_own(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="study folder not found"):
        fhir_adapter.run(tmp_path, tmp_path / "out", study=tmp_path / "nope")


def test_a_roster_csv_that_cannot_be_read_is_a_roster_error_naming_it(tmp_path: Path) -> None:
    """As `run --roster-csv` refuses a file that does not exist (usage), the Python API says which file and why,
    as the adapter's own error — not a bare FileNotFoundError from deep in the run."""
    from fhir_adapter.roster.enrollees import RosterError
    from fhir_adapter.synth import write_feed

    write_feed(tmp_path / "feed", subjects=1, seed=7)
    missing = tmp_path / "site-roster.csv"
    with pytest.raises(RosterError, match=r"roster CSV .*site-roster\.csv cannot be read: No such file"):
        fhir_adapter.run(tmp_path / "feed", tmp_path / "out", roster_csv=missing)


def test_the_config_s_writeback_reviewed_only_holds_for_the_python_api_as_for_the_cli(
        result: RunResult, tmp_path: Path) -> None:
    """`writeback_reviewed_only: true` in the config: fhir_adapter.run holds back unreviewed results as
    `fhir-adapter run --config` does (it wrote them all, while its warning said the setting applied)."""
    config = tmp_path / "adapter.yaml"
    config.write_text("writeback_reviewed_only: true\n", encoding="utf-8")
    held = fhir_adapter.run(result.out.parent / "feed", tmp_path / "out", site="example-site", config=config)
    written = [e for p in (tmp_path / "out" / "writeback").glob("*.json")
               for e in json.loads(p.read_text()).get("entry", []) if e["resource"]["resourceType"] == "Observation"]
    assert written == [] and held.run_report["review"]["held_back"]
    assert any(e["resource"]["resourceType"] == "Observation" for p in (result.out / "writeback").glob("*.json")
               for e in json.loads(p.read_text()).get("entry", []))
