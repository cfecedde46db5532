"""Write-back safety and diffing: never another patient, never a resource the adapter did not create,
zero writes when nothing changed, retraction of results no longer produced."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from fhir_adapter.crf.models import SourceRef
from fhir_adapter.fhir import ClientSettings, FhirClient
from fhir_adapter.fhir.errors import FhirHttpError, FhirServerUnavailable
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.terminology.codes import CS_WRITE_KEY, SID_RESULT
from fhir_adapter.writeback.ownership import with_owner_tag
from fhir_adapter.writeback.sink import (
    MassRetraction,
    UnsafeWrite,
    WriteResult,
    check_retraction_share,
    check_safe,
    plan_writes,
    transaction_entries,
    write_subject,
)

E = Enrollee(subject_id="101-001", patient_id="p1",
             research_subject=SourceRef(resource_type="ResearchSubject", id="r1"),
             status="follow-up", arm="DL1", consent_date=None, site=None, sex="F", birth_date=None)


def result(ident: str, value: int, patient: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Observation", "identifier": [{"system": SID_RESULT, "value": ident}],
            "status": "final", "code": {"coding": [{"system": "https://fhir-adapter.org/fhir/CodeSystem/results",
                                                    "code": "sledai-2k"}]},
            "subject": {"reference": f"Patient/{patient}"}, "valueInteger": value,
            "derivedFrom": [{"reference": "Observation/src1"}]}


def on_server(res: dict[str, Any], id_: str, version: str = "1") -> dict[str, Any]:
    """A result as the adapter wrote it (with its tag), as the server returns it."""
    r = copy.deepcopy(with_owner_tag(res))
    r["id"] = id_
    r["meta"].update({"versionId": version, "lastUpdated": "2026-11-01T10:00:00Z"})
    return r


def test_never_writes_for_a_patient_who_is_not_enrolled() -> None:
    with pytest.raises(UnsafeWrite, match="not an enrolled subject"):
        check_safe(E, [result("a", 1)], enrolled_patients={"p2"})


def test_never_writes_a_resource_without_the_adapter_identifier() -> None:
    foreign = result("a", 1)
    foreign["identifier"] = [{"system": "http://hospital.example.org/lab", "value": "123"}]
    with pytest.raises(UnsafeWrite, match="only writes resources it owns"):
        check_safe(E, [foreign], enrolled_patients={"p1"})


def test_never_writes_a_result_about_another_patient() -> None:
    with pytest.raises(UnsafeWrite, match="Patient/p9"):
        check_safe(E, [result("a", 1, patient="p9")], enrolled_patients={"p1", "p9"})


def test_unchanged_content_is_not_written() -> None:
    r = WriteResult(subject_id="101-001")
    desired = [with_owner_tag(result("a", 10)), with_owner_tag(result("b", 4))]
    existing = {"a": on_server(desired[0], "x1"), "b": on_server(desired[1], "x2", "3")}
    assert plan_writes(desired, existing, r) == []
    assert r.unchanged == 2 and r.diff == ""


def test_a_changed_value_is_amended_and_stays_unchanged_once_amended() -> None:
    """A result that replaces a value the chart showed is `amended` (R4 Observation.status), so a clinician sees
    the score changed; the next run derives it `final` again and must not write it once more for that."""
    r = WriteResult(subject_id="101-001")
    desired = [with_owner_tag(result("a", 10))]
    [update] = plan_writes(desired, {"a": on_server(result("a", 12), "x1")}, r)
    assert update["status"] == "amended" and update["id"] == "x1" and update["valueInteger"] == 10
    assert '-  "status": "final"' in r.diff and '+  "status": "amended"' in r.diff
    again = WriteResult(subject_id="101-001")
    assert plan_writes(desired, {"a": on_server(update, "x1", "2")}, again) == [] and again.unchanged == 1
    # amended once, changed again: amended again
    [update2] = plan_writes([with_owner_tag(result("a", 7))], {"a": on_server(update, "x1", "2")},
                            WriteResult(subject_id="101-001"))
    assert update2["status"] == "amended" and update2["valueInteger"] == 7
    # a value again after a retraction (entered-in-error: as if it never existed) is a final one
    retracted = {**on_server(result("a", 12), "x1", "3"), "status": "entered-in-error"}
    [back] = plan_writes(desired, {"a": retracted}, WriteResult(subject_id="101-001"))
    assert back["status"] == "final" and back["id"] == "x1"
    # new results are final
    [new] = plan_writes(desired, {}, WriteResult(subject_id="101-001"))
    assert new["status"] == "final"
    # the same value with another method text (a new adapter version) or other sources: updated, not amended
    relabelled = {**with_owner_tag(result("a", 12)), "method": {"text": "fhir-adapter 0.1.1"}}
    [update] = plan_writes([relabelled], {"a": on_server(result("a", 12), "x1")}, WriteResult(subject_id="101-001"))
    assert update["status"] == "final" and update["method"] == {"text": "fhir-adapter 0.1.1"}
    # the same total from other descriptors (its components): what it reports changed, amended
    parts = {**with_owner_tag(result("a", 4)), "component": [{"code": {"text": "hematuria"}, "valueInteger": 4}]}
    [update] = plan_writes([{**parts, "component": [{"code": {"text": "proteinuria"}, "valueInteger": 4}]}],
                           {"a": on_server(parts, "x1")}, WriteResult(subject_id="101-001"))
    assert update["status"] == "amended"
    # ... and one amended before stays amended
    [update] = plan_writes([relabelled], {"a": {**on_server(result("a", 12), "x1"), "status": "amended"}},
                           WriteResult(subject_id="101-001"))
    assert update["status"] == "amended"


def test_the_provenance_says_whether_a_write_creates_or_revises() -> None:
    """Provenance.activity (v3 DataOperation): CREATE for a write of new results only; UPDATE ("revise") for one
    that updates a resource the server holds (a live write knows), or — without that knowledge, as in the offline
    bundle — one that amends or retracts a result."""
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def done(to_write: list[dict[str, Any]], revises: bool | None = None) -> dict[str, Any]:
        prov = transaction_entries(to_write, ["Observation/src1"], now, "p1", revises=revises)[-1]["resource"]
        coding: dict[str, Any] = prov["activity"]["coding"][0]
        return coding

    new = with_owner_tag(result("a", 1))
    assert done([new]) == {"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE",
                           "display": "create"}
    assert done([new, {**new, "id": "x1"}], revises=True)["code"] == "UPDATE"
    # a resource under a fixed id the server does not hold yet (a roster-CSV subject's own ResearchSubject)
    assert done([{**new, "id": "fixed-uuid5"}], revises=False)["code"] == "CREATE"
    assert done([{**new, "status": "amended"}])["code"] == "UPDATE"
    assert done([{**new, "status": "entered-in-error"}]) == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE", "display": "revise"}


def test_the_retraction_share_counts_results_only() -> None:
    """A roster-CSV subject: the adapter's own ResearchStudy and ResearchSubject are on the server beside its 2
    results; a run that derives nothing would retract both — 2 of 2 results, refused (not 2 of 4 resources)."""
    existing = {"a": on_server(result("a", 1), "x1"), "b": on_server(result("b", 2), "x2"),
                "rs": {"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study"},
                "study": {"resourceType": "ResearchStudy", "id": "st1", "status": "active"}}
    r = WriteResult(subject_id="101-001")
    plan_writes([], existing, r)
    assert r.retracted == ["a", "b"]
    with pytest.raises(MassRetraction, match="retract 2 of the subject's 2 results"):
        check_retraction_share(r, existing, 0.5)


def test_changed_new_and_retracted() -> None:
    r = WriteResult(subject_id="101-001")
    desired = [with_owner_tag(result("a", 10)), with_owner_tag(result("c", 2))]
    existing = {"a": on_server(result("a", 12), "x1"), "old": on_server(result("old", 5), "x3")}
    out = plan_writes(desired, existing, r)
    assert r.written == ["a", "c"] and r.retracted == ["old"]
    assert out[0]["id"] == "x1" and "id" not in out[1]  # an update addresses the server's resource
    retracted = out[-1]
    # a result the state does not know: the server's copy, as a retraction keeps it (identity, no stale value)
    assert retracted["status"] == "entered-in-error" and retracted["id"] == "x3" and "valueInteger" not in retracted
    assert retracted["identifier"] == existing["old"]["identifier"] and "Retracted" in retracted["note"][0]["text"]
    assert '-  "valueInteger": 12' in r.diff and '+  "valueInteger": 10' in r.diff
    # one unified diff per result, each header on a line of its own: a file patch tools read
    headers = [line for line in r.diff.splitlines() if line.startswith(("--- ", "+++ "))]
    assert headers == ["--- server:a", "+++ adapter:a", "--- server:c", "+++ adapter:c", "--- server:old",
                       "+++ adapter:old"]
    assert all(line[:1] in " +-@" for line in r.diff.splitlines())
    # one the state planned (the offline bundle's, with its reason): that resource, at the server's id
    planned = {**{k: v for k, v in result("old", 5).items() if k != "valueInteger"}, "status": "entered-in-error",
               "note": [{"text": "Retracted: Observation/s9 is now entered-in-error"}]}
    out = plan_writes(desired, existing, WriteResult(subject_id="101-001"), [planned])
    assert out[-1]["note"] == planned["note"] and out[-1]["id"] == "x3"


async def test_transaction_posts_only_changes_with_device_and_provenance(httpx_mock: HTTPXMock) -> None:
    base = "http://ehr.test/fhir"
    existing = on_server(result("a", 10), "x1")
    httpx_mock.add_response(method="GET", url=httpx.URL(f"{base}/Observation", params={
        "patient": "Patient/p1", "identifier": f"{SID_RESULT}|", "_count": "1000"}),
        json={"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": existing}]})
    httpx_mock.add_response(method="POST", url=base, json={"resourceType": "Bundle", "type": "transaction-response"})
    async with FhirClient(base, settings=ClientSettings()) as client:
        # the Provenance of the write names the sources of what it writes (b's), not the unchanged a's
        b = {**result("b", 3), "derivedFrom": [{"reference": "Observation/src-b"}]}
        w = await write_subject(client, E, [result("a", 10), b], {"p1"}, now=dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    assert w.error is None and w.written == ["b"] and w.unchanged == 1
    posted = httpx_mock.get_requests(method="POST")[0]
    import json
    bundle = json.loads(posted.content)
    kinds = [(e["request"]["method"], e["resource"]["resourceType"]) for e in bundle["entry"]]
    assert kinds == [("POST", "Device"), ("POST", "Observation"), ("POST", "Provenance")]
    assert bundle["entry"][1]["request"] == {"method": "POST", "url": "Observation",
                                             "ifNoneExist": f"identifier={SID_RESULT}|b&patient=Patient/p1"}
    prov = bundle["entry"][2]["resource"]
    assert prov["target"] == [{"reference": bundle["entry"][1]["fullUrl"]}]
    assert prov["entity"] == [{"role": "source", "what": {"reference": "Observation/src-b"}}]


async def test_a_result_held_back_for_review_is_neither_updated_nor_retracted(httpx_mock: HTTPXMock) -> None:
    """docs/review.md (--reviewed-only): a result held back keeps the server's copy as it is — the run no longer
    writing it is no reason to retract it."""
    base = "http://ehr.test/fhir"
    held = on_server(result("h", 7), "x9")
    httpx_mock.add_response(method="GET", json={"resourceType": "Bundle", "type": "searchset",
                                                "entry": [{"resource": on_server(result("a", 10), "x1")},
                                                          {"resource": held}]}, is_reusable=True)
    async with FhirClient(base) as client:
        w = await write_subject(client, E, [result("a", 10)], {"p1"}, held={"h"})
        assert w.retracted == [] and httpx_mock.get_requests(method="POST") == []
        w = await write_subject(client, E, [result("a", 10)], {"p1"}, dry_run=True)
        assert w.retracted == ["h"]  # without the hold it would be


async def test_a_subject_whose_id_extends_another_s_keeps_to_its_own_results(httpx_mock: HTTPXMock) -> None:
    """Identifiers keep the '.' of a subject ID: on one Patient, subject 101 (withdrawn; visits named 1, 2, …) and
    101.2 (enrolled again) both have results starting with `S.101.2.`. Each subject's write counts, updates and
    retracts only its own — told apart by the ResearchSubject each result's focus names; before, 101's write took
    101.2's results for its own and retracted them as no longer derived."""
    base = "http://ehr.test/fhir"
    withdrawn = dataclasses.replace(E, subject_id="101")
    again = dataclasses.replace(E, subject_id="101.2",
                                research_subject=SourceRef(resource_type="ResearchSubject", id="r2"))

    def about(res: dict[str, Any], rs: str) -> dict[str, Any]:
        return {**res, "focus": [{"reference": f"ResearchSubject/{rs}"}]}

    visit_2, other = about(result("S.101.2.sledai-2k", 4), "r1"), about(result("S.101.2.W4.sledai-2k", 2), "r2")
    visit_1 = about(result("S.101.1.sledai-2k", 6), "r1")
    httpx_mock.add_response(method="GET", json={"resourceType": "Bundle", "type": "searchset",
                                                "entry": [{"resource": on_server(r, f"x{n}")}
                                                          for n, r in enumerate((visit_1, visit_2, other))]},
                            is_reusable=True)
    async with FhirClient(base) as client:
        w = await write_subject(client, withdrawn, [visit_1, visit_2], {"p1"}, study_id="S",
                                others={"101", "101.2"}, dry_run=True)
        assert (w.retracted, w.unchanged) == ([], 2)
        w = await write_subject(client, withdrawn, [visit_1, visit_2], {"p1"}, study_id="S", dry_run=True)
        assert w.retracted == [other["identifier"][0]["value"]]  # without the other subject IDs: not told apart
        w = await write_subject(client, again, [other], {"p1"}, study_id="S", others={"101", "101.2"},
                                dry_run=True)
        assert (w.retracted, w.unchanged) == ([], 1)  # 101's visit-2 total is not 101.2's to retract
        # 101's visit-2 total changed: an update of its own copy (not a create its condition would swallow)
        w = await write_subject(client, withdrawn, [visit_1, {**visit_2, "valueInteger": 8}], {"p1"}, study_id="S",
                                others={"101", "101.2"}, dry_run=True)
        assert w.written == ["S.101.2.sledai-2k"] and w.retracted == []
        assert '-  "valueInteger": 4' in w.diff and '+  "valueInteger": 8' in w.diff
        # 101.2's ResearchSubject recreated (r3; its results on the server name r2): still its own by their shape
        recreated = dataclasses.replace(again, research_subject=SourceRef(resource_type="ResearchSubject", id="r3"))
        w = await write_subject(client, recreated, [about({**other, "valueInteger": 5}, "r3")], {"p1"}, study_id="S",
                                others={"101", "101.2"}, dry_run=True)
        assert w.written == ["S.101.2.W4.sledai-2k"] and w.retracted == []
        assert '"id": "x2"' not in w.diff and '-  "valueInteger": 2' in w.diff  # an update of its copy, not a create


async def test_nothing_posted_when_nothing_changed(httpx_mock: HTTPXMock) -> None:
    base = "http://ehr.test/fhir"
    httpx_mock.add_response(method="GET", json={"resourceType": "Bundle", "type": "searchset",
                                                "entry": [{"resource": on_server(result("a", 10), "x1")}]})
    async with FhirClient(base) as client:
        w = await write_subject(client, E, [result("a", 10)], {"p1"})
    assert w.written == [] and w.unchanged == 1
    assert httpx_mock.get_requests(method="POST") == []


async def test_412_on_conditional_update_is_reported_not_raised(httpx_mock: HTTPXMock) -> None:
    base = "http://ehr.test/fhir"
    httpx_mock.add_response(method="GET", json={"resourceType": "Bundle", "type": "searchset"})
    httpx_mock.add_response(method="POST", status_code=412, json={
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "duplicate", "diagnostics": "Multiple resources match the condition"}]})
    async with FhirClient(base) as client:
        w = await write_subject(client, E, [result("a", 10)], {"p1"})
    assert w.error is not None and "412" in w.error and "Multiple resources" in w.error
    assert w.written == []


def test_the_provenance_is_created_once_per_write_key() -> None:
    """R4 Provenance has no identifier: it is a conditional create on a tag whose code is the key of the write —
    the same at another time (a replay), another for other content or another version updated."""
    def prov(to_write: list[dict[str, Any]], now: dt.datetime, versions: dict[str, str] | None = None
             ) -> dict[str, Any]:
        entries = transaction_entries(to_write, ["Observation/src1"], now, "p1", versions)
        assert entries[-1]["resource"]["resourceType"] == "Provenance"
        return entries[-1]

    first = prov([result("a", 10)], dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    [key] = [t["code"] for t in first["resource"]["meta"]["tag"] if t["system"] == CS_WRITE_KEY]
    assert first["request"] == {"method": "POST", "url": "Provenance", "ifNoneExist": f"_tag={CS_WRITE_KEY}|{key}"}
    assert prov([result("a", 10)], dt.datetime(2026, 11, 26, tzinfo=dt.UTC))["request"] == first["request"]
    assert prov([result("a", 11)], dt.datetime(2026, 11, 25, tzinfo=dt.UTC))["request"] != first["request"]
    update = {**result("a", 10), "id": "x1"}
    v1 = prov([update], dt.datetime(2026, 11, 25, tzinfo=dt.UTC), {"a": "1"})
    assert v1["request"] != prov([update], dt.datetime(2026, 11, 25, tzinfo=dt.UTC), {"a": "2"})["request"]


async def test_an_invalid_device_or_provenance_stops_that_subjects_write(httpx_mock: HTTPXMock,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Device and the Provenance are validated before posting, as the results are: nothing is sent."""
    import fhir_adapter.writeback.sink as sink
    monkeypatch.setattr(sink, "adapter_device", lambda: {"resourceType": "Device", "version": "not a list"})
    httpx_mock.add_response(method="GET", json={"resourceType": "Bundle", "type": "searchset"})
    async with FhirClient("http://ehr.test/fhir") as client:
        w = await write_subject(client, E, [result("a", 10)], {"p1"})
    assert w.error is not None and "Device of this write is not valid FHIR R4" in w.error and "version" in w.error
    assert w.written == [] and httpx_mock.get_requests(method="POST") == []


async def test_a_split_write_failing_part_way_keeps_the_confirmed_part_and_says_so(httpx_mock: HTTPXMock) -> None:
    """max_transaction_entries 3: one result a transaction. The second fails (refused): the first stays
    confirmed, the rest is pending, and the error says "partially written"."""
    base = "http://ehr.test/fhir"
    httpx_mock.add_response(method="GET", json={"resourceType": "Bundle", "type": "searchset"})
    httpx_mock.add_response(method="POST", json={"resourceType": "Bundle", "type": "transaction-response"})
    httpx_mock.add_response(method="POST", status_code=400, json={
        "resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "no"}]})
    async with FhirClient(base, settings=ClientSettings(max_transaction_entries=3)) as client:
        w = await write_subject(client, E, [result("a", 1), result("b", 2), result("c", 3)], {"p1"})
    assert w.written == ["a"] and w.pending == ["b", "c"] and w.partial and w.stop is None
    assert w.error is not None and w.error.startswith("partially written: 1 of 3 results, in 1 of 3 transactions")
    assert len(httpx_mock.get_requests(method="POST")) == 2  # the third part is not sent after a failed one


async def test_a_split_write_sends_no_part_once_the_server_is_seen_down(httpx_mock: HTTPXMock) -> None:
    base = "http://ehr.test/fhir"
    httpx_mock.add_response(method="GET", json={"resourceType": "Bundle", "type": "searchset"})
    httpx_mock.add_response(method="POST", json={"resourceType": "Bundle", "type": "transaction-response"})
    async with FhirClient(base, settings=ClientSettings(max_transaction_entries=3, circuit_breaker_failures=1,
                                                        circuit_breaker_subjects=1)) as client:
        posted = client.transaction

        async def then_down(bundle: dict[str, Any], *, label: str | None = None) -> dict[str, Any]:
            answer = await posted(bundle, label=label)
            down = FhirHttpError(method="GET", url=f"{base}/metadata", status=503, reason="Service Unavailable")
            client.breaker.failed(down, "other")  # the server is seen down after this part
            return answer

        client.transaction = then_down  # type: ignore[method-assign]
        w = await write_subject(client, E, [result("a", 1), result("b", 2)], {"p1"})
    assert isinstance(w.stop, FhirServerUnavailable) and w.written == ["a"] and w.pending == ["b"]
    assert "partially written: 1 of 2 results" in (w.error or "")
    assert len(httpx_mock.get_requests(method="POST")) == 1
