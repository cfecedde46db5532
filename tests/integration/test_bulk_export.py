"""The Bulk Data $export client against the running test server (tests/fhir_server/bulk-export.mjs): the same
CRFs and results as the REST path on the same server, Group and Patient level, the server's quirks handled
(_typeFilter refused, no such Group, relative file URLs, several files per type, error files, polling with
Retry-After/X-Progress), the job deleted, an interrupted download resumed, an export since the last run whose
deleted[] names a subject's record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.fhir.r4_types import R4_RESOURCE_TYPES
from fhir_adapter.source.bulk_deletions import crf_sources
from fhir_adapter.synth import plan_trial, write_feed
from fhir_adapter.testing.feed_loader import load_feed, put_resources, search_all
from fhir_adapter.testing.fhir_server import ServerHandle
from fhir_adapter.testing.outtree import server_read_crfs
from tests.serverkit import cli_run, report, study_results, write_config

pytestmark = pytest.mark.server

SUBJECTS = 4
DEFAULT_KNOBS: dict[str, Any] = {
    "polls_until_done": 1, "retry_after": "0", "requires_token": False, "relative_urls": False,
    "files_per_type": 1, "error_text": "", "type_filter": "reject", "group_404": False, "fail_file": -1,
    "fail_file_times": 0, "extra_types": [], "deleted": True,
}


@dataclass
class Setup:
    server: ServerHandle
    tmp: Path
    rest_out: Path
    config: Path
    group_config: Path

    def bulk(self, **knobs: Any) -> dict[str, Any]:
        answer = httpx.post(f"{self.server.root_url}/admin/bulk", json={**DEFAULT_KNOBS, **knobs}, timeout=10)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result


@pytest.fixture(scope="module")
def setup(fhir_server: ServerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("bulk")
    write_feed(tmp / "feed", subjects=SUBJECTS, seed=7)
    fhir_server.clear_faults()
    fhir_server.reset()
    load_feed(fhir_server.base_url, tmp / "feed")
    enrolled = [s.patient_id for s in plan_trial(SUBJECTS, 7).subjects]
    put_resources(fhir_server.base_url, [{"resourceType": "Group", "id": "lcar-aio-cohort", "type": "person",
                                          "actual": True, "member": [{"entity": {"reference": f"Patient/{p}"}}
                                                                     for p in enrolled]}])
    config = write_config(tmp / "adapter.yaml")
    group_config = write_config(tmp / "group.yaml", "bulk:\n  group_id: lcar-aio-cohort\n")
    cli_run(fhir_server.base_url, tmp / "rest-out", "--config", str(config))
    s = Setup(fhir_server, tmp, tmp / "rest-out", config, group_config)
    yield s
    s.bulk()


def _same_as_rest(setup: Setup, out: Path) -> None:
    assert study_results(out) == study_results(setup.rest_out)
    assert server_read_crfs(out) == server_read_crfs(setup.rest_out)
    for path in sorted((setup.rest_out / "writeback").glob("*.json")):
        assert (out / "writeback" / path.name).read_bytes() == path.read_bytes()


def test_patient_export_gives_the_rest_results(setup: Setup) -> None:
    setup.bulk(polls_until_done=3, files_per_type=2)
    out = setup.tmp / "patient"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    _same_as_rest(setup, out)
    rep = report(out)
    assert rep["source"].startswith("bulk:")
    bulk = rep["server_requests"]["bulk"]
    assert bulk["kickoff"] == 2 and bulk["kickoff_path"] == "Patient/$export" and bulk["type_filter"] is False
    assert bulk["status"] == 4 and bulk["delete"] == 1 and bulk["progress"].startswith("in progress")
    # _typeFilter refused by this server: one kick-off with it (400), one without
    assert any(w["rule"] == "bulk-export" and "_typeFilter" in w["message"] for w in rep["warnings"])
    after = setup.bulk()
    assert after["jobs"] == 0 and after["counters"]["deletes"] == 1  # the job was deleted
    manifest = json.loads((out / "bulk" / "manifest.json").read_text())
    assert len(manifest["output"]) > len({o["type"] for o in manifest["output"]})  # several files per type
    assert (out / "state" / "last-run.json").is_file()
    assert json.loads((out / "state" / "last-run.json").read_text())["started"][:10] == manifest["transactionTime"][:10]


def test_group_export_with_relative_urls_and_gzip(setup: Setup) -> None:
    setup.bulk(relative_urls=True, type_filter="ignore")
    out = setup.tmp / "group"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.group_config))
    _same_as_rest(setup, out)
    bulk = report(out)["server_requests"]["bulk"]
    assert bulk["kickoff"] == 1 and bulk["type_filter"] is True
    manifest = json.loads((out / "bulk" / "manifest.json").read_text())
    assert manifest["request"].split("/fhir/R4/")[1].startswith("Group/lcar-aio-cohort/$export")
    assert all(o["source_url"].startswith("$export-file/") for o in manifest["output"])


def test_unknown_group_falls_back_to_patient_export(setup: Setup) -> None:
    setup.bulk(group_404=True)
    out = setup.tmp / "fallback"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.group_config))
    _same_as_rest(setup, out)
    warnings = [w["message"] for w in report(out)["warnings"] if w.get("rule") == "bulk-export"]
    assert any("Group/lcar-aio-cohort/$export failed (404" in w for w in warnings)


def test_error_files_are_reported_and_the_run_is_not_ok(setup: Setup) -> None:
    setup.bulk(error_text="Condition: export failed for 2 resources")
    out = setup.tmp / "errors"
    result = CliRunner().invoke(main, ["-q", "run", "--source", setup.server.base_url, "--out", str(out), "--bulk",
                                       "--config", str(setup.config)])
    assert result.exit_code == 2, result.output
    errors = [q for q in report(out)["quarantine"] if q["rule"] == "export-error"]
    assert len(errors) == 1 and "export failed for 2 resources" in errors[0]["reason"]
    _same_as_rest(setup, out)


def test_error_files_of_an_export_since_the_last_run_are_reported_too(setup: Setup) -> None:
    setup.bulk()
    out = setup.tmp / "since-errors"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    setup.bulk(error_text="Observation: export failed for 1 resource")
    result = CliRunner().invoke(main, ["-q", "run", "--source", setup.server.base_url, "--out", str(out), "--bulk",
                                       "--since", "last", "--config", str(setup.config)])
    assert result.exit_code == 2, result.output
    errors = [q for q in report(out)["quarantine"] if q["rule"] == "export-error"]
    assert len(errors) == 1 and "export failed for 1 resource" in errors[0]["reason"]


def test_a_hostile_manifest_type_is_not_downloaded_and_is_reported(setup: Setup) -> None:
    """Issue 11: a manifest entry's type never becomes a file name. A NUL, 400 characters, a path out of OUT and a
    misspelt type are quarantined, a type the export did not ask for is a warning; none is downloaded, nothing
    is written outside OUT, and the run goes on to the REST path's results."""
    hostile = ["Obs\u0000ervation", "A" * 400, "x/../../../../escaped", "Observatoin"]
    setup.bulk(extra_types=[*hostile, "Encounter"])
    out = setup.tmp / "hostile" / "deep" / "out"
    # "x/../../../../escaped" under OUT/bulk/ would be setup.tmp/hostile/escaped…
    before = sorted(p for p in setup.tmp.rglob("*") if p.is_file() and not p.is_relative_to(out))
    result = CliRunner().invoke(main, ["-q", "run", "--source", setup.server.base_url, "--out", str(out), "--bulk",
                                       "--config", str(setup.config)])
    assert result.exit_code == 2, result.output  # completed, with the quarantined entries
    rep = report(out)
    quarantined = [q for q in rep["quarantine"] if q["rule"] == "unknown-resource-type"]
    assert len(quarantined) == 4 and all("was not downloaded" in q["reason"] for q in quarantined)
    assert any("\\u0000" in q["reason"] for q in quarantined)  # the NUL shown as an escape
    assert any("x/../../../../escaped" in q["reason"] for q in quarantined)
    assert any(w["rule"] == "bulk-export" and "Encounter" in w["message"] and "did not ask for" in w["message"]
               for w in rep["warnings"])
    assert rep["counts"]["bulk.files_not_downloaded"] == 5
    assert sorted(p for p in setup.tmp.rglob("*") if p.is_file() and not p.is_relative_to(out)) == before
    manifest = json.loads((out / "bulk" / "manifest.json").read_text())
    assert len(manifest["not_downloaded"]) == 5 and not any("escaped" in o["url"] for o in manifest["output"])
    assert all(q.name.removesuffix(".ndjson") in {*R4_RESOURCE_TYPES, "unknown"}
               for q in (out / "quarantine").iterdir())
    _same_as_rest(setup, out)


def test_interrupted_download_resumes_without_fetching_finished_files(setup: Setup) -> None:
    setup.bulk(fail_file=2, fail_file_times=100, files_per_type=1)
    out = setup.tmp / "resume"
    config = write_config(setup.tmp / "resume.yaml", "bulk:\n  download_attempts: 1\n")
    result = CliRunner().invoke(main, ["-q", "run", "--source", setup.server.base_url, "--out", str(out), "--bulk",
                                       "--config", str(config)])
    assert result.exit_code == 3 and "503" in result.output and "$export-file" in result.output
    state = json.loads((out / "bulk" / ".bulk-job.json").read_text())
    assert state["manifest"] is not None and not state.get("done")
    finished = sorted(p.name for p in (out / "bulk").glob("*.ndjson*"))
    assert len(finished) == 2  # files 0 and 1 are down, file 2 failed
    before = setup.bulk(fail_file=-1)["counters"]
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(config))
    after = setup.bulk()["counters"]
    assert after["kickoffs"] == before["kickoffs"]  # the same job, not a new export
    assert after["files"] - before["files"] == len(state["manifest"]["output"]) - 2
    _same_as_rest(setup, out)


def test_a_resumed_job_that_is_gone_starts_a_new_export(setup: Setup) -> None:
    setup.bulk()
    out = setup.tmp / "gone"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    state_path = out / "bulk" / ".bulk-job.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "done": False}))  # as if the run had stopped before reading
    next((out / "bulk").glob("*.Observation.ndjson*")).unlink()  # and one file was lost
    before = setup.bulk()["counters"]["kickoffs"]
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    assert setup.bulk()["counters"]["kickoffs"] > before  # the deleted job answered 404: a new export
    assert any("interrupted run is gone" in w["message"] for w in report(out)["warnings"])
    _same_as_rest(setup, out)


def test_an_interrupted_job_of_another_kickoff_is_cancelled_not_resumed(setup: Setup) -> None:
    """A full run after an interrupted ``--since`` run must not resume that job: its files hold the changes only,
    read as the whole EHR they would empty every CRF. The job is cancelled (DELETE) and a new export made."""
    setup.bulk()
    out = setup.tmp / "mismatch"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    state_path = out / "bulk" / ".bulk-job.json"
    full = json.loads(state_path.read_text())["kickoff"]
    since = f"{full}&_since=2999-01-01T00:00:00.000Z"  # an export of the changes since then: none
    answer = httpx.get(since, headers={"Prefer": "respond-async", "Accept": "application/fhir+json"}, timeout=10)
    assert answer.status_code == 202
    state_path.write_text(json.dumps({"kickoff": since, "asked": since, "manifest": None,
                                      "status_url": answer.headers["Content-Location"]}))  # as left by Ctrl-C
    before = setup.bulk()["counters"]
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    after = setup.bulk()["counters"]
    assert after["kickoffs"] > before["kickoffs"] and after["deletes"] - before["deletes"] == 2
    warning = next(w["message"] for w in report(out)["warnings"] if "interrupted run" in w["message"])
    assert "_since" in warning and "not resumed" in warning and "cancelled" in warning
    _same_as_rest(setup, out)


def test_files_removed_when_the_user_says_so(setup: Setup) -> None:
    setup.bulk()
    out = setup.tmp / "removed"
    config = write_config(setup.tmp / "remove.yaml", "bulk:\n  keep_files: false\n")
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(config))
    _same_as_rest(setup, out)
    assert not (out / "bulk").exists()


def test_a_failing_export_file_is_exit_3_as_a_failing_server_is(setup: Setup) -> None:
    """The exit-code table holds for Bulk runs too: a download still answered 5xx after its retries is the server
    failing (3, "run again later"), not a bad configuration (1)."""
    setup.bulk(fail_file=1, fail_file_times=100)
    config = write_config(setup.tmp / "one-attempt.yaml", "bulk:\n  download_attempts: 1\n")
    result = CliRunner().invoke(main, ["-q", "run", "--source", setup.server.base_url, "--out",
                                       str(setup.tmp / "failing-file"), "--bulk", "--config", str(config)])
    setup.bulk()
    assert result.exit_code == 3, result.output
    assert "answered HTTP 503" in result.output and "run again later" in result.output


def test_bulk_needs_a_server(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--source", str(tmp_path), "--out", str(tmp_path / "o"), "--bulk"])
    assert result.exit_code == 1 and "--bulk" in result.output


def test_since_with_nothing_changed_is_ok(setup: Setup) -> None:
    """An export since the last run with no files (nothing changed) is a normal answer, as on the REST path."""
    setup.bulk()
    out = setup.tmp / "since-nothing"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    result = cli_run(setup.server.base_url, out, "--bulk", "--since", "last", "--config", str(setup.config))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "bulk" / "manifest.json").read_text())["output"] == []
    rep = report(out)
    assert rep["counts"]["incremental.changed_subjects"] == 0
    assert rep["counts"]["incremental.unchanged_subjects"] == SUBJECTS
    _same_as_rest(setup, out)


def test_since_reads_in_full_a_subject_with_no_crf_from_the_last_run(setup: Setup) -> None:
    """A subject whose CRF of the last run is not at hand cannot be reused: it is read in full (through REST, as
    the patients the export names), as the REST path reads it — on this run and not again on the next."""
    setup.bulk()
    out = setup.tmp / "since-no-crf"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    missing = sorted((out / "crf").glob("*.json"))[0]
    missing.unlink()
    for _ in range(2):
        result = cli_run(setup.server.base_url, out, "--bulk", "--since", "last", "--config", str(setup.config))
        assert result.exit_code == 0, result.output
        _same_as_rest(setup, out)
    rep = report(out)  # the second run: every CRF at hand again
    assert rep["counts"]["incremental.changed_subjects"] == 0 and rep["server_requests"]["per_subject"] == {}


def test_export_progress_is_shown_while_polling(setup: Setup) -> None:
    setup.bulk(polls_until_done=3)
    out = setup.tmp / "progress"
    result = CliRunner().invoke(main, ["run", "--source", setup.server.base_url, "--out", str(out), "--bulk",
                                       "--config", str(setup.config)])
    assert result.exit_code == 2, result.output  # the feed's deliberate irregularity is quarantined
    shown = [line for line in result.stderr.splitlines() if "Bulk export: " in line]
    assert shown == [f"INFO fhir_adapter.progress: Bulk export: in progress ({pct}%)" for pct in (25, 50, 75)]


# -- the tests below change the server's data: they come last --------------------------------------------------

def test_since_reads_again_only_the_patients_the_export_names(setup: Setup) -> None:
    setup.bulk()
    out = setup.tmp / "since"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    transaction_time = json.loads((out / "bulk" / "manifest.json").read_text())["transactionTime"]
    assert json.loads((out / "state" / "last-run.json").read_text())["started"].startswith(transaction_time[:19])
    patient = plan_trial(SUBJECTS, 7).subjects[0].patient_id
    put_resources(setup.server.base_url, [{
        "resourceType": "Observation", "id": "since-new", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": "2024-03-20",
        "valueQuantity": {"value": 12.5, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"}}])
    cli_run(setup.server.base_url, out, "--bulk", "--since", "last", "--config", str(setup.config))
    rep = report(out)
    assert rep["counts"]["incremental.changed_subjects"] == 1
    assert rep["counts"]["incremental.unchanged_subjects"] == SUBJECTS - 1
    manifest = json.loads((out / "bulk" / "manifest.json").read_text())
    assert "_since=" in manifest["request"] and {o["type"] for o in manifest["output"]} == {"Observation"}
    assert len(rep["server_requests"]["per_subject"]) == 1  # only the changed subject read in full (REST)


def _deleted(setup: Setup, reference: str) -> None:
    httpx.delete(f"{setup.server.base_url}/{reference}", timeout=30).raise_for_status()


def _fresh_rest_run(setup: Setup, name: str) -> Path:
    """A full REST run on the server's data as it is now: what an incremental run must equal."""
    out = setup.tmp / name
    cli_run(setup.server.base_url, out, "--config", str(setup.config))
    return out


def test_since_reads_again_a_subject_whose_only_change_is_a_deleted_record(setup: Setup) -> None:
    """A deleted Observation is in no output[] file of an export _since: its subject is found from the manifest's
    deleted[] and its last CRF, read again in full, and its CRF no longer holds the deleted record (before: the
    subject counted as unchanged and its last CRF, with the deleted value, was reused)."""
    setup.bulk()
    out = setup.tmp / "since-deleted"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    crf_path = sorted((out / "crf").glob("*.json"))[0]
    finding = next(f for f in json.loads(crf_path.read_text())["findings"]
                   if f["source"]["resource_type"] == "Observation")
    gone = ("Observation", finding["source"]["id"])
    _deleted(setup, "/".join(gone))
    cli_run(setup.server.base_url, out, "--bulk", "--since", "last", "--config", str(setup.config))
    rep = report(out)
    assert rep["counts"]["bulk.deleted"] == 1 and rep["server_requests"]["bulk"]["deleted"] == 1
    assert rep["counts"]["incremental.changed_subjects"] == 1
    assert rep["counts"]["incremental.unchanged_subjects"] == SUBJECTS - 1
    assert list(rep["server_requests"]["per_subject"]) == [json.loads(crf_path.read_text())["subject_id"]]
    manifest = json.loads((out / "bulk" / "manifest.json").read_text())
    assert manifest["output"] == [] and [d["url"] for d in manifest["deleted"]] == ["deleted.001.Bundle.ndjson"]
    assert gone not in crf_sources(crf_path)  # a CRF is written with sorted keys: compare the parsed sources
    rest = _fresh_rest_run(setup, "rest-after-delete")
    assert server_read_crfs(out) == server_read_crfs(rest)
    assert study_results(out) == study_results(rest)


def test_since_reads_every_subject_again_when_a_deletion_cannot_be_attributed(setup: Setup) -> None:
    """A deleted shared Specimen may be referenced by any subject's records, and no CRF names it: every subject
    is read again in full, with a warning saying why; no CRF of the last run is reused."""
    setup.bulk()
    put_resources(setup.server.base_url, [{"resourceType": "Specimen", "id": "sp-deleted", "type": {"text": "serum"}}])
    out = setup.tmp / "since-deleted-shared"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    _deleted(setup, "Specimen/sp-deleted")
    cli_run(setup.server.base_url, out, "--bulk", "--since", "last", "--config", str(setup.config))
    rep = report(out)
    assert rep["counts"]["bulk.deleted"] == 1
    assert rep["counts"]["incremental.changed_subjects"] == SUBJECTS
    assert rep["counts"]["incremental.unchanged_subjects"] == 0
    assert rep["counts"]["read.Observation"] > 0  # read again over REST, not taken from the last CRFs
    [warning] = [w for w in rep["warnings"] if w["rule"] == "incremental"]
    assert "Specimen/sp-deleted" in warning["message"] and "every enrolled subject is read again in full" \
        in warning["message"]
    assert server_read_crfs(out) == server_read_crfs(_fresh_rest_run(setup, "rest-after-specimen"))


def test_since_ignores_a_deletion_of_a_patient_not_enrolled(setup: Setup) -> None:
    """A Patient-level export _since lists the whole server's deletions; one no CRF names is looked up in its
    instance history through REST, as the REST path does: another patient's Observation → nobody is read again,
    no warning, the deletion counted as ignored (before: every enrolled subject read again in full, warning
    ``incremental``)."""
    setup.bulk()
    put_resources(setup.server.base_url, [
        {"resourceType": "Patient", "id": "not-enrolled", "gender": "female"},
        {"resourceType": "Observation", "id": "obs-not-enrolled", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
         "subject": {"reference": "Patient/not-enrolled"}, "effectiveDateTime": "2024-03-20",
         "valueQuantity": {"value": 12.5, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"}}])
    out = setup.tmp / "since-deleted-not-enrolled"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    _deleted(setup, "Observation/obs-not-enrolled")
    cli_run(setup.server.base_url, out, "--bulk", "--since", "last", "--config", str(setup.config))
    rep = report(out)
    assert [w for w in rep["warnings"] if w["rule"] == "incremental"] == []
    assert rep["counts"]["bulk.deleted"] == 1
    assert rep["counts"]["incremental.deletion_lookups"] == 1 and rep["counts"]["incremental.deletions_ignored"] == 1
    assert rep["counts"]["incremental.changed_subjects"] == rep["counts"]["incremental.deletion_subjects"] == 0
    assert rep["counts"]["incremental.unchanged_subjects"] == SUBJECTS
    assert not rep["server_requests"].get("per_subject")  # nobody read again in full
    assert rep["server_requests"]["shared"]["history"] == 1  # the one instance history read


def test_server_reads_shared_resources_by_id(setup: Setup, study: Any) -> None:
    """A Specimen (or Organization, Location) a subject's resource references is read by id, once, as the file
    source takes it from the export."""
    from fhir_adapter.fhir import FhirClient
    from fhir_adapter.job.runlog import RunLog
    from fhir_adapter.source.server import ServerSource

    patient = plan_trial(SUBJECTS, 7).subjects[1].patient_id
    put_resources(setup.server.base_url, [
        {"resourceType": "Specimen", "id": "sp-1", "type": {"text": "serum"}},
        {"resourceType": "Observation", "id": "with-specimen", "status": "final",  # a study code: kept when unfiltered
         "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]},
         "subject": {"reference": f"Patient/{patient}"}, "specimen": {"reference": "Specimen/sp-1"}}])
    src = ServerSource(FhirClient(setup.server.base_url), study, RunLog(), observation_code_param="none")
    setup.server.reset("stats")
    try:
        first = src.run(src.read_subject(patient))
        again = src.run(src.read_subject(patient))
    finally:
        src.close()
    assert ("Specimen", "sp-1") in {(r["resourceType"], r["id"]) for r in first}
    assert [r for r in again if r["resourceType"] == "Specimen"] == \
        [r for r in first if r["resourceType"] == "Specimen"]
    assert setup.server.stats()["requests"]["by_resource_type"]["Specimen"] == 1  # read once, kept for the run


def test_since_reads_again_the_former_owner_of_a_record_moved_to_another_patient(setup: Setup) -> None:
    """An Observation the EHR moved to another enrolled patient (filed under the wrong one, corrected): an
    export _since names only its new patient; the subject whose last CRF named it is read again too, so its CRF
    no longer holds it and the outputs equal a fresh run's (before: that subject's stale CRF was reused)."""
    setup.bulk()
    out = setup.tmp / "since-moved"
    cli_run(setup.server.base_url, out, "--bulk", "--config", str(setup.config))
    owner, other = plan_trial(SUBJECTS, 7).subjects[:2]
    crf = json.loads((out / "crf" / f"{owner.subject_id}.json").read_text())
    rid = next(f["source"]["id"] for f in crf["findings"] if f["item"] == "anti_dsdna")
    [obs] = search_all(setup.server.base_url, "Observation", {"_id": rid})
    put_resources(setup.server.base_url, [{**{k: v for k, v in obs.items() if k != "meta"},
                                           "subject": {"reference": f"Patient/{other.patient_id}"}}])
    try:
        cli_run(setup.server.base_url, out, "--bulk", "--since", "last", "--config", str(setup.config))
        rep = report(out)
        assert rep["counts"]["incremental.former_owner_subjects"] == 1
        assert rep["counts"]["incremental.changed_subjects"] == 2
        assert ("Observation", rid) not in crf_sources(out / "crf" / f"{owner.subject_id}.json")
        rest = _fresh_rest_run(setup, "rest-after-move")
        assert server_read_crfs(out) == server_read_crfs(rest)
        assert study_results(out) == study_results(rest)
    finally:
        put_resources(setup.server.base_url, [{k: v for k, v in obs.items() if k != "meta"}])
