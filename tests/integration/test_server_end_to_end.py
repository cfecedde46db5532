"""End to end against the real local FHIR server, on the 34-subject synthetic trial: load the feed, roster,
read, derive, write back, read the results back, run again (no new writes, no duplicates); the same CRFs and
results as from the files; never a write outside the enrolled subjects or to a resource the adapter did not
create."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.source.server import SUBJECT_SEARCHES
from fhir_adapter.synth import plan_trial, write_feed
from fhir_adapter.terminology.codes import CS_RESULTS, SID_RESULT
from fhir_adapter.testing.feed_loader import load_feed, put_resources, search_all
from fhir_adapter.testing.fhir_server import ServerHandle
from fhir_adapter.testing.outtree import server_read_crfs
from tests.serverkit import (
    adapter_observations,
    cli_run,
    identifier_counts,
    offline_results,
    report,
    study_results,
    write_config,
    writes,
)

pytestmark = pytest.mark.server

SUBJECTS = 34
HOSPITAL_SCORE_ID = "hospital-sledai-score"


@dataclass
class E2E:
    base_url: str
    feed: Path
    file_out: Path
    out: Path
    first: dict[str, Any]        # run-report.json of the first server run
    first_stats: dict[str, Any]  # the server's counters after the first run
    second: dict[str, Any]
    second_stats: dict[str, Any]
    enrolled_patient: str


@pytest.fixture(scope="module")
def e2e(fhir_server: ServerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    tmp = tmp_path_factory.mktemp("e2e")
    feed, file_out, out = tmp / "feed", tmp / "file-out", tmp / "server-out"
    write_feed(feed, subjects=SUBJECTS, seed=7)
    cli_run(str(feed), file_out)
    fhir_server.clear_faults()
    fhir_server.reset()
    load_feed(fhir_server.base_url, feed)
    # a hospital Observation on an enrolled patient with the very code of the adapter's SLEDAI-2K result
    patient = plan_trial(SUBJECTS, 7).subjects[0].patient_id
    put_resources(fhir_server.base_url, [{
        "resourceType": "Observation", "id": HOSPITAL_SCORE_ID, "status": "final",
        "identifier": [{"system": "https://hospital.example.org/scores", "value": "s-1"}],
        "code": {"coding": [{"system": CS_RESULTS, "code": "sledai-2k"}]},
        "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": "2024-03-01", "valueInteger": 99}])
    config = write_config(tmp / "adapter.yaml")
    fhir_server.reset("stats")
    cli_run(fhir_server.base_url, out, "--post", "--config", str(config))
    first, first_stats = report(out), fhir_server.stats()
    fhir_server.reset("stats")
    cli_run(fhir_server.base_url, out, "--post", "--config", str(config))
    yield E2E(fhir_server.base_url, feed, file_out, out, first, first_stats, report(out), fhir_server.stats(),
              patient)


def test_every_result_is_on_the_server_once(e2e: E2E) -> None:
    expected = offline_results(e2e.file_out)
    assert len(expected) == SUBJECTS
    on_server = identifier_counts(adapter_observations(e2e.base_url))
    assert sorted(on_server) == sorted(i for ids in expected.values() for i in ids)
    assert set(on_server.values()) == {1}  # no duplicates, after two runs
    # the demo cohort's results (none for an unscheduled visit: they are kept off the results)
    assert e2e.first["summary"]["server_writes"] == sum(len(v) for v in expected.values()) == 1035
    assert e2e.first_stats["writes"]["by_resource_type"]["Observation"]["created"] == 1035


def test_second_run_writes_nothing(e2e: E2E) -> None:
    assert writes(e2e.second_stats) == 0
    assert e2e.second["summary"]["server_writes"] == 0
    assert e2e.second["summary"]["server_unchanged"] == 1035
    # reads only: GETs, and the searches too long for a GET URL go as POST <type>/_search: an Observation
    # search with the study's code list (the run's timed probe; every one when they are read filtered) and, for
    # subjects with many lab draws, the Specimen?_id look-up of the specimens their results reference; no
    # transaction, no batch
    requests = e2e.second_stats["requests"]
    assert set(requests["by_method"]) <= {"GET", "POST"}
    assert 1 <= requests["by_method"].get("POST", 0) <= 2 * SUBJECTS
    assert set(requests["by_interaction"]) <= {"search-type", "read", "capabilities"}


def test_one_provenance_per_subject_targets_the_written_results(e2e: E2E) -> None:
    provenances = search_all(e2e.base_url, "Provenance", {})
    assert len(provenances) == SUBJECTS
    results = {f"Observation/{o['id']}" for o in adapter_observations(e2e.base_url)}
    targets = [t["reference"] for p in provenances for t in p["target"]]
    assert len(targets) == 1035 and set(targets) == results  # urn:uuid fullUrls resolved by the server
    devices = search_all(e2e.base_url, "Device", {})
    assert len(devices) == 1
    assert all(p["agent"][0]["who"]["reference"] == f"Device/{devices[0]['id']}" for p in provenances)


def test_at_most_three_requests_per_subject(e2e: E2E) -> None:
    per_subject = e2e.first["server_requests"]["per_subject"]
    assert len(per_subject) == SUBJECTS
    # reads are multi-patient searches (shared under "subjects"); a subject's own requests are the diff search
    # of the adapter's results and one transaction, on the second run the diff search only
    assert set(per_subject.values()) == {2}
    assert set(e2e.second["server_requests"]["per_subject"].values()) == {1}
    shared = e2e.first["server_requests"]["shared"]
    # the timed Observation searches of observation_code_param: auto (one pair, two when the first was close)
    assert shared["roster"] == 3 and set(shared) == {"roster", "probe", "subjects"} and shared["probe"] in (2, 4)
    # Observations one subject a search (about a page each), the other types for the group at once
    assert SUBJECTS <= shared["subjects"] <= SUBJECTS + 3 * len(SUBJECT_SEARCHES)
    assert e2e.first["server_requests"]["mean_per_subject"] <= 2 + 3
    assert e2e.second["server_requests"]["mean_per_subject"] <= 1 + 3


def test_file_and_server_sources_give_the_same_crfs_and_results(e2e: E2E) -> None:
    assert study_results(e2e.out) == study_results(e2e.file_out)
    assert server_read_crfs(e2e.out) == server_read_crfs(e2e.file_out)
    for name in ("writeback",):
        assert sorted(p.name for p in (e2e.out / name).iterdir()) == sorted(p.name for p in (e2e.file_out / name)
                                                                              .iterdir())


def test_nothing_written_for_patients_who_are_not_enrolled(e2e: E2E) -> None:
    trial = plan_trial(SUBJECTS, 7)
    outsiders = [*trial.screen_failure_patient_ids, *trial.non_enrolled_patient_ids]
    assert outsiders
    enrolled = {s.patient_id for s in trial.subjects}
    subjects_of_results = {o["subject"]["reference"].split("/")[1] for o in adapter_observations(e2e.base_url)}
    assert subjects_of_results <= enrolled
    for pid in outsiders:
        assert search_all(e2e.base_url, "Observation", {"patient": f"Patient/{pid}",
                                                       "identifier": f"{SID_RESULT}|"}) == []


def test_a_hospital_resource_with_the_same_code_is_untouched(e2e: E2E) -> None:
    held = search_all(e2e.base_url, "Observation", {"_id": HOSPITAL_SCORE_ID})
    assert len(held) == 1
    assert held[0]["meta"]["versionId"] == "1" and held[0]["valueInteger"] == 99
    assert held[0]["identifier"] == [{"system": "https://hospital.example.org/scores", "value": "s-1"}]
