"""FhirClient verbs: read, search paging by next links, batch/transaction, capabilities, stats, errors."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

import fhir_adapter
from fhir_adapter.fhir import (
    ClientSettings,
    FhirClient,
    FhirHttpError,
    FhirPagingError,
    FhirResponseError,
)
from tests.fhir.fhir_testkit import BASE, FakeSleep, bundle, json_of, patients


def client(fake_sleep: FakeSleep, **settings: object) -> FhirClient:
    return FhirClient(BASE, settings=ClientSettings(**settings), sleep=fake_sleep)


async def test_read_sends_fhir_headers(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=f"{BASE}/Patient/p-1", json={"resourceType": "Patient", "id": "p-1"})
    async with client(fake_sleep) as c:
        assert await c.read("Patient", "p-1") == {"resourceType": "Patient", "id": "p-1"}
    request = httpx_mock.get_request()
    assert request is not None
    assert request.headers["Accept"] == "application/fhir+json"
    assert request.headers["User-Agent"] == f"fhir-adapter/{fhir_adapter.__version__}"


@pytest.mark.parametrize("bad_id", ["../Observation/1", "a b", "", "x" * 65, "1?_format=xml"])
async def test_read_rejects_ids_that_are_not_fhir_ids(fake_sleep: FakeSleep, bad_id: str) -> None:
    async with client(fake_sleep) as c:
        with pytest.raises(ValueError, match="not a FHIR resource id"):
            await c.read("Patient", bad_id)


async def test_capabilities(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    cs = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}
    httpx_mock.add_response(url=f"{BASE}/metadata", json=cs)
    async with client(fake_sleep) as c:
        assert await c.capabilities() == cs


async def test_search_follows_next_links_until_the_last_page(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    page2 = f"{BASE}?_getpages=abc&_getpagesoffset=2&_count=2"
    page3 = "?_getpages=abc&_getpagesoffset=4&_count=2"  # relative: resolved against the base, path included
    httpx_mock.add_response(url=f"{BASE}/Patient?gender=female&_count=2", json=bundle(patients("a", "b"), page2))
    httpx_mock.add_response(url=page2, json=bundle(patients("c", "d"), page3))
    httpx_mock.add_response(url=f"{BASE}/{page3}", json=bundle(patients("e")))
    async with client(fake_sleep, page_size=2) as c:
        ids = [r["id"] async for r in c.search("Patient", {"gender": "female"}, label="S-001")]
        assert c.stats.label("S-001").requests == 3
        assert c.stats.label("S-001").bytes_received > 0
    assert ids == ["a", "b", "c", "d", "e"]


async def test_search_bundles_yields_pages_and_keeps_callers_count(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep
) -> None:
    httpx_mock.add_response(url=f"{BASE}/Patient?_count=7", json=bundle(patients("a"), f"{BASE}/Patient?page=2"))
    httpx_mock.add_response(url=f"{BASE}/Patient?page=2", json=bundle(patients("b")))
    async with client(fake_sleep, page_size=100) as c:
        pages = [p async for p in c.search_bundles("Patient", {"_count": 7})]
    assert [p["entry"][0]["resource"]["id"] for p in pages] == ["a", "b"]


async def test_search_all_with_repeated_parameters(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(json=bundle(patients("a")), is_reusable=True)
    async with client(fake_sleep, page_size=None) as c:
        await c.search_all("Observation", [("date", "ge2024-01-01"), ("date", "lt2024-02-01"), ("patient", "a")])
        await c.search_all("Observation", {"code": ["1", "2"], "_summary": "count", "_total": False})
    first, second = httpx_mock.get_requests()
    assert first.url.params.get_list("date") == ["ge2024-01-01", "lt2024-02-01"]
    assert second.url.params.get_list("code") == ["1", "2"]
    assert second.url.params["_total"] == "false"


async def test_search_stops_on_a_next_link_loop(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    page2 = f"{BASE}/Patient?page=2"
    httpx_mock.add_response(url=f"{BASE}/Patient?_count=1000", json=bundle(patients("a"), page2))
    httpx_mock.add_response(url=page2, json=bundle(patients("b"), page2))  # next points to itself
    seen: list[str] = []
    async with client(fake_sleep) as c:
        with pytest.raises(FhirPagingError, match="paging loop") as info:
            async for resource in c.search("Patient"):
                seen.append(resource["id"])
    assert seen == ["a", "b"]
    assert "page 2" in str(info.value) and page2 in str(info.value)
    assert len(httpx_mock.get_requests()) == 2


async def test_search_detects_a_loop_back_to_the_first_page(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    first = f"{BASE}/Patient?_count=1000"
    httpx_mock.add_response(url=first, json=bundle(patients("a"), f"{BASE}/Patient?page=2"))
    httpx_mock.add_response(url=f"{BASE}/Patient?page=2", json=bundle(patients("b"), first))
    async with client(fake_sleep) as c:
        with pytest.raises(FhirPagingError, match="repeats page 1"):
            await c.search_all("Patient")


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example.com/r4/Patient?page=2",
        "http://fhir.example.org/r4/Patient?page=2",  # downgrade to plain http
        "https://fhir.example.org:8443/r4/Patient?page=2",
        "//evil.example.com/r4/Patient?page=2",
    ],
)
async def test_search_refuses_next_link_to_another_host(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep, next_url: str
) -> None:
    httpx_mock.add_response(url=f"{BASE}/Patient?_count=1000", json=bundle(patients("a"), next_url))
    async with client(fake_sleep) as c:
        with pytest.raises(FhirPagingError, match="refusing to follow the next link") as info:
            await c.search_all("Patient")
    assert "not on the FHIR server" in str(info.value)
    assert len(httpx_mock.get_requests()) == 1  # nothing was sent to the other host


async def test_search_skips_outcome_entries_and_logs_them(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    page = bundle(patients("a"))
    page["entry"].append(
        {
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "warning", "code": "processing", "diagnostics": "_sort ignored"}],
            },
            "search": {"mode": "outcome"},
        }
    )
    httpx_mock.add_response(json=page)
    with caplog.at_level(logging.WARNING, logger="fhir_adapter.fhir"):
        async with client(fake_sleep) as c:
            assert [r["id"] for r in await c.search_all("Patient")] == ["a"]
    assert "_sort ignored" in caplog.text


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b'{"resourceType": "Patient", "id": ', "application/fhir+json", "not valid JSON"),
        (b"<html><body>Login</body></html>", "text/html", "not valid JSON"),
        (b"[1, 2]", "application/json", "not a FHIR resource"),
        (b"", "application/fhir+json", "empty body"),
    ],
)
async def test_malformed_body_raises_response_error_naming_the_url(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep, body: bytes, content_type: str, reason: str
) -> None:
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", content=body, headers={"Content-Type": content_type})
    async with client(fake_sleep) as c:
        with pytest.raises(FhirResponseError) as info:
            await c.read("Patient", "p1")
    assert f"{BASE}/Patient/p1" in str(info.value) and reason in str(info.value)
    assert len(httpx_mock.get_requests()) == 1  # not retried


async def test_malformed_page_in_search_raises(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=f"{BASE}/Patient?_count=1000", json=bundle(patients("a"), f"{BASE}/Patient?p=2"))
    httpx_mock.add_response(url=f"{BASE}/Patient?p=2", content=b"{truncated")
    async with client(fake_sleep) as c:
        with pytest.raises(FhirResponseError, match=r"Patient\?p=2"):
            await c.search_all("Patient")


async def test_transaction_posts_fhir_json_to_the_base(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Observation", "status": "final", "note": [{"text": "ü"}]},
                "request": {"method": "PUT", "url": "Observation?identifier=urn:x|1"},
            }
        ],
    }
    response = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": "201"}}],
    }
    httpx_mock.add_response(url=BASE, method="POST", json=response)
    async with client(fake_sleep) as c:
        assert await c.transaction(tx, label="S-002") == response
        sent = c.stats.label("S-002").bytes_sent
    request = httpx_mock.get_request()
    assert request is not None
    assert sent == len(request.content) > 0
    assert "ü".encode() in request.content  # UTF-8, not \u escapes
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert request.headers["Accept"] == "application/fhir+json"
    assert json_of(request) == tx


async def test_batch_and_transaction_validate_the_bundle(fake_sleep: FakeSleep) -> None:
    entries = [{"request": {"method": "GET", "url": f"Patient/{i}"}} for i in range(3)]
    async with client(fake_sleep, max_transaction_entries=2) as c:
        with pytest.raises(ValueError, match="type 'transaction'"):
            await c.transaction({"resourceType": "Bundle", "type": "batch", "entry": []})
        with pytest.raises(ValueError, match="split_transaction"):
            await c.batch({"resourceType": "Bundle", "type": "batch", "entry": entries})


async def test_transaction_response_must_be_a_bundle(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=BASE, method="POST", json={"resourceType": "OperationOutcome", "issue": []})
    async with client(fake_sleep) as c:
        with pytest.raises(FhirResponseError, match="transaction-response"):
            await c.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})


async def test_stats_per_label_and_total(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=f"{BASE}/Patient/a", json={"resourceType": "Patient", "id": "a"})
    httpx_mock.add_response(url=f"{BASE}/Patient/b", status_code=503, headers={"Retry-After": "0"})
    httpx_mock.add_response(url=f"{BASE}/Patient/b", json={"resourceType": "Patient", "id": "b"})
    async with client(fake_sleep) as c:
        await c.read("Patient", "a", label="S-001")
        await c.read("Patient", "b", label="S-002")
        report: dict[str, Any] = c.stats.as_dict()
    assert report["total"]["requests"] == 3
    assert report["total"]["retries"] == 1
    assert report["by_label"]["S-001"]["requests"] == 1
    assert report["by_label"]["S-002"] == {
        "requests": 2,
        "retries": 1,
        "auth_requests": 0,
        "failures": 0,
        "bytes_sent": 0,
        "bytes_received": report["by_label"]["S-002"]["bytes_received"],
    }


async def test_concurrency_never_exceeds_the_bound() -> None:
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return httpx.Response(200, json={"resourceType": "Patient", "id": request.url.path.rsplit("/", 1)[-1]})

    transport = httpx.MockTransport(handler)
    async with FhirClient(BASE, settings=ClientSettings(max_concurrency=3), transport=transport) as c:
        results = await asyncio.gather(*(c.read("Patient", f"p{i}") for i in range(25)))
        assert c.stats.requests == 25
    assert [r["id"] for r in results] == [f"p{i}" for i in range(25)]
    assert peak == 3  # the bound is reached (requests do run concurrently) but never exceeded


async def test_concurrency_bound_also_holds_for_concurrent_searches() -> None:
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002)
        in_flight -= 1
        page = int(request.url.params.get("page", "1"))
        nxt = f"{BASE}/Observation?patient={request.url.params['patient']}&page={page + 1}" if page < 3 else None
        return httpx.Response(200, json=bundle([{"resourceType": "Observation", "id": str(page)}], nxt))

    async with FhirClient(
        BASE, settings=ClientSettings(max_concurrency=2), transport=httpx.MockTransport(handler)
    ) as c:
        pages = await asyncio.gather(*(c.search_all("Observation", {"patient": str(i)}) for i in range(8)))
    assert all(len(p) == 3 for p in pages)
    assert peak == 2


def test_settings_defaults() -> None:
    s = ClientSettings()
    assert s.max_concurrency == 4
    assert s.verify is True and s.http2 is False
    assert s.user_agent == f"fhir-adapter/{fhir_adapter.__version__}"
    with pytest.raises(ValueError, match="CA bundle"):
        ClientSettings(verify="/nonexistent/ca.pem")


async def test_http2_without_h2_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, httpx_mock: HTTPXMock
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "h2" else real_find_spec(name, *a)
    )
    httpx_mock.add_response(json={"resourceType": "CapabilityStatement"})
    with caplog.at_level(logging.WARNING):
        async with FhirClient(BASE, settings=ClientSettings(http2=True)) as c:
            await c.capabilities()
    assert "h2" in caplog.text


def test_base_url_must_be_absolute_http() -> None:
    with pytest.raises(ValueError, match="absolute http"):
        FhirClient("fhir.example.org/r4")
    with pytest.raises(ValueError, match="query"):
        FhirClient(f"{BASE}?_format=json")
    assert str(FhirClient(f"{BASE}/").base_url) == BASE


async def test_redirects_are_not_followed(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(
        url=f"{BASE}/Patient/p1", status_code=301, headers={"Location": "https://other.example.org/Patient/p1"}
    )
    async with client(fake_sleep) as c:
        with pytest.raises(
            FhirHttpError, match=re.escape("redirect to https://other.example.org/Patient/p1 not followed")
        ):
            await c.read("Patient", "p1")
    assert len(httpx_mock.get_requests()) == 1


async def test_long_search_goes_as_post_search_and_pages_by_get(httpx_mock: HTTPXMock) -> None:
    from urllib.parse import parse_qs

    from fhir_adapter.fhir import ClientSettings, FhirClient

    base = "http://ehr.test/fhir"
    codes = ",".join(f"http://loinc.org|{n}-{n % 9}" for n in range(1000, 1200))  # ~4 KB of codes
    page2 = f"{base}/Observation?_getpages=abc&_offset=1"
    httpx_mock.add_response(method="POST", url=f"{base}/Observation/_search", json={
        "resourceType": "Bundle", "type": "searchset",
        "entry": [{"resource": {"resourceType": "Observation", "id": "1"}}],
        "link": [{"relation": "next", "url": page2}]})
    httpx_mock.add_response(method="GET", url=page2, json={
        "resourceType": "Bundle", "type": "searchset",
        "entry": [{"resource": {"resourceType": "Observation", "id": "2"}}]})
    async with FhirClient(base, settings=ClientSettings(max_get_url_length=1024)) as client:
        got = await client.search_all("Observation", {"patient": "Patient/p1", "code": codes}, label="101-001")
    assert [r["id"] for r in got] == ["1", "2"]
    post = httpx_mock.get_requests(method="POST")[0]
    assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = parse_qs(post.content.decode())
    assert form["code"] == [codes] and form["patient"] == ["Patient/p1"] and form["_count"] == ["1000"]
    assert client.stats.by_label["101-001"].requests == 2


async def test_short_search_stays_get(httpx_mock: HTTPXMock) -> None:
    from fhir_adapter.fhir import FhirClient

    httpx_mock.add_response(method="GET", json={"resourceType": "Bundle", "type": "searchset"})
    async with FhirClient("http://ehr.test/fhir") as client:
        assert await client.search_all("Observation", {"patient": "Patient/p1"}) == []
    assert not httpx_mock.get_requests(method="POST")


async def test_a_search_answered_414_is_sent_again_as_post_search(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    """A proxy or server capping URLs below client.max_get_url_length answers the GET 414 URI Too Long: the search
    goes again as POST [type]/_search with the same parameters as a form body, and its answer is the search's."""
    codes = ",".join(f"http://loinc.org|{n}-1" for n in range(40))
    httpx_mock.add_response(method="GET", status_code=414, json={"resourceType": "OperationOutcome", "issue": []})
    httpx_mock.add_response(method="POST", url=f"{BASE}/Observation/_search",
                            json=bundle([{"resourceType": "Observation", "id": "o1"}]))
    async with client(fake_sleep) as c:
        found = [r async for r in c.search("Observation", {"patient": "Patient/p1", "code": codes})]
    assert found == [{"resourceType": "Observation", "id": "o1"}]
    get, post = httpx_mock.get_requests()
    assert (get.method, post.method) == ("GET", "POST")
    assert httpx.QueryParams(post.content.decode()) == get.url.params
    assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert c.stats.total.failures == 0  # answered by the POST: no failure of the search
