"""Retry policy at the HTTP edge: Retry-After, backoff, bounds, what is (not) retried."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from pytest_httpx import HTTPXMock

from fhir_adapter.fhir import (
    ClientSettings,
    FhirAuthError,
    FhirClient,
    FhirHttpError,
    FhirTransportError,
    parse_retry_after,
)
from fhir_adapter.fhir.bundles import replay_safe
from tests.fhir.fhir_testkit import BASE, FakeClock, FakeSleep, outcome

PATIENT = {"resourceType": "Patient", "id": "p1"}
URL = f"{BASE}/Patient/p1"


def client(sleep: FakeSleep, **settings: object) -> FhirClient:
    return FhirClient(BASE, settings=ClientSettings(**settings), sleep=sleep)


async def test_429_retry_after_seconds_then_200(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=URL, status_code=429, headers={"Retry-After": "7"})
    httpx_mock.add_response(url=URL, json=PATIENT)
    async with client(fake_sleep) as c:
        assert await c.read("Patient", "p1") == PATIENT
        assert c.stats.requests == 2
        assert c.stats.retries == 1
    assert fake_sleep.delays == [7.0]


async def test_429_retry_after_http_date(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    clock = FakeClock(now=datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp())
    when = datetime(2025, 3, 1, 12, 0, 42, tzinfo=UTC)
    httpx_mock.add_response(url=URL, status_code=429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    httpx_mock.add_response(url=URL, json=PATIENT)
    async with FhirClient(BASE, sleep=fake_sleep, clock=clock) as c:
        assert await c.read("Patient", "p1") == PATIENT
    assert fake_sleep.delays == [42.0]


async def test_retry_after_is_capped(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=URL, status_code=503, headers={"Retry-After": "3600"})
    httpx_mock.add_response(url=URL, json=PATIENT)
    async with client(fake_sleep, max_retry_after_seconds=10) as c:
        await c.read("Patient", "p1")
    assert fake_sleep.delays == [10.0]


async def test_503_burst_then_success(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    for _ in range(3):
        httpx_mock.add_response(url=URL, status_code=503, headers={"Retry-After": "1"})
    httpx_mock.add_response(url=URL, json=PATIENT)
    async with client(fake_sleep) as c:
        assert await c.read("Patient", "p1", label="S-001") == PATIENT
        assert c.stats.label("S-001").requests == 4
        assert c.stats.label("S-001").retries == 3
    assert fake_sleep.delays == [1.0, 1.0, 1.0]


async def test_503_beyond_max_attempts_raises(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    for _ in range(3):
        httpx_mock.add_response(url=URL, status_code=503, json=outcome("server is overloaded"))
    async with client(fake_sleep, max_attempts=3) as c:
        with pytest.raises(FhirHttpError) as info:
            await c.read("Patient", "p1", label="S-001")
        assert c.stats.label("S-001").failures == 1
    assert info.value.status == 503
    assert info.value.attempts == 3
    assert "gave up after 3 attempts" in str(info.value)
    assert "server is overloaded" in str(info.value)
    assert len(httpx_mock.get_requests()) == 3
    assert len(fake_sleep.delays) == 2


async def test_max_total_seconds_stops_before_a_wait_that_would_exceed_it(httpx_mock: HTTPXMock) -> None:
    for _ in range(2):
        httpx_mock.add_response(url=URL, status_code=429, headers={"Retry-After": "1"})
    # really waits: the budget is measured on the clock (1 s waited, a second 1-s wait would end after 1.5 s)
    async with FhirClient(BASE, settings=ClientSettings(max_attempts=10, max_total_seconds=1.5)) as c:
        with pytest.raises(FhirHttpError) as info:
            await c.read("Patient", "p1")
    assert len(httpx_mock.get_requests()) == 2
    assert info.value.attempts == 2
    # the 1-s wait really waited: "over 1 s" (or 2, rounded, on a machine too busy to wake the test on time)
    assert re.search(r"gave up after 2 attempts over [12] s", str(info.value)), str(info.value)


async def test_500_backs_off_exponentially_with_full_jitter(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    for status in (500, 502, 504, 500):
        httpx_mock.add_response(url=URL, status_code=status)
    httpx_mock.add_response(url=URL, json=PATIENT)
    settings = {"backoff_initial_seconds": 1.0, "backoff_jitter_seconds": 0.5, "backoff_max_seconds": 100.0}
    async with client(fake_sleep, **settings) as c:
        assert await c.read("Patient", "p1") == PATIENT
    delays = fake_sleep.delays
    assert len(delays) == 4
    for n, delay in enumerate(delays, start=1):  # uniform(0, 2**(n-1)) + uniform(0, 0.5)
        assert 0 <= delay <= 2 ** (n - 1) + 0.5
    assert len(set(delays)) == 4  # random: no two clients retry in lock-step


async def test_backoff_window_grows_then_is_capped(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    for _ in range(40):
        httpx_mock.add_response(url=URL, status_code=500)
    async with client(fake_sleep, backoff_initial_seconds=10, backoff_max_seconds=15, backoff_jitter_seconds=0,
                      max_attempts=40, max_total_seconds=10_000) as c:
        with pytest.raises(FhirHttpError):
            await c.read("Patient", "p1")
    assert all(0 <= d <= 15.0 for d in fake_sleep.delays)
    assert max(fake_sleep.delays[1:]) > 10.0  # the window went past the initial 10 s (p of not: 0.67**38)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.ReadError("connection reset by peer"),
    ],
)
async def test_dropped_connection_is_retried(httpx_mock: HTTPXMock, fake_sleep: FakeSleep, exc: Exception) -> None:
    httpx_mock.add_exception(exc, url=URL)
    httpx_mock.add_response(url=URL, json=PATIENT)
    async with client(fake_sleep) as c:
        assert await c.read("Patient", "p1") == PATIENT
        assert c.stats.retries == 1
    assert len(fake_sleep.delays) == 1


async def test_connection_errors_beyond_max_attempts_raise_transport_error(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep
) -> None:
    for _ in range(2):
        httpx_mock.add_exception(httpx.ConnectError("[Errno 111] Connection refused"), url=URL)
    async with client(fake_sleep, max_attempts=2) as c:
        with pytest.raises(FhirTransportError) as info:
            await c.read("Patient", "p1")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert URL in str(info.value) and "Connection refused" in str(info.value)
    assert info.value.attempts == 2


async def test_408_is_retried(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=URL, status_code=408)
    httpx_mock.add_response(url=URL, json=PATIENT)
    async with client(fake_sleep) as c:
        assert await c.read("Patient", "p1") == PATIENT


@pytest.mark.parametrize(
    ("status", "diagnostics", "text"),
    [
        (400, "Unknown search parameter 'foo' for resource type 'Patient'", None),
        (404, "Resource Patient/p1 is not known", "Resource not found"),
        (422, "Patient.birthDate: invalid date '2020-13-01'", "Unprocessable entity"),
        (403, "Insufficient scope: system/Patient.rs required", None),
        (410, "Resource was deleted at 2024-01-01", None),
    ],
)
async def test_client_errors_are_not_retried_and_name_the_diagnostics(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep, status: int, diagnostics: str, text: str | None
) -> None:
    httpx_mock.add_response(url=URL, status_code=status, json=outcome(diagnostics, text=text))
    async with client(fake_sleep) as c:
        with pytest.raises(FhirHttpError) as info:
            await c.read("Patient", "p1")
        assert c.stats.requests == 1
    message = str(info.value)
    assert info.value.status == status
    assert diagnostics in message
    if text is not None:
        assert text in message
    assert f"GET {URL}" in message and str(status) in message
    assert fake_sleep.delays == []
    assert len(httpx_mock.get_requests()) == 1


async def test_error_message_redacts_query_secrets(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(status_code=400, json=outcome("bad request"))
    async with client(fake_sleep, page_size=None) as c:
        with pytest.raises(FhirHttpError) as info:
            await c.search_all("Patient", {"name": "Doe", "access_token": "qs-SECRET-123"})
    assert "qs-SECRET-123" not in str(info.value)
    assert "access_token=REDACTED" in str(info.value) and "name=Doe" in str(info.value)


async def test_error_without_operation_outcome_quotes_the_body(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=URL, status_code=400, text="Bad request: id malformed")
    async with client(fake_sleep) as c:
        with pytest.raises(FhirHttpError, match="Bad request: id malformed"):
            await c.read("Patient", "p1")


async def test_401_without_auth_is_not_retried(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=URL, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="fhir"'})
    async with client(fake_sleep) as c:
        with pytest.raises(FhirAuthError, match="FHIR_ADAPTER_BEARER_TOKEN") as info:
            await c.read("Patient", "p1")
    assert URL in str(info.value) and 'realm="fhir"' in str(info.value)
    assert fake_sleep.delays == []


# ------------------------------------------------------------------------------------------ POST bundles

TX = {"resourceType": "Bundle", "type": "transaction", "entry": []}
TX_RESPONSE = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
#: a plain create: posted again after a commit whose answer was lost, it would create a second resource
PLAIN_CREATE = {"resource": {"resourceType": "Basic"}, "request": {"method": "POST", "url": "Basic"}}
UNSAFE_TX = {**TX, "entry": [PLAIN_CREATE]}
#: every entry conditional or idempotent, as the adapter's write-back transactions are
REPLAY_SAFE_TX = {**TX, "entry": [
    {"resource": {"resourceType": "Device"},
     "request": {"method": "POST", "url": "Device", "ifNoneExist": "identifier=s|d"}},
    {"resource": {"resourceType": "Observation", "id": "o1"},
     "request": {"method": "PUT", "url": "Observation/o1", "ifMatch": 'W/"3"'}},
    {"resource": {"resourceType": "Provenance"},
     "request": {"method": "POST", "url": "Provenance", "ifNoneExist": "_tag=s|k"}}]}


@pytest.mark.parametrize("status", [429, 503])
async def test_transaction_retried_on_429_503(httpx_mock: HTTPXMock, fake_sleep: FakeSleep, status: int) -> None:
    httpx_mock.add_response(url=BASE, method="POST", status_code=status, headers={"Retry-After": "2"})
    httpx_mock.add_response(url=BASE, method="POST", json=TX_RESPONSE)
    async with client(fake_sleep) as c:
        assert await c.transaction(TX) == TX_RESPONSE
    assert fake_sleep.delays == [2.0]


async def test_transaction_retried_when_connection_refused(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_exception(httpx.ConnectError("[Errno 111] Connection refused"), url=BASE, method="POST")
    httpx_mock.add_response(url=BASE, method="POST", json=TX_RESPONSE)
    async with client(fake_sleep) as c:
        assert await c.transaction(TX) == TX_RESPONSE


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_transaction_not_retried_on_5xx_that_may_have_committed(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep, status: int
) -> None:
    httpx_mock.add_response(url=BASE, method="POST", status_code=status, json=outcome("backend failure"))
    async with client(fake_sleep) as c:
        with pytest.raises(FhirHttpError, match="backend failure"):
            await c.transaction(UNSAFE_TX)
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize("failure", [httpx.ReadTimeout("read timed out"), httpx.RemoteProtocolError("disconnected"),
                                     500, 502, 504])
async def test_a_transaction_safe_to_replay_is_retried_like_a_read(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep, failure: Exception | int
) -> None:
    """Every entry a conditional create or an If-Match update: a lost answer (a response slower than the read
    timeout, a dropped connection) or a 5xx is retried like a 503 — a replay after a commit duplicates nothing."""
    if isinstance(failure, int):
        httpx_mock.add_response(url=BASE, method="POST", status_code=failure, json=outcome("backend failure"))
    else:
        httpx_mock.add_exception(failure, url=BASE, method="POST")
    httpx_mock.add_response(url=BASE, method="POST", json=TX_RESPONSE)
    async with client(fake_sleep) as c:
        assert await c.transaction(REPLAY_SAFE_TX) == TX_RESPONSE
        assert c.stats.retries == 1


def test_replay_safe_bundles() -> None:
    assert replay_safe(REPLAY_SAFE_TX) and replay_safe(TX)
    assert replay_safe({**TX, "entry": [{"request": {"method": "GET", "url": "Patient?_id=p1"}},
                                        {"request": {"method": "DELETE", "url": "Basic/b1"}}]})
    assert not replay_safe(UNSAFE_TX)
    assert not replay_safe({**TX, "entry": [{"request": {"method": "PATCH", "url": "Basic/b1"}}]})
    assert not replay_safe({**TX, "entry": [{"resource": {"resourceType": "Basic"}}]})  # no request at all


@pytest.mark.parametrize("exc", [httpx.RemoteProtocolError("Server disconnected"), httpx.ReadTimeout("read timed out")])
async def test_batch_not_retried_when_dropped_after_sending(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep, exc: Exception
) -> None:
    httpx_mock.add_exception(exc, url=BASE, method="POST")
    async with client(fake_sleep) as c:
        with pytest.raises(FhirTransportError):
            await c.batch({"resourceType": "Bundle", "type": "batch", "entry": [PLAIN_CREATE]})
    assert len(httpx_mock.get_requests()) == 1


# ------------------------------------------------------------------------------------------ Retry-After


def test_parse_retry_after() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after(None) is None
