"""Live write-back touches only what the adapter created (its identifier *and* its tag *and* the enrolled
patient), creates with If-None-Exist, updates with If-Match on the version it read, and does not retract
most of a subject's results in one run without --allow-mass-retraction — against the real test server."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_adapter.crf.models import SourceRef
from fhir_adapter.fhir import FhirClient, FhirHttpError
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.testing.feed_loader import put_resources, search_all
from fhir_adapter.testing.fhir_server import ServerHandle
from fhir_adapter.writeback.ownership import has_owner_tag
from fhir_adapter.writeback.sink import WriteResult, transaction_entries, write_subject

E = Enrollee(subject_id="101-001", patient_id="p1",
             research_subject=SourceRef(resource_type="ResearchSubject", id="r1"),
             status="follow-up", arm="DL1", consent_date=None, site=None, sex="F", birth_date=None)
NOW = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


def result(ident: str, value: int, patient: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Observation", "identifier": [{"system": SID_RESULT, "value": ident}],
            "status": "final", "code": {"coding": [{"system": "https://fhir-adapter.org/fhir/CodeSystem/results",
                                                    "code": "sledai-2k"}]},
            "subject": {"reference": f"Patient/{patient}"}, "valueInteger": value,
            "derivedFrom": [{"reference": "Observation/src1"}]}


def on_server(base: str) -> dict[str, dict[str, Any]]:
    found = search_all(base, "Observation", {"identifier": f"{SID_RESULT}|"})
    return {str(r["identifier"][0]["value"]) + ("" if has_owner_tag(r) else "@foreign"): r for r in found}


async def write(base: str, desired: list[dict[str, Any]], **kw: Any) -> WriteResult:
    async with FhirClient(base) as client:
        return await write_subject(client, E, desired, {"p1"}, now=NOW, **kw)


@pytest.fixture
def server(clean_fhir_server: ServerHandle) -> str:
    base = clean_fhir_server.base_url
    put_resources(base, [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient", "id": "p2"}])
    return base


async def test_foreign_resources_with_the_adapter_identifier_are_never_touched(server: str) -> None:
    # a hospital Observation that happens to use the adapter's identifier system (no adapter tag)
    foreign = {**result("r-old", 1), "id": "foreign-1", "note": [{"text": "hospital's own"}]}
    put_resources(server, [foreign])
    w = await write(server, [result("r-a", 10), result("r-b", 4)])
    assert w.error is None and sorted(w.written) == ["r-a", "r-b"] and w.retracted == []
    held = on_server(server)
    assert held["r-old@foreign"]["status"] == "final" and held["r-old@foreign"]["meta"]["versionId"] == "1"
    assert has_owner_tag(held["r-a"]) and has_owner_tag(held["r-b"])
    # wanting an identifier a foreign resource holds: refused for the subject, before any request
    w = await write(server, [result("r-a", 10), result("r-b", 4), result("r-old", 2)])
    assert w.error is not None and "Observation/foreign-1" in w.error and w.written == []
    assert on_server(server)["r-old@foreign"]["meta"]["versionId"] == "1"


async def test_unchanged_results_make_no_request_and_changes_use_if_match(server: str) -> None:
    assert (await write(server, [result("r-a", 10)])).written == ["r-a"]
    again = await write(server, [result("r-a", 10)])
    assert again.written == [] and again.unchanged == 1
    changed = await write(server, [result("r-a", 11)])
    assert changed.error is None and changed.written == ["r-a"]
    held = on_server(server)["r-a"]
    assert held["valueInteger"] == 11 and held["meta"]["versionId"] == "2"
    assert len(on_server(server)) == 1  # updated in place, never duplicated


async def test_a_result_changed_on_the_server_since_it_was_read_is_not_overwritten(server: str) -> None:
    await write(server, [result("r-a", 10)])
    held = on_server(server)["r-a"]
    # someone edits the adapter's result after the adapter read version 1
    edited = {**held, "note": [{"text": "edited by a person"}]}
    with httpx.Client() as http:
        http.put(f"{server}/Observation/{held['id']}", json=edited).raise_for_status()
    update = {**result("r-a", 12), "id": held["id"]}
    entries = transaction_entries([update], ["Observation/src1"], NOW, "p1", {"r-a": "1"})
    assert entries[1]["request"] == {"method": "PUT", "url": f"Observation/{held['id']}", "ifMatch": 'W/"1"'}
    async with FhirClient(server) as client:
        with pytest.raises(FhirHttpError) as err:
            await client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert err.value.status == 412
    after = on_server(server)["r-a"]
    assert after["valueInteger"] == 10 and after["note"] == [{"text": "edited by a person"}]


async def test_if_none_exist_never_creates_a_second_copy(server: str) -> None:
    await write(server, [result("r-a", 10)])
    entries = transaction_entries([result("r-a", 10)], [], NOW, "p1")
    assert entries[1]["request"]["ifNoneExist"] == f"identifier={SID_RESULT}|r-a&patient=Patient/p1"
    async with FhirClient(server) as client:
        await client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert len(on_server(server)) == 1


async def test_mass_retraction_needs_the_flag_and_is_refused_before_anything_is_sent(server: str) -> None:
    await write(server, [result(f"r-{n}", n) for n in range(4)])
    before = {k: r["meta"]["versionId"] for k, r in on_server(server).items()}
    # one input disappears from a re-export and 3 of the subject's 4 results would go
    w = await write(server, [result("r-0", 0)])
    assert w.error is not None and "3 of the subject's 4 results" in w.error and "--allow-mass-retraction" in w.error
    assert w.written == [] and w.retracted == [] and "entered-in-error" in w.diff
    assert {k: r["meta"]["versionId"] for k, r in on_server(server).items()} == before
    # below the share: retracted
    assert (await write(server, [result(f"r-{n}", n) for n in range(3)])).retracted == ["r-3"]
    # with the flag: retracted
    w = await write(server, [result("r-0", 0)], allow_mass_retraction=True)
    assert w.error is None and sorted(w.retracted) == ["r-1", "r-2"]
    assert {k: r["status"] for k, r in on_server(server).items()} == {
        "r-0": "final", "r-1": "entered-in-error", "r-2": "entered-in-error", "r-3": "entered-in-error"}


async def test_two_studies_on_one_patient_leave_each_others_results_alone(server: str) -> None:
    """A patient in LCAR-AIO and in a second trial: each study's write counts, updates and retracts only its own
    results (identifiers starting with its study id) — the other's are neither retracted nor a reason to refuse."""
    lcar = [result("LCAR-AIO-SLE.101-001.W4.sledai-2k", 4), result("LCAR-AIO-SLE.101-001.W8.sledai-2k", 2)]
    w = await write(server, lcar, study_id="LCAR-AIO-SLE")
    assert w.error is None and len(w.written) == 2
    w = await write(server, [result("SYN-LN.101-001.W4.renal-response", 1)], study_id="SYN-LN")
    assert w.error is None and w.retracted == [] and w.written == ["SYN-LN.101-001.W4.renal-response"]
    w = await write(server, lcar[:1], study_id="LCAR-AIO-SLE")  # W8 no longer derived: retracted, SYN-LN's kept
    assert w.error is None and w.retracted == ["LCAR-AIO-SLE.101-001.W8.sledai-2k"] and w.unchanged == 1
    assert {k: r["status"] for k, r in on_server(server).items()} == {
        "LCAR-AIO-SLE.101-001.W4.sledai-2k": "final", "LCAR-AIO-SLE.101-001.W8.sledai-2k": "entered-in-error",
        "SYN-LN.101-001.W4.renal-response": "final"}


async def test_a_patient_enrolled_again_keeps_the_first_subjects_results(server: str) -> None:
    """A patient withdrawn as 101-001 and enrolled again as 101-009 (docs/clinical-rules.md#withdrawn-subjects):
    the new subject's write counts, updates and retracts its own results only — 101-001's stay final."""
    from dataclasses import replace

    first = [result("LCAR-AIO-SLE.101-001.W4.sledai-2k", 4)]
    assert (await write(server, first, study_id="LCAR-AIO-SLE")).written == [first[0]["identifier"][0]["value"]]
    again = replace(E, subject_id="101-009")
    async with FhirClient(server) as client:
        w = await write_subject(client, again, [result("LCAR-AIO-SLE.101-009.W4.sledai-2k", 2)], {"p1"}, now=NOW,
                                study_id="LCAR-AIO-SLE")
    assert w.error is None and w.retracted == [] and w.written == ["LCAR-AIO-SLE.101-009.W4.sledai-2k"]
    assert {k: r["status"] for k, r in on_server(server).items()} == {
        "LCAR-AIO-SLE.101-001.W4.sledai-2k": "final", "LCAR-AIO-SLE.101-009.W4.sledai-2k": "final"}


async def test_a_result_about_another_patient_is_not_the_adapters(server: str) -> None:
    # an adapter-tagged result about p2 found in p1's search would not be touched either
    from fhir_adapter.writeback.ownership import why_not_owned, with_owner_tag

    other = with_owner_tag(result("r-x", 1, patient="p2"))
    assert "Patient/p2" in str(why_not_owned(other, "p1"))
    assert why_not_owned(with_owner_tag(result("r-x", 1)), "p1") is None
    assert "tag" in str(why_not_owned(result("r-x", 1), "p1"))


def test_a_dropped_infusion_does_not_retract_a_subject_without_the_flag(clean_fhir_server: ServerHandle,
                                                                        tmp_path: Path) -> None:
    """The probe: one infusion Procedure disappears from the EHR and every result of that subject would be
    retracted in one go — refused for that subject (exit 2) before anything is sent, unless the flag is given."""
    from fhir_adapter.synth import write_feed
    from fhir_adapter.testing.feed_loader import load_feed
    from tests.serverkit import cli_run, report, write_config

    base = clean_fhir_server.base_url
    write_feed(tmp_path / "feed", subjects=2, seed=7)
    load_feed(base, tmp_path / "feed")
    config = str(write_config(tmp_path / "a.yaml"))
    cli_run(base, tmp_path / "out1", "--post", "--config", config)
    procedures = search_all(base, "Procedure", {})
    victim = next(p for p in procedures if p.get("status") == "completed")
    pid = victim["subject"]["reference"].split("/")[-1]
    held = [r for r in search_all(base, "Observation", {"identifier": f"{SID_RESULT}|", "patient": f"Patient/{pid}"})
            if r.get("status") != "entered-in-error"]
    assert len(held) > 2
    with httpx.Client() as http:
        for p in procedures:
            if p["subject"]["reference"] == f"Patient/{pid}":
                http.delete(f"{base}/Procedure/{p['id']}").raise_for_status()
    refused = cli_run(base, tmp_path / "out2", "--post", "--config", config)
    rep = report(tmp_path / "out2")
    assert refused.exit_code == 2 and len(rep["summary"]["subjects_not_written"]) == 1
    error = next(w["error"] for w in rep["writes"] if "error" in w)
    assert "--allow-mass-retraction" in error
    after = search_all(base, "Observation", {"identifier": f"{SID_RESULT}|", "patient": f"Patient/{pid}"})
    assert all(r.get("status") != "entered-in-error" for r in after)  # nothing was sent
    cli_run(base, tmp_path / "out3", "--post", "--config", config, "--allow-mass-retraction")
    after = search_all(base, "Observation", {"identifier": f"{SID_RESULT}|", "patient": f"Patient/{pid}"})
    assert sum(r.get("status") == "entered-in-error" for r in after) > len(held) / 2
