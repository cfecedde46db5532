"""HTTP edge cases a real server will not produce on demand: DNS and TLS failures, connection refused,
answers that trickle or are too large, throttling that lowers the requests in flight, a server that is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from pytest_httpx import HTTPXMock

from fhir_adapter.fhir import ClientSettings, FhirClient, FhirHttpError, FhirTransportError
from fhir_adapter.fhir.errors import FhirServerUnavailable
from tests.fhir.fhir_testkit import BASE, FakeSleep, bundle

PATIENT = {"resourceType": "Patient", "id": "p1"}
URL = f"{BASE}/Patient/p1"


def client(sleep: FakeSleep, transport: httpx.AsyncBaseTransport | None = None, **settings: object) -> FhirClient:
    return FhirClient(BASE, settings=ClientSettings(**settings), sleep=sleep,
                      transport=transport)


async def test_a_host_name_that_does_not_resolve_is_not_retried_and_says_what_to_check(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    httpx_mock.add_exception(httpx.ConnectError("[Errno -2] Name or service not known"), url=URL)
    async with client(fake_sleep) as c:
        with pytest.raises(FhirTransportError) as info:
            await c.read("Patient", "p1")
    assert fake_sleep.delays == [] and len(httpx_mock.get_requests()) == 1
    message = str(info.value)
    assert info.value.kind == "dns"
    assert URL in message and "'fhir.example.org' does not resolve" in message
    assert "--source" in message and "HTTPS_PROXY" in message


async def test_connection_refused_names_the_url_the_route_and_what_to_check(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.hospital.example:3128")
    for _ in range(3):
        httpx_mock.add_exception(httpx.ConnectError("All connection attempts failed"), url=URL)
    async with client(fake_sleep, max_attempts=3) as c:
        with pytest.raises(FhirTransportError) as info:
            await c.read("Patient", "p1")
    message = str(info.value)
    assert "\n" not in message
    assert info.value.kind == "refused" and info.value.attempts == 3
    assert "nothing accepts connections at fhir.example.org:443" in message
    assert "proxy.hospital.example:3128" in message and "secret" not in message
    assert "gave up after 3 attempts" in message and "--source" in message


async def test_an_untrusted_tls_certificate_is_not_retried_and_points_at_the_ca_bundle(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep
) -> None:
    httpx_mock.add_exception(httpx.ConnectError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate"), url=URL)
    async with client(fake_sleep) as c:
        with pytest.raises(FhirTransportError) as info:
            await c.read("Patient", "p1")
    assert fake_sleep.delays == []
    assert info.value.kind == "tls" and "FHIR_ADAPTER_CA_BUNDLE" in str(info.value)


async def test_a_read_timeout_is_retried_like_a_503(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"), url=URL)
    httpx_mock.add_response(url=URL, status_code=503)
    httpx_mock.add_response(url=URL, json=PATIENT)
    async with client(fake_sleep) as c:
        assert await c.read("Patient", "p1") == PATIENT
        assert c.stats.retries == 2


class Trickle(httpx.AsyncByteStream):
    """A body sent a few bytes at a time, slowly (each chunk well within any read timeout)."""

    def __init__(self, chunks: int, pause: float) -> None:
        self.chunks = chunks
        self.pause = pause

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"resourceType":"Bundle","type":"searchset","entry":['
        for n in range(self.chunks):
            await asyncio.sleep(self.pause)
            yield (b"," if n else b"") + b'{"resource":{"resourceType":"Patient","id":"p%d"}}' % n
        yield b"]}"


async def test_a_server_trickling_a_huge_page_is_cut_off_at_max_response_seconds(fake_sleep: FakeSleep) -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:  # 10 000 chunks at 10 ms: 100 s in all, never silent long enough for read_timeout
            return httpx.Response(200, stream=Trickle(10_000, 0.01))
        return httpx.Response(200, json=bundle([PATIENT]))

    async with client(fake_sleep, httpx.MockTransport(handler), max_response_seconds=0.3, read_timeout=5) as c:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await c.search_all("Patient") == [PATIENT]
        assert loop.time() - started < 5
        assert c.stats.retries == 1


async def test_an_answer_larger_than_max_response_bytes_is_refused(fake_sleep: FakeSleep) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Trickle(1000, 0))

    async with client(fake_sleep, httpx.MockTransport(handler), max_response_bytes=4096) as c:
        with pytest.raises(FhirTransportError) as info:
            await c.search_all("Patient")
    assert info.value.kind == "too-large" and "page_size" in str(info.value)
    assert fake_sleep.delays == []


async def test_429_lowers_the_requests_in_flight_and_recovery_raises_them_again() -> None:
    in_flight = 0
    seen: list[int] = []
    throttle = 6  # the first answers are 429

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, throttle
        in_flight += 1
        seen.append(in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        if throttle > 0:
            throttle -= 1
            return httpx.Response(429, headers={"Retry-After": "0"})
        return httpx.Response(200, json=PATIENT)

    async def no_wait(seconds: float) -> None:
        await asyncio.sleep(0)

    async with FhirClient(BASE, settings=ClientSettings(max_concurrency=8), transport=httpx.MockTransport(handler),
                          sleep=no_wait) as c:
        await asyncio.gather(*(c.read("Patient", "p1") for _ in range(8)))
        assert c.limit.lowest < 8  # throttled: fewer requests in flight
        lowered = c.limit.limit
        await asyncio.gather(*(c.read("Patient", "p1") for _ in range(200)))
        assert c.limit.limit == 8 > lowered  # the server kept up: back to the maximum
    assert max(seen) <= 8


async def test_after_consecutive_failures_across_subjects_the_client_stops_sending(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep
) -> None:
    httpx_mock.add_exception(httpx.ConnectError("[Errno 111] Connection refused"), url=URL, is_reusable=True)
    async with client(fake_sleep, max_attempts=2, circuit_breaker_failures=3, circuit_breaker_subjects=2) as c:
        for label in ("S-001", "S-001", "S-002"):
            with pytest.raises(FhirTransportError):
                await c.read("Patient", "p1", label=label)
        sent = len(httpx_mock.get_requests())
        with pytest.raises(FhirServerUnavailable) as info:
            await c.read("Patient", "p1", label="S-003")
        assert len(httpx_mock.get_requests()) == sent  # nothing more was sent
    assert "server unavailable since" in str(info.value) and "Connection refused" in str(info.value)


async def test_an_answer_between_failures_keeps_the_breaker_closed(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep
) -> None:
    for _ in range(2):
        httpx_mock.add_response(url=URL, status_code=503)
        httpx_mock.add_response(url=URL, status_code=503)
        httpx_mock.add_response(url=URL, status_code=404)
    httpx_mock.add_response(url=URL, json=PATIENT)
    async with client(fake_sleep, max_attempts=2, circuit_breaker_failures=2, circuit_breaker_subjects=1) as c:
        for label in ("S-001", "S-002", "S-003", "S-004"):
            with pytest.raises(FhirHttpError):
                await c.read("Patient", "p1", label=label)
        assert not c.breaker.is_open
        assert await c.read("Patient", "p1") == PATIENT
