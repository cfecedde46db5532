"""A site names the identifier that holds the subject ID in its overlay, and a run that enrols nobody from
ResearchSubjects of the study fails with what it saw and the overlay line that fixes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.job import exit_codes
from fhir_adapter.roster.subject_ids import subject_id
from fhir_adapter.study.load import load_study
from fhir_adapter.study.models import SubjectIdentifierRule
from fhir_adapter.study.yamlfile import MappingError
from tests.feedkit import recount_manifest

ROOT = Path(__file__).resolve().parent.parent
HOSPITAL = "https://hospital.example.org/trial-id"
STUDY_SYSTEM = "https://fhir-adapter.org/fhir/sid/lcar-aio-subject"


@pytest.fixture(scope="module")
def hospital_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic feed whose ResearchSubjects carry the hospital's own trial-ID system."""
    from fhir_adapter.synth import write_feed

    feed = tmp_path_factory.mktemp("hospital")
    write_feed(feed, subjects=2, seed=3)
    path = feed / "ResearchSubject.ndjson"
    path.write_text(path.read_text().replace(STUDY_SYSTEM, HOSPITAL))
    return feed


def _overlay(tmp_path: Path, extra: str) -> Path:
    site = tmp_path / "my-site.yaml"
    site.write_text("site: my-site\n" + extra)
    return site


def test_without_the_rule_nobody_is_enrolled_and_the_run_fails_saying_why(hospital_feed: Path,
                                                                           tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["run", "--source", str(hospital_feed), "--out", str(tmp_path / "out")])
    assert res.exit_code == exit_codes.FAILED, res.output
    err = res.stderr
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert f"identifier systems seen: {HOSPITAL}" in err
    assert "statuses seen: " in err and "follow-up" in err
    assert f"subject_identifier: {{system: {HOSPITAL}}}" in err and "site overlay" in err


def test_a_source_without_research_subjects_is_a_failed_run(hospital_feed: Path, tmp_path: Path) -> None:
    """No ResearchSubject of the study at all: nobody processed is exit 1 (the documented table), naming what
    was looked for and how to enrol — not "subjects 0 enrolled and processed" with exit 0."""
    feed = tmp_path / "feed"
    shutil.copytree(hospital_feed, feed)
    (feed / "ResearchSubject.ndjson").write_text("")
    recount_manifest(feed)
    res = CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(tmp_path / "out")])
    assert res.exit_code == exit_codes.FAILED, res.output
    err = res.stderr
    assert err.startswith("error: nobody to process") and len(err.strip().splitlines()) == 1
    assert "https://fhir-adapter.org/fhir/sid/research-study|LCAR-AIO-SLE" in err and "on-study" in err
    assert "--roster-csv" in err and not (tmp_path / "out" / "crf").exists()


def test_the_overlay_line_enrols_them(hospital_feed: Path, tmp_path: Path) -> None:
    site = _overlay(tmp_path, f"subject_identifier: {{system: {HOSPITAL}}}\n")
    res = CliRunner().invoke(main, ["run", "--source", str(hospital_feed), "--out", str(tmp_path / "out"),
                                    "--site", str(site)])
    assert res.exit_code in (exit_codes.OK, exit_codes.COMPLETED_WITH_WARNINGS), res.output
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    assert report["summary"]["subjects"] == 2
    assert not [q for q in report["quarantine"] if q["rule"] == "no-subject-id"]


def test_the_quarantine_of_one_subject_points_at_the_overlay(hospital_feed: Path, tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    shutil.copytree(hospital_feed, feed)
    path = feed / "ResearchSubject.ndjson"
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    first["identifier"][0]["system"] = STUDY_SYSTEM  # this one keeps the study's system; the rule is HOSPITAL
    path.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    site = _overlay(tmp_path, f"subject_identifier: {{system: {HOSPITAL}}}\n")
    res = CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(tmp_path / "out"), "--site", str(site)])
    assert res.exit_code == exit_codes.COMPLETED_WITH_WARNINGS, res.output
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    (q,) = [q for q in report["quarantine"] if q["rule"] == "no-subject-id"]
    assert HOSPITAL in q["reason"] and STUDY_SYSTEM in q["reason"]
    assert "site overlay" in q["fix"] and f"{site}:2" in q["fix"]
    assert "or subject_identifier_system in study.yaml" not in q["fix"]


def test_rules_by_type_and_only() -> None:
    rs = {"identifier": [{"system": "urn:x", "value": "A"},
                         {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                               "code": "RI"}]}, "value": "101-001"}]}
    assert subject_id(rs, SubjectIdentifierRule(type="RI")) == "101-001"
    assert subject_id(rs, SubjectIdentifierRule(type="http://terminology.hl7.org/CodeSystem/v2-0203|RI")) == "101-001"
    assert subject_id(rs, SubjectIdentifierRule(type="urn:other|RI")) is None
    assert subject_id(rs, SubjectIdentifierRule(only=True)) is None  # two identifiers: not "the only one"
    assert subject_id({"identifier": [{"system": "urn:y", "value": "9"}]}, SubjectIdentifierRule(only=True)) == "9"
    assert subject_id(rs, SubjectIdentifierRule(system="urn:x")) == "A"


def test_the_overlay_rule_is_checked_and_recorded(tmp_path: Path) -> None:
    st = load_study(ROOT / "mappings" / "lcar-aio", _overlay(tmp_path, "subject_identifier:\n  only: true\n"))
    assert st.subject_id_rule == SubjectIdentifierRule(only=True)
    assert st.subject_id_rule_origin.endswith("my-site.yaml:2")
    with pytest.raises(MappingError, match="exactly one of"):
        load_study(ROOT / "mappings" / "lcar-aio",
                   _overlay(tmp_path, "subject_identifier: {system: urn:x, only: true}\n"))


def test_a_run_whose_every_subject_failed_is_a_failed_run() -> None:
    from fhir_adapter.job.pipeline import RunSummary

    assert RunSummary(out=Path("o"), subjects=0, subjects_failed=["101-001"]).exit_code == exit_codes.FAILED
    assert RunSummary(out=Path("o"), subjects=1, subjects_failed=["101-002"]).exit_code == \
        exit_codes.COMPLETED_WITH_WARNINGS
