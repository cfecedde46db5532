"""The server's clock read from its Date header (``fhir_adapter.fhir.server_clock``): the base a REST run records
for the next ``--since last`` is never later, on the server's clock, than the run's start."""

from __future__ import annotations

import datetime as dt
import email.utils

import pytest
from pytest_httpx import HTTPXMock

from fhir_adapter.fhir import FhirClient
from fhir_adapter.fhir.server_clock import DATE_STALENESS, ClockOffset, clock_warnings, described, since_base
from fhir_adapter.study.load import Study
from tests.fhir.fhir_testkit import BASE, FakeSleep

START = dt.datetime(2026, 11, 2, 8, 0, 0, 400000, tzinfo=dt.UTC)


def http_date(when: dt.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(dt.UTC), usegmt=True)


def offset(server_lag_s: float, sent: dt.datetime = START, rtt_s: float = 0.05) -> ClockOffset | None:
    """The offset one answer gives when the server's clock is ``server_lag_s`` behind (negative: ahead)."""
    received = sent + dt.timedelta(seconds=rtt_s)
    return ClockOffset.from_answer(http_date(sent + dt.timedelta(seconds=rtt_s / 2 - server_lag_s)),
                                   sent.timestamp(), received.timestamp())


def test_a_server_two_minutes_behind_moves_the_base_back_by_at_least_its_lag() -> None:
    base = since_base(START, offset(120))
    assert START - dt.timedelta(seconds=122) < base <= START - dt.timedelta(seconds=120)


@pytest.mark.parametrize("lag", [0, 0.3, -0.5, -300])
def test_a_server_in_step_within_the_headers_second_or_ahead_keeps_this_machines_start(lag: float) -> None:
    assert since_base(START, offset(lag)) == START


def test_from_a_lag_of_three_seconds_the_base_is_never_later_on_the_servers_clock_than_the_start() -> None:
    """Beyond the header's precision (one second, and a Date a server cached for up to DATE_STALENESS)."""
    for lag_ms in range(int((1 + DATE_STALENESS) * 1000) + 100, 400_000, 997):
        lag = dt.timedelta(milliseconds=lag_ms)
        assert START - lag - dt.timedelta(seconds=1.1) < since_base(START, offset(lag_ms / 1000)) <= START - lag


def test_the_bounds_hold_the_true_offset_whatever_the_rounding() -> None:
    for lag_ms in range(0, 3000, 37):
        found = offset(lag_ms / 1000)
        assert found is not None and found.low <= -lag_ms / 1000 < found.high


@pytest.mark.parametrize("header", [None, "", "yesterday", "Mon, 99 Foo 2026 25:61:00 GMT"])
def test_no_usable_date_header_keeps_this_machines_start(header: str | None) -> None:
    found = ClockOffset.from_answer(header, START.timestamp(), START.timestamp())
    assert found is None and since_base(START, found) == START


def test_answers_at_other_points_of_the_second_narrow_the_bounds_to_the_round_trip() -> None:
    lag = 120.3
    found = offset(lag)
    assert found is not None
    for ms in range(0, 1000, 50):
        found = found.narrowed(offset(lag, sent=START + dt.timedelta(seconds=3, milliseconds=ms)))
    assert found.low <= -lag < found.high and found.high - found.low <= DATE_STALENESS + 0.1
    assert START - dt.timedelta(seconds=lag + 0.1) <= since_base(START, found) <= START - dt.timedelta(seconds=lag)


@pytest.mark.parametrize("first_lag", [-600, 3600], ids=["a-clock-ahead-first", "an-hour-old-answer-first"])
def test_answers_that_disagree_move_the_base_back_by_the_most_any_allows(first_lag: float) -> None:
    """A proxy or a cache answering with another clock, then the server itself two minutes behind: the bounds
    no longer say which clock stamps the records, so the base is moved back as far as any answer allows — never
    later, on the server's clock, than the run's start — and the run report says why."""
    found = offset(first_lag)
    assert found is not None
    for ms in range(0, 1000, 250):
        found = found.narrowed(offset(120, sent=START + dt.timedelta(seconds=2, milliseconds=ms)))
    assert found.disagree
    base = since_base(START, found)
    assert base <= START - dt.timedelta(seconds=max(120, first_lag))
    said = clock_warnings(found)
    assert list(said) == ["disagree"]
    assert said["disagree"].startswith("the Date headers of the server's answers disagree by up to")
    assert described(found).startswith("the Date headers of the server's answers disagree")


def test_a_clock_within_the_headers_precision_keeps_this_machines_start() -> None:
    """A lag of a second or two is within what a cached Date header says (a busy server formats it late): not
    corrected, not warned — the test servers and ordinary NTP drift are there (answers at every point of the
    second narrow the bounds to that staleness)."""
    for lag in (0.2, 1.5, 1.9):
        found = offset(lag)
        assert found is not None
        for ms in range(0, 1000, 100):
            found = found.narrowed(offset(lag, sent=START + dt.timedelta(milliseconds=ms)))
        assert not found.disagree and clock_warnings(found) == {} and since_base(START, found) == START
        assert described(found).startswith("in step with this machine's")


async def test_the_client_reads_the_clock_from_the_servers_own_answers_only(httpx_mock: HTTPXMock,
                                                                           fake_sleep: FakeSleep) -> None:
    """A gateway's 503 and an answer a cache kept (an Age header) carry other clocks: not read."""
    now = dt.datetime.now(dt.UTC)
    httpx_mock.add_response(url=f"{BASE}/Patient/p-1", status_code=503,
                            headers={"Date": http_date(now + dt.timedelta(minutes=10))})
    httpx_mock.add_response(url=f"{BASE}/Patient/p-1", json={"resourceType": "Patient", "id": "p-1"},
                            headers={"Date": http_date(now - dt.timedelta(hours=1)), "Age": "3600"})
    httpx_mock.add_response(url=f"{BASE}/Patient/p-2", json={"resourceType": "Patient", "id": "p-2"},
                            headers={"Date": http_date(now - dt.timedelta(minutes=2))})
    async with FhirClient(BASE, sleep=fake_sleep) as client:
        await client.read("Patient", "p-1")
        assert client.clock_offset is None
        await client.read("Patient", "p-2")
    assert client.clock_offset is not None and not client.clock_offset.disagree
    assert -122 < client.clock_offset.low < client.clock_offset.high < -117


async def test_the_client_narrows_the_offset_with_each_answer(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    now = dt.datetime.now(dt.UTC)
    for i in range(3):
        httpx_mock.add_response(url=f"{BASE}/Patient/p-{i}", json={"resourceType": "Patient", "id": f"p-{i}"},
                                headers={"Date": http_date(now - dt.timedelta(minutes=10))})
    async with FhirClient(BASE, sleep=fake_sleep) as client:
        assert client.clock_offset is None
        await client.read("Patient", "p-0")
        first = client.clock_offset
        await client.read("Patient", "p-1")
        await client.read("Patient", "p-2")
    assert first is not None and client.clock_offset is not None and client.clock_offset.server_behind
    assert first.low <= client.clock_offset.low < client.clock_offset.high <= first.high
    assert -602 < client.clock_offset.low < client.clock_offset.high < -596


def test_answers_that_disagree_while_the_subjects_are_read_are_in_the_run_report(study: Study) -> None:
    """One answer from a balancer node whose clock is 15 minutes behind, met while the subjects are read (not
    during the roster): the base of the next --since last is moved back by it, and the run report says so."""
    import email.utils
    import time

    import httpx

    from fhir_adapter.job.runlog import RunLog
    from fhir_adapter.source.server.source import ServerSource

    observations = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        now = time.time()
        if "Observation" in request.url.path:
            observations[0] += 1
            now -= 900 if observations[0] == 1 else 0
        body: dict[str, object] = ({"resourceType": "CapabilityStatement", "status": "active"}
                                   if request.url.path.endswith("/metadata")
                                   else {"resourceType": "Bundle", "type": "searchset", "entry": []})
        return httpx.Response(200, headers={"Date": email.utils.formatdate(now, usegmt=True)}, json=body)

    log = RunLog()
    source = ServerSource(FhirClient(BASE, transport=httpx.MockTransport(handler)), study, log)
    try:
        source.roster()
        assert [w for w in log.warnings if w.get("rule") == "server-clock"] == []
        assert [pid for pid, _ in source.subject_resources({"p1", "p2", "p3"})] == ["p1", "p2", "p3"]
    finally:
        source.close()
    [said] = [w for w in log.warnings if w.get("rule") == "server-clock"]
    assert said["message"].startswith("the Date headers of the server's answers disagree by up to 90")
    started = dt.datetime.now(dt.UTC)
    assert since_base(started, source.read_clock) <= started - dt.timedelta(seconds=900)
