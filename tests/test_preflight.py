"""`fhir-adapter check`: the mapping loads, and the server's CapabilityStatement offers what a run needs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.job.preflight import READS, capability_gaps
from fhir_adapter.source.base import MEDICATION_TYPES
from fhir_adapter.synth import write_feed
from fhir_adapter.testing.feed_loader import load_feed
from fhir_adapter.testing.fhir_server import ServerHandle, start_fhir_server

ROOT = Path(__file__).resolve().parent.parent


def statement(drop_type: str | None = None, drop_param: tuple[str, str] | None = None,
              conditional: bool = True, transaction: bool = True) -> dict[str, Any]:
    resources = []
    for rtype, (params, _) in READS.items():
        if rtype == drop_type:
            continue
        # (and what --since also searches: the medication records by medication)
        names = [*params, "_lastUpdated", "combo-code", "code", *(["medication"] if rtype in MEDICATION_TYPES else [])]
        names = [n for n in names if (rtype, n) != drop_param]
        resources.append({"type": rtype, "interaction": [{"code": c} for c in ("search-type", "history-type",
                                                                               "update", "create")],
                          "searchParam": [{"name": n, "type": "token"} for n in names],
                          "conditionalCreate": conditional,
                          **({"searchInclude": ["ResearchSubject:individual"]} if rtype == "ResearchSubject" else {})})
    resources += [{"type": t, "interaction": [{"code": "update"}, {"code": "create"}], "conditionalCreate": conditional}
                  for t in ("Device", "Provenance")]
    resources += [{"type": t, "interaction": [{"code": "search-type"}],
                   "searchParam": [{"name": n, "type": "token"} for n in names]}
                  for t, names in (("Specimen", ("patient", "_lastUpdated")), ("Medication", ("_lastUpdated",)))
                  if t != drop_type]
    rest = {"mode": "server", "resource": resources,
            "interaction": [{"code": "transaction"}] if transaction else []}
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [rest]}


def test_check_asks_of_every_type_a_run_reads_what_the_run_searches_by() -> None:
    """`check` and `run` agree: every type a subject's searches read is checked (its search parameter, and
    `_lastUpdated` and history for --since), so check warns of the same types the run's incremental warning
    names."""
    from fhir_adapter.source.server.searches import SUBJECT_SEARCHES

    for rtype, (param, _) in SUBJECT_SEARCHES.items():
        assert rtype in READS and param in READS[rtype][0], rtype
    gaps = capability_gaps(statement(drop_type="Condition"))
    assert [(g.level, g.what) for g in gaps] == [("warning", "Condition: no search")]
    # and what --since asks of shared types: a subject's Specimens, the Medications its records name
    gaps = capability_gaps(statement(drop_type="Specimen"))
    assert [(g.what, g.consequence) for g in gaps] == [
        ("Specimen: no search by patient, _lastUpdated",
         "under --since a Specimen change alone is picked up by the next full run")]


def test_a_complete_server_has_no_gaps() -> None:
    assert capability_gaps(statement(), post=True) == []


def test_missing_observation_search_is_an_error_missing_adverse_events_a_warning() -> None:
    gaps = capability_gaps(statement(drop_type="Observation"))
    assert [(g.level, g.what) for g in gaps] == [("error", "Observation: no search")]
    gaps = capability_gaps(statement(drop_type="AdverseEvent"))
    assert [(g.level, g.what) for g in gaps] == [("warning", "AdverseEvent: no search")]


def test_combo_code_missing_points_at_the_setting() -> None:
    gaps = capability_gaps(statement(drop_param=("Observation", "combo-code")))
    assert len(gaps) == 1 and gaps[0].level == "error" and "observation_code_param" in gaps[0].consequence
    assert capability_gaps(statement(drop_param=("Observation", "combo-code")), observation_code_param="code") == []


def test_write_back_needs() -> None:
    gaps = capability_gaps(statement(conditional=False, transaction=False), post=True)
    assert {(g.level, g.what) for g in gaps} == {
        ("error", "no system transaction interaction"), ("error", "Observation: no conditional create"),
        ("error", "Device: no conditional create"), ("warning", "Provenance: no conditional create")}
    assert capability_gaps(statement(conditional=False, transaction=False), post=False) == []


def test_not_r4() -> None:
    cs = statement() | {"fhirVersion": "5.0.0"}
    assert [g.level for g in capability_gaps(cs)] == ["error"]


@pytest.mark.server
def test_check_against_the_real_server(clean_fhir_server: ServerHandle, tmp_path: Path) -> None:
    write_feed(tmp_path / "feed", subjects=3, seed=7)
    load_feed(clean_fhir_server.base_url, tmp_path / "feed")
    writes = clean_fhir_server.stats()["writes"]["total"]
    cmd = [sys.executable, "-m", "fhir_adapter.cli.commands", "check", "--source", clean_fhir_server.base_url,
           "--post"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "mapping ok" in run.stdout and "FHIR 4.0.1" in run.stdout and "0 errors" in run.stdout
    assert "clock         in step with this machine's" in run.stdout
    assert re.search(r"(?m)^observations  (?!not timed)", run.stdout), run.stdout
    assert clean_fhir_server.stats()["writes"]["total"] == writes


@pytest.mark.server
def test_check_of_a_server_with_no_subject_of_the_study_is_an_error_as_is_a_roster_csv_enrolling_nobody(
        clean_fhir_server: ServerHandle, tmp_path: Path) -> None:
    """The go-live gate says what the run would meet: a server with no ResearchStudy/ResearchSubject of the study
    makes a run stop (exit 1), so check says so (exit 1); so does a site roster CSV that enrols nobody."""
    cmd = [sys.executable, "-m", "fhir_adapter.cli.commands", "check", "--source", clean_fhir_server.base_url]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "error    no subject of study LCAR-AIO-SLE is enrolled on the server: no ResearchStudy with identifier" \
        in run.stdout  # the run's own message, with its fix
    assert "1 errors" in run.stdout and "the adapter can run" not in run.stdout
    roster = tmp_path / "roster.csv"
    roster.write_text("subject_id,patient_identifier,consent_date,arm,status\n", encoding="utf-8")
    run = subprocess.run([*cmd, "--roster-csv", str(roster)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1, run.stdout + run.stderr  # a roster CSV that enrols nobody stops a run too
    assert "nobody to process: no row of the roster CSV enrolled a subject of study LCAR-AIO-SLE" in run.stdout


@pytest.mark.server
def test_check_reads_the_roster_csv_as_a_run_does(clean_fhir_server: ServerHandle, tmp_path: Path) -> None:
    """A site that enrols from its roster CSV (an EHR with Patients and their data, no ResearchStudy or
    ResearchSubject): check reads the CSV as a run would — a CSV the run cannot read is an error (the run exits
    1), a row naming no Patient a warning (the run skips that subject, exit 2), and the CSV's subjects are the
    ones timed and surveyed. It once never opened the CSV and said "0 errors" for all three."""
    import json

    feed = tmp_path / "feed"
    write_feed(feed, subjects=2, seed=7)
    for research in ("ResearchStudy", "ResearchSubject"):
        (feed / f"{research}.ndjson").unlink()
    load_feed(clean_fhir_server.base_url, feed)
    patients = [json.loads(line) for line in (feed / "Patient.ndjson").read_text(encoding="utf-8").splitlines()]
    rows = [f"1{n:02d}-001,{p['identifier'][0]['system']}|{p['identifier'][0]['value']},2024-01-10,DL1,follow-up"
            for n, p in enumerate(patients[:2], start=1)]
    header = "subject_id,patient_identifier,consent_date,arm,status\n"
    cmd = [sys.executable, "-m", "fhir_adapter.cli.commands", "check", "--source", clean_fhir_server.base_url]

    def check(text: str, *extra: str, encoding: str = "utf-8") -> subprocess.CompletedProcess[str]:
        roster = tmp_path / "roster.csv"
        roster.write_bytes(text.encode(encoding))
        return subprocess.run([*cmd, "--roster-csv", str(roster), *extra], capture_output=True, text=True, cwd=ROOT)

    good = check(header + "\n".join(rows) + "\n", "--codes")
    assert good.returncode == 0, good.stdout + good.stderr
    assert re.search(r"(?m)^observations  (?!not timed)", good.stdout), good.stdout
    assert re.search(r"(?m)^codes +\S", good.stdout) and "not surveyed" not in good.stdout, good.stdout
    garbage = check("foo,bar\n1,2\n")
    assert garbage.returncode == 1, garbage.stdout + garbage.stderr
    assert "missing column(s) ['subject_id'" in garbage.stdout and "the adapter can run" not in garbage.stdout
    unknown = check(header + rows[0] + "\n109-001,https://hospital.example.org/mrn|0000000000,2024-01-10,DL1,"
                    "follow-up\n")
    assert unknown.returncode == 0, unknown.stdout + unknown.stderr
    assert re.search(r"warning +roster CSV: .*roster\.csv:3: subject 109-001: ", unknown.stdout), unknown.stdout
    assert re.search(r"0 errors, \d+ warnings: the adapter can run", unknown.stdout), unknown.stdout
    dated = check(header.replace("status", "status,infusion_date") + rows[0] + ",2024-13-45\n")
    assert re.search(r"warning +roster CSV: .*infusion_date", dated.stdout), dated.stdout  # a run does not use it
    unreadable = check(header + rows[0].replace("101-001", "101-\u00e9") + "\n", encoding="latin-1")
    assert unreadable.returncode == 1, unreadable.stdout + unreadable.stderr
    assert "error    the roster CSV cannot be read: a run stops there (exit 1): " in unreadable.stdout
    assert "not UTF-8" in unreadable.stdout and "no subject of study" not in unreadable.stdout


@pytest.mark.server
def test_check_of_a_server_whose_subjects_have_no_enrolled_status_is_the_run_s_error(
        clean_fhir_server: ServerHandle, tmp_path: Path) -> None:
    """The study's enrolled_statuses match none of the server's ResearchSubjects (follow-up, ineligible): a run
    enrols nobody and stops (exit 1), so check says so, with the run's own message — not "0 errors"."""
    write_feed(tmp_path / "feed", subjects=3, seed=7)
    load_feed(clean_fhir_server.base_url, tmp_path / "feed")
    study = tmp_path / "study"
    shutil.copytree(ROOT / "mappings" / "lcar-aio", study)
    info = study / "study.yaml"
    text = info.read_text(encoding="utf-8")
    info.write_text(re.sub(r"(?m)^  enrolled_statuses: .*$", "  enrolled_statuses: [on-study]", text),
                    encoding="utf-8")
    cmd = [sys.executable, "-m", "fhir_adapter.cli.commands", "check", "--study", str(study), "--source",
           clean_fhir_server.base_url]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "error    no subject of study LCAR-AIO-SLE is enrolled on the server:" in run.stdout
    assert "None has an enrolled status" in run.stdout and "the adapter can run" not in run.stdout


@pytest.mark.server
def test_check_of_a_server_that_stops_answering_after_its_metadata_exits_3_as_a_run_does(
        clean_fhir_server: ServerHandle, tmp_path: Path) -> None:
    """The CapabilityStatement read, then every request dropped: the roster cannot be read, which stops a run
    (exit 3: run again later); check said "not timed" and "0 errors: the adapter can run against this server"."""
    config = tmp_path / "server.yaml"
    config.write_text("client:\n  max_attempts: 2\n", encoding="utf-8")
    clean_fhir_server.set_faults(fault_down_after=2)
    try:
        cmd = [sys.executable, "-m", "fhir_adapter.cli.commands", "check", "--source", clean_fhir_server.base_url,
               "--config", str(config)]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    finally:
        clean_fhir_server.clear_faults()
    assert run.returncode == 3, run.stdout + run.stderr
    assert "the adapter can run" not in run.stdout


@pytest.mark.server
@pytest.mark.parametrize("token", ["bogus", None])
def test_check_against_a_server_that_refuses_the_credentials_exits_4_as_a_run_does(token: str | None) -> None:
    """Its CapabilityStatement is public; its searches answer 401: check ends as a run would (exit 4), instead of
    "not timed: … 401" and "0 errors: the adapter can run against this server"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ADAPTER_")}
    if token is not None:
        env["FHIR_ADAPTER_BEARER_TOKEN"] = token
    with start_fhir_server(REQUIRE_TOKEN=1) as server:
        cmd = [sys.executable, "-m", "fhir_adapter.cli.commands", "check", "--source", server.base_url, "--post"]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 4, run.stdout + run.stderr
    assert "the adapter can run" not in run.stdout and "401" in run.stderr


@pytest.mark.server
def test_check_says_how_far_behind_the_servers_clock_is(tmp_path: Path) -> None:
    """A server two minutes behind this machine: `check` says so on the first day, before --since last relies on
    it (docs/integrator-guide.md, running on a schedule)."""
    roster = tmp_path / "roster.csv"  # an empty server and an empty roster
    roster.write_text("subject_id,patient_identifier,consent_date,arm,status\n", encoding="utf-8")
    with start_fhir_server(CLOCK_OFFSET_MS=-120_000) as server:
        cmd = [sys.executable, "-m", "fhir_adapter.cli.commands", "check", "--source", server.base_url,
               "--roster-csv", str(roster)]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1, run.stderr  # nobody enrolled (an empty roster): the lines are printed all the same
    [line] = [x for x in run.stdout.splitlines() if x.startswith("clock ")]
    assert re.search(r"the server's clock is at least 1[12]\d s behind this machine's", line), line


def test_check_reports_a_bad_mapping(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: x\nitems:\n  c3:\n    accept_units: ['mmol/L']\n")
    run = subprocess.run([sys.executable, "-m", "fhir_adapter.cli.commands", "check", "--site", str(site)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and f"{site}:4" in run.stderr and "mmol/L" in run.stderr


def test_check_of_a_server_nobody_answers_exits_3_as_its_help_says(tmp_path: Path) -> None:
    import socket

    cfg = tmp_path / "server.yaml"
    cfg.write_text("client:\n  max_attempts: 1\n")
    cmd = [sys.executable, "-m", "fhir_adapter.cli.commands", "check"]
    with socket.socket() as sock:  # a loopback port nothing listens on: held (bound, not listening) meanwhile,
        sock.bind(("127.0.0.1", 0))  # so no other process (a pytest-xdist worker's server) can listen there
        port = sock.getsockname()[1]
        run = subprocess.run([*cmd, "--source", f"http://127.0.0.1:{port}/fhir", "--config", str(cfg)],
                             capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 3 and f"127.0.0.1:{port}" in run.stderr
    helped = subprocess.run([*cmd, "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    assert "3 when the server cannot" in " ".join(helped.split())


def test_the_documented_example_config_loads() -> None:
    from fhir_adapter.fhir.server_config import load_server_config

    cfg = load_server_config(ROOT / "docs" / "adapter.example.yaml", {"FHIR_ADAPTER_MAX_CONCURRENCY": "2"})
    assert cfg.client.page_size == 1000 and cfg.observation_code_param == "auto"
    assert cfg.client.max_concurrency == 2  # the environment overrides the file


def test_bulk_export_is_offered_when_declared() -> None:
    from fhir_adapter.job.preflight import bulk_export_levels

    bulk = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
    cs = statement()
    assert bulk_export_levels(cs) == []
    cs["rest"][0]["operation"] = [{"name": "export", "definition": bulk + "patient-export"},
                                  {"name": "$export", "definition": bulk + "group-export"}]
    assert bulk_export_levels(cs) == ["Group", "Patient"]
    cs = statement()
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    patient["operation"] = [{"name": "export", "definition": bulk + "patient-export"}]
    assert bulk_export_levels(cs) == ["Patient"]


@pytest.mark.server
def test_check_offers_bulk_on_the_real_server(clean_fhir_server: ServerHandle, tmp_path: Path) -> None:
    roster = tmp_path / "roster.csv"  # an empty server and an empty roster
    roster.write_text("subject_id,patient_identifier,consent_date,arm,status\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "fhir_adapter.cli.commands", "check", "--source", clean_fhir_server.base_url,
           "--roster-csv", str(roster)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1, run.stderr  # nobody enrolled (an empty roster): the lines are printed all the same
    assert "$export declared (Group, Patient, system): `run --bulk`" in run.stdout
