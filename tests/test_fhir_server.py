"""Integration tests of the in-memory FHIR R4 test server (tests/fhir_server, Medplum router).

These exercise the server itself: what other test modules may rely on when they use the
``fhir_server`` fixture. The module runs its own server (``server``), so its resets never
disturb the shared session server of other modules.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_adapter.testing.fhir_server import (
    INSTALL_TARGET,
    FhirServerError,
    ServerHandle,
    check_installed,
    start_fhir_server,
)

pytestmark = pytest.mark.server

FHIR_JSON = "application/fhir+json"
OBS_SYSTEM = "urn:test:obs"
MRN_SYSTEM = "urn:test:mrn"


# --------------------------------------------------------------------------- fixtures/helpers
@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    try:
        handle = start_fhir_server()
    except FhirServerError as err:
        pytest.fail(str(err), pytrace=False)
    with handle:
        yield handle


@pytest.fixture
def fhir(server: ServerHandle) -> Iterator[httpx.Client]:
    """An httpx client on the FHIR base of an emptied server."""
    server.clear_faults()
    server.reset()
    with httpx.Client(base_url=server.base_url, headers={"Content-Type": FHIR_JSON}, timeout=60) as client:
        yield client


def patient(mrn: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": mrn}], **extra}


def observation(ident: str, subject: str | None = None, **extra: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": OBS_SYSTEM, "value": ident}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
        "effectiveDateTime": "2024-03-01T08:00:00Z",
        "valueQuantity": {"value": 5.5, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    }
    if subject:
        obs["subject"] = {"reference": subject}
    obs.update(extra)
    return obs


def bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def put_entry(resource: dict[str, Any], url: str) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PUT", "url": url}}


def cond_url(resource_type: str, system: str, value: str) -> str:
    return f"{resource_type}?identifier={system}|{value}"


def search_all(client: httpx.Client, url: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Follow Bundle.link[next]; returns (match entries of all pages, number of pages)."""
    entries: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    next_params: dict[str, Any] | None = params
    while next_url:
        response = client.get(next_url, params=next_params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        entries += [e for e in page.get("entry", []) if e["search"]["mode"] == "match"]
        next_url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
        next_params = None  # the next link carries every parameter
    return entries, pages


def load_subject(client: httpx.Client, mrn: str, n_obs: int) -> str:
    """Transaction: one Patient (conditional PUT) + n Observations referencing it by urn:uuid."""
    pat_urn = f"urn:uuid:{uuid.uuid4()}"
    entries = [{"fullUrl": pat_urn, **put_entry(patient(mrn), cond_url("Patient", MRN_SYSTEM, mrn))}]
    entries += [
        put_entry(observation(f"{mrn}-{i}", pat_urn), cond_url("Observation", OBS_SYSTEM, f"{mrn}-{i}"))
        for i in range(n_obs)
    ]
    response = client.post("", json=bundle("transaction", entries))
    assert response.status_code == 200, response.text
    location: str = response.json()["entry"][0]["response"]["location"]
    return location.split("/")[1]


def assert_outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    outcome: dict[str, Any] = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    return outcome


# --------------------------------------------------------------------------------------- tests
def test_base_url_and_capability_statement(server: ServerHandle, fhir: httpx.Client) -> None:
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.base_url.endswith("/fhir/R4")
    response = fhir.get("metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR_JSON)
    capability = response.json()
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["fhirVersion"] == "4.0.1"
    rest = capability["rest"][0]
    assert {"transaction", "batch"} <= {i["code"] for i in rest["interaction"]}
    obs = next(r for r in rest["resource"] if r["type"] == "Observation")
    assert obs["conditionalUpdate"] is True
    assert {"identifier", "patient", "subject", "code", "_lastUpdated"} <= {p["name"] for p in obs["searchParam"]}


def test_transaction_then_read_back(fhir: httpx.Client) -> None:
    pat_urn = f"urn:uuid:{uuid.uuid4()}"
    entries = [
        {
            "fullUrl": pat_urn,
            "resource": patient("MRN-1", gender="female"),
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    entries += [
        {"resource": observation(f"o{i}", pat_urn), "request": {"method": "POST", "url": "Observation"}}
        for i in range(3)
    ]
    response = fhir.post("", json=bundle("transaction", entries))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201"] * 4
    pat_location = result["entry"][0]["response"]["location"]
    assert pat_location.startswith("Patient/") and pat_location.endswith("/_history/1")
    pat_id = pat_location.split("/")[1]

    read = fhir.get(f"Patient/{pat_id}")
    assert read.status_code == 200
    assert read.headers["etag"] == 'W/"1"'
    assert read.json()["gender"] == "female"
    assert read.json()["meta"]["versionId"] == "1"
    for entry in result["entry"][1:]:
        obs = fhir.get(entry["response"]["location"].split("/_history")[0]).json()
        assert obs["subject"]["reference"] == f"Patient/{pat_id}"  # urn:uuid rewritten

    assert fhir.get("Patient/does-not-exist").status_code == 404
    assert fhir.get("NotAType/1").status_code == 404


def test_search_paging_follows_next_links(server: ServerHandle, fhir: httpx.Client) -> None:
    pat_id = load_subject(fhir, "MRN-PAGING", 57)
    load_subject(fhir, "MRN-OTHER", 5)  # must not show up

    entries, pages = search_all(fhir, "Observation", patient=pat_id, _count=10)
    ids = [e["resource"]["id"] for e in entries]
    assert pages == 6
    assert len(ids) == 57
    assert len(set(ids)) == 57  # every resource exactly once

    first = fhir.get("Observation", params={"subject": f"Patient/{pat_id}", "_count": 10}).json()
    assert first["total"] == 57
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert links["next"].startswith(f"{server.base_url}/Observation?")
    assert "_count=10" in links["next"] and "_offset=10" in links["next"]
    last = fhir.get("Observation", params={"patient": pat_id, "_count": 10, "_offset": 50}).json()
    assert "next" not in {link["relation"] for link in last["link"]}
    assert len(last["entry"]) == 7

    # default page size applies when _count is absent; MAX_PAGE_SIZE caps it
    assert len(fhir.get("Observation", params={"patient": pat_id}).json()["entry"]) == 20
    assert len(fhir.get("Observation", params={"patient": pat_id, "_count": 5000}).json()["entry"]) == 57


def test_search_parameters(server: ServerHandle, fhir: httpx.Client) -> None:
    pat_id = load_subject(fhir, "MRN-S", 3)
    fhir.post("Observation", json=observation("other-code", f"Patient/{pat_id}", code={"text": "other"}))

    def total(**params: Any) -> int:
        response = fhir.get("Observation", params={**params, "_summary": "count"})
        assert response.status_code == 200, response.text
        result: int = response.json()["total"]
        return result

    assert total(identifier=f"{OBS_SYSTEM}|MRN-S-1") == 1
    assert total(identifier="MRN-S-1") == 1
    assert total(patient=pat_id) == 4
    assert total(patient=f"Patient/{pat_id}") == 4
    assert total(subject=f"Patient/{pat_id}") == 4
    assert total(**{"subject:Patient": pat_id}) == 4
    assert total(code="http://loinc.org|2345-7") == 3
    assert total(code="2345-7", patient=pat_id) == 3
    assert total(_lastUpdated="ge2020-01-01") == 4
    assert total(_lastUpdated="lt2020-01-01") == 0
    patients = fhir.get("Patient", params={"identifier": f"{MRN_SYSTEM}|MRN-S"}).json()
    assert patients["total"] == 1

    # _include brings the Patient along, marked as include
    page = fhir.get("Observation", params={"patient": pat_id, "_include": "Observation:patient"}).json()
    modes = [(e["search"]["mode"], e["resource"]["resourceType"]) for e in page["entry"]]
    assert modes.count(("include", "Patient")) == 1
    assert modes.count(("match", "Observation")) == 4
    assert all(e["fullUrl"].startswith(server.base_url + "/") for e in page["entry"])

    # unknown parameters are an error (strict handling), or ignored with Prefer: handling=lenient
    assert_outcome(fhir.get("Observation", params={"no-such-param": "x"}), 400)
    assert_outcome(fhir.get("Observation", params={"code:text": "glucose"}), 400)  # unsupported modifier
    lenient = fhir.get("Observation", params={"no-such-param": "x"}, headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200


def test_conditional_update_creates_then_updates(server: ServerHandle, fhir: httpx.Client) -> None:
    url = cond_url("Observation", OBS_SYSTEM, "cu-1")
    created = fhir.put(url, json=observation("cu-1"))
    assert created.status_code == 201, created.text
    obs_id = created.json()["id"]
    assert created.json()["meta"]["versionId"] == "1"
    assert created.headers["location"].endswith(f"/Observation/{obs_id}/_history/1")

    updated = fhir.put(url, json=observation("cu-1", valueQuantity={"value": 6.1, "unit": "mmol/L"}))
    assert updated.status_code == 200, updated.text
    assert updated.json()["id"] == obs_id
    assert updated.json()["meta"]["versionId"] == "2"

    # same content again: no new version, counted as "unchanged", not as a write
    writes_before = server.stats()["writes"]["total"]
    again = fhir.put(url, json=observation("cu-1", valueQuantity={"value": 6.1, "unit": "mmol/L"}))
    assert again.status_code == 200
    assert again.json()["meta"]["versionId"] == "2"
    assert server.stats()["writes"]["total"] == writes_before

    found = fhir.get("Observation", params={"identifier": f"{OBS_SYSTEM}|cu-1"}).json()
    assert found["total"] == 1  # no duplicate
    history = fhir.get(f"Observation/{obs_id}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert fhir.get(f"Observation/{obs_id}/_history/1").json()["valueQuantity"]["value"] == 5.5

    # the same inside a transaction bundle (also creates then updates)
    tx = [put_entry(observation("cu-2"), cond_url("Observation", OBS_SYSTEM, "cu-2"))]
    assert fhir.post("", json=bundle("transaction", tx)).json()["entry"][0]["response"]["status"] == "201"
    tx = [put_entry(observation("cu-2", status="amended"), cond_url("Observation", OBS_SYSTEM, "cu-2"))]
    response = fhir.post("", json=bundle("transaction", tx)).json()["entry"][0]
    assert response["response"]["status"] == "200"
    assert response["resource"]["meta"]["versionId"] == "2"

    # If-Match optimistic locking
    stale = observation("cu-1", id=obs_id)
    assert_outcome(fhir.put(f"Observation/{obs_id}", json=stale, headers={"If-Match": 'W/"1"'}), 412)


def test_conditional_update_with_several_matches_is_412(server: ServerHandle, fhir: httpx.Client) -> None:
    for _ in range(2):
        assert fhir.post("Observation", json=observation("dup")).status_code == 201
    url = cond_url("Observation", OBS_SYSTEM, "dup")

    outcome = assert_outcome(fhir.put(url, json=observation("dup")), 412)
    assert outcome["issue"][0]["code"] == "multiple-matches"

    writes = server.stats()["writes"]["total"]
    tx = [
        put_entry(observation("fresh"), cond_url("Observation", OBS_SYSTEM, "fresh")),
        put_entry(observation("dup"), url),
    ]
    assert_outcome(fhir.post("", json=bundle("transaction", tx)), 412)
    assert server.stats()["writes"]["total"] == writes  # transaction rolled back entirely
    assert fhir.get("Observation", params={"identifier": "fresh"}).json()["total"] == 0

    result = fhir.post("", json=bundle("batch", tx)).json()
    assert result["type"] == "batch-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201", "412"]


def test_if_none_exist_conditional_create(fhir: httpx.Client) -> None:
    headers = {"If-None-Exist": f"identifier={MRN_SYSTEM}|INE"}
    first = fhir.post("Patient", json=patient("INE"), headers=headers)
    second = fhir.post("Patient", json=patient("INE"), headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    entry = {
        "resource": patient("INE"),
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN_SYSTEM}|INE"},
    }
    result = fhir.post("", json=bundle("batch", [entry])).json()
    assert result["entry"][0]["response"]["status"] == "200"
    assert fhir.get("Patient", params={"identifier": "INE"}).json()["total"] == 1


def test_invalid_resources_are_rejected(server: ServerHandle, fhir: httpx.Client) -> None:
    no_status = observation("bad-1")
    del no_status["status"]
    outcome = assert_outcome(fhir.post("Observation", json=no_status), 400)
    assert outcome["issue"][0]["expression"] == ["Observation.status"]

    outcome = assert_outcome(fhir.post("Patient", json=patient("BAD", gender="bogus")), 400)
    assert outcome["issue"][0]["code"] == "code-invalid"
    assert outcome["issue"][0]["expression"] == ["Patient.gender"]

    assert_outcome(fhir.post("Patient", json=patient("BAD", unknownField=1)), 400)
    assert_outcome(fhir.post("Observation", json=observation("bad-2", effectiveDateTime="2024-13-45")), 400)
    assert_outcome(fhir.put(cond_url("Observation", OBS_SYSTEM, "bad-3"), json=no_status), 400)
    assert_outcome(fhir.post("Patient", content=b"{not json"), 400)

    # an invalid entry fails the whole transaction: nothing from it is stored
    tx = [
        put_entry(patient("GOOD"), cond_url("Patient", MRN_SYSTEM, "GOOD")),
        {"resource": no_status, "request": {"method": "POST", "url": "Observation"}},
    ]
    outcome = assert_outcome(fhir.post("", json=bundle("transaction", tx)), 400)
    assert "Bundle.entry[1]" in outcome["issue"][0]["diagnostics"]
    assert server.stats()["resources_total"] == 0
    # in a batch, only that entry fails
    statuses = [e["response"]["status"] for e in fhir.post("", json=bundle("batch", tx)).json()["entry"]]
    assert statuses == ["201", "400"]


def test_delete(fhir: httpx.Client) -> None:
    obs_id = fhir.post("Observation", json=observation("del")).json()["id"]
    assert fhir.delete(f"Observation/{obs_id}").status_code == 200
    assert fhir.get(f"Observation/{obs_id}").status_code == 410
    assert fhir.get("Observation", params={"identifier": "del"}).json()["total"] == 0
    assert fhir.delete(f"Observation/{obs_id}").status_code == 200  # idempotent
    # the instance history of a deleted resource stays readable (FHIR R4 http.html#history): a DELETE entry
    # without the resource, then the versions, newest first
    history = fhir.get(f"Observation/{obs_id}/_history").json()
    deleted, version = history["entry"]
    assert deleted["request"] == {"method": "DELETE", "url": f"Observation/{obs_id}"} and "resource" not in deleted
    assert version["resource"]["id"] == obs_id and version["resource"]["meta"]["versionId"] == "1"
    assert fhir.get("Observation/never-stored/_history").status_code == 404


def test_transaction_limits_are_lifted(fhir: httpx.Client) -> None:
    # Medplum's production limits: 50 updates, 8 entries when any entry is conditional.
    entries = [put_entry(observation(f"big-{i}"), cond_url("Observation", OBS_SYSTEM, f"big-{i}")) for i in range(120)]
    response = fhir.post("", json=bundle("transaction", entries))
    assert response.status_code == 200, response.text
    assert fhir.get("Observation", params={"_summary": "count"}).json()["total"] == 120


def test_stats_and_reset(server: ServerHandle, fhir: httpx.Client) -> None:
    load_subject(fhir, "MRN-ST", 4)
    fhir.get("Observation", params={"identifier": "MRN-ST-1"})
    stats = server.stats()
    assert stats["requests"]["by_method"] == {"POST": 1, "GET": 1}
    assert stats["requests"]["by_interaction"]["transaction"] == 1
    assert stats["requests"]["by_resource_type"]["Observation"] == 1
    assert stats["bundle_entries"]["by_resource_type"] == {"Patient": 1, "Observation": 4}
    assert stats["writes"]["created"] == 5 and stats["writes"]["total"] == 5
    assert stats["resources"] == {"Patient": 1, "Observation": 4}

    load_subject(fhir, "MRN-ST", 4)  # identical second run: zero writes
    assert server.stats()["writes"]["total"] == 5
    assert server.stats()["writes"]["unchanged"] == 5

    server.reset(scope="stats")
    assert server.stats()["requests"]["total"] == 0
    assert server.stats()["resources_total"] == 5
    server.reset()
    assert server.stats()["resources_total"] == 0


def test_fault_knobs_from_env() -> None:
    with start_fhir_server(FAULT_429_EVERY=3) as srv, httpx.Client(base_url=srv.base_url) as client:
        codes = [client.get("Patient").status_code for _ in range(6)]
        assert codes == [200, 200, 429, 200, 200, 429]
        response = [client.get("Patient") for _ in range(3)][-1]  # requests 7, 8, 9
        assert response.status_code == 429
        assert response.headers["retry-after"] == "0"
        assert response.json()["issue"][0]["code"] == "throttled"
        assert srv.stats()["faults"]["429"] == 3

    def run_503(srv: ServerHandle) -> list[int]:
        with httpx.Client(base_url=srv.base_url, headers={"Content-Type": FHIR_JSON}) as client:
            return [client.post("Patient", json=patient(f"F{i}")).status_code for i in range(40)]

    with start_fhir_server(FAULT_503_RATE=0.3, FAULT_SEED=42) as srv:
        codes = run_503(srv)
        assert codes.count(503) > 0 and codes.count(201) > 0
        assert set(codes) == {201, 503}
        # faulted requests have no side effects
        assert srv.stats()["resources_total"] == codes.count(201)
        srv.reset()
        assert run_503(srv) == codes  # deterministic for a seed


def test_fault_knobs_at_runtime(server: ServerHandle, fhir: httpx.Client) -> None:
    server.set_faults(fault_503_rate=1)
    response = fhir.get("Patient")
    assert_outcome(response, 503)
    server.set_faults(fault_503_rate=0, fault_429_every=1)
    assert fhir.get("Patient").status_code == 429
    server.clear_faults()
    assert fhir.get("Patient").status_code == 200


def test_max_bundle_entries_knob() -> None:
    with (
        start_fhir_server(MAX_TRANSACTION_ENTRIES=10, MAX_PAGE_SIZE=3) as srv,
        httpx.Client(base_url=srv.base_url, headers={"Content-Type": FHIR_JSON}) as client,
    ):
        entries = [put_entry(observation(f"m{i}"), cond_url("Observation", OBS_SYSTEM, f"m{i}")) for i in range(11)]
        outcome = assert_outcome(client.post("", json=bundle("batch", entries)), 413)
        assert outcome["issue"][0]["code"] == "too-costly"
        assert client.post("", json=bundle("transaction", entries[:10])).status_code == 200
        page = client.get("Observation", params={"_count": 100}).json()
        assert len(page["entry"]) == 3 and page["total"] == 10


def test_graceful_stop_and_startup_errors(tmp_path: Path) -> None:
    srv = start_fhir_server()
    started = time.monotonic()
    assert srv.stop() == 0  # SIGTERM -> exit code 0
    assert time.monotonic() - started < 5

    with pytest.raises(FhirServerError, match="ERR_SOCKET_BAD_PORT"):  # stderr is in the message
        start_fhir_server(PORT=-5)
    with pytest.raises(FhirServerError, match=f"make {INSTALL_TARGET}"):
        check_installed(tmp_path)
