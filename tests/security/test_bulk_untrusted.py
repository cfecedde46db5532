"""A Bulk Data server's answers are untrusted input (issue 11): the URLs they name cannot take the access token
over plain http or to another host, and a manifest's ``type`` cannot choose a file name. pytest-httpx plays
the hostile server; tests/integration/test_bulk_export.py runs a hostile manifest through a whole run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytest_httpx import HTTPXMock

from fhir_adapter.fhir import BearerToken, FhirClient, FhirError
from fhir_adapter.fhir.bulk import NOT_R4_TYPE, NOT_REQUESTED, BulkExporter, BulkExportError, BulkOptions, Job
from fhir_adapter.fhir.settings import BulkSettings
from tests.fhir.fhir_testkit import BASE, FakeClock, FakeSleep

TOKEN = "SECRET-bulk-token"
KICKOFF = f"{BASE}/Patient/$export?_type=Patient,Observation"
STATUS = f"{BASE}/$export-status/job-1"
LINE = b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}\n'


def manifest(*outputs: tuple[str, Any], token: bool | str = True) -> dict[str, Any]:
    return {"transactionTime": "2026-11-01T00:00:00Z", "request": KICKOFF, "requiresAccessToken": token,
            "output": [{"type": t, "url": u} for u, t in outputs], "error": []}


def exporter(base: str = BASE, *, auth: bool = True, token_hosts: frozenset[str] = frozenset()) -> BulkExporter:
    """An exporter whose site keeps the token on the FHIR server (``token_hosts: []``) unless told otherwise."""
    client = FhirClient(base, auth=BearerToken(TOKEN) if auth else None)
    return BulkExporter(client, BulkOptions(token_hosts=token_hosts), sleep=FakeSleep(), clock=FakeClock())


def sent_to(httpx_mock: HTTPXMock) -> list[str]:
    return [str(r.url) for r in httpx_mock.get_requests()]


# -- the access token and plain http ----------------------------------------------------------------------

async def test_a_plain_http_status_url_is_refused_before_the_token_goes_there(httpx_mock: HTTPXMock) -> None:
    evil = "http://files.example.net/$export-status/job-1"
    httpx_mock.add_response(url=KICKOFF, status_code=202, headers={"Content-Location": evil})
    with pytest.raises(BulkExportError, match=r"refusing to send credentials over plain http to "
                                              r"http://files.example.net/\$export-status/job-1 .*Content-Location.*"
                                              r"over https") as err:
        await exporter().kickoff(Job(kickoff=KICKOFF))
    assert sent_to(httpx_mock) == [KICKOFF] and TOKEN not in str(err.value)


async def test_a_resumed_job_with_a_plain_http_status_url_sends_nothing(httpx_mock: HTTPXMock) -> None:
    job = Job(kickoff=KICKOFF, status_url="http://10.1.2.3/$export-status/job-1")
    with pytest.raises(BulkExportError, match=r"plain http to http://10.1.2.3/"):
        await exporter().wait(job)
    with pytest.raises(BulkExportError, match=r"plain http to http://10.1.2.3/"):
        await exporter().delete(job)
    assert sent_to(httpx_mock) == []


@pytest.mark.parametrize("reply", ["redirect", "next"])
async def test_a_plain_http_manifest_address_is_refused(httpx_mock: HTTPXMock, reply: str) -> None:
    evil = "http://files.example.net/manifest/2"
    if reply == "redirect":
        httpx_mock.add_response(url=STATUS, status_code=303, headers={"Location": evil})
    else:
        httpx_mock.add_response(url=STATUS, json={**manifest(), "link": [{"relation": "next", "url": evil}]})
    with pytest.raises(BulkExportError, match=r"refusing to send credentials over plain http to "
                                              r"http://files.example.net/manifest/2"):
        await exporter().wait(Job(kickoff=KICKOFF, status_url=STATUS))
    assert sent_to(httpx_mock) == [STATUS]


async def test_a_plain_http_file_url_gets_no_token_and_nothing_is_downloaded(httpx_mock: HTTPXMock,
                                                                             tmp_path: Path) -> None:
    """The audit's probe: requiresAccessToken true, a file on a non-loopback plain http host."""
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(
        (f"{BASE}/files/1.ndjson", "Observation"), ("http://192.0.2.7/files/Patient.ndjson", "Patient")))
    with pytest.raises(BulkExportError, match=r"plain http to http://192.0.2.7/files/Patient.ndjson "
                                              r"\(the manifest's output\[2\].*over https"):
        await exporter().download(job, tmp_path / "bulk")
    assert sent_to(httpx_mock) == []  # checked before the first file is fetched
    assert not (tmp_path / "bulk").exists()


async def test_an_https_servers_file_is_not_fetched_over_plain_http_even_without_a_token(httpx_mock: HTTPXMock,
                                                                                         tmp_path: Path) -> None:
    job = Job(kickoff=KICKOFF, status_url=STATUS,
              manifest=manifest(("http://files.example.net/1.ndjson", "Observation"), token=False))
    with pytest.raises(BulkExportError, match=r"refusing to fetch http://files.example.net/1.ndjson .*unencrypted"):
        await exporter().download(job, tmp_path)
    assert sent_to(httpx_mock) == []


async def test_loopback_plain_http_takes_the_token(httpx_mock: HTTPXMock, tmp_path: Path) -> None:
    base = "http://localhost:8080/fhir"
    httpx_mock.add_response(url=f"{base}/files/1.ndjson", content=LINE)
    job = Job(kickoff=KICKOFF, status_url=f"{base}/s/1", manifest=manifest((f"{base}/files/1.ndjson", "Observation")))
    await exporter(base).download(job, tmp_path)
    assert httpx_mock.get_requests()[0].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_the_client_itself_refuses_credentials_over_plain_http(httpx_mock: HTTPXMock) -> None:
    """FhirClient.exchange, which every Bulk request goes through, refuses on its own too."""
    async with FhirClient(BASE, auth=BearerToken(TOKEN)) as client:
        with pytest.raises(FhirError, match=r"refusing to send credentials over plain http to http://ehr.example.org"):
            await client.exchange("GET", "http://ehr.example.org/fhir/x")
        with pytest.raises(FhirError, match="plain http"):  # the server's own user:password in a URL
            await client.exchange("GET", "http://u:p@ehr.example.org/x", with_auth=False)
    assert sent_to(httpx_mock) == []


# -- the access token and other hosts ---------------------------------------------------------------------

async def test_a_site_that_restricts_token_hosts_sends_it_only_to_those(httpx_mock: HTTPXMock, tmp_path: Path) -> None:
    other = "https://storage.example.org/x/2.ndjson"
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest((other, "Observation")))
    with pytest.raises(BulkExportError, match=r"refusing to send the access token to https://storage.example.org/"
                                              r"x/2.ndjson .*not the FHIR server https://fhir.example.org.*"
                                              r"token_hosts: \[storage.example.org\]"):
        await exporter().download(job, tmp_path)
    assert sent_to(httpx_mock) == []
    httpx_mock.add_response(url=other, content=LINE)
    await exporter(token_hosts=frozenset({"storage.example.org"})).download(job, tmp_path)
    assert httpx_mock.get_requests()[0].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_a_status_url_on_another_host_gets_no_token(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=KICKOFF, status_code=202,
                            headers={"Content-Location": "https://collector.example.net/status/1"})
    with pytest.raises(BulkExportError, match=r"access token to https://collector.example.net/status/1"):
        await exporter().kickoff(Job(kickoff=KICKOFF))


@pytest.mark.parametrize("flag", [False, "true", None])
async def test_without_requires_access_token_true_no_authorization_is_sent(httpx_mock: HTTPXMock, tmp_path: Path,
                                                                           flag: Any) -> None:
    """Only the IG's boolean true sends the token (a string "true" does not), to any https host then."""
    other = "https://storage.example.org/x/2.ndjson"
    httpx_mock.add_response(url=other, content=LINE)
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest((other, "Observation"), token=flag))
    await exporter().download(job, tmp_path)
    assert [("Authorization" in r.headers) for r in httpx_mock.get_requests()] == [False]


async def test_by_default_the_token_follows_requires_access_token_to_another_https_host(
        httpx_mock: HTTPXMock, tmp_path: Path) -> None:
    """The Bulk Data IG: files with requiresAccessToken true get the token, wherever the server stores them."""
    other = "https://storage.example.org/x/2.ndjson"
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest((other, "Observation")))
    httpx_mock.add_response(url=other, content=LINE)
    await exporter(token_hosts=frozenset(BulkSettings().token_hosts)).download(job, tmp_path)
    assert httpx_mock.get_requests()[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert BulkOptions().token_hosts == frozenset(BulkSettings().token_hosts) == {"*"}


def test_token_hosts_are_host_names() -> None:
    assert BulkSettings(token_hosts=["Files.EHR.example.org"]).token_hosts == ["files.ehr.example.org"]
    with pytest.raises(ValueError, match="not a host name"):
        BulkSettings(token_hosts=["https://files.example.org/x"])


# -- file names from the manifest's type -------------------------------------------------------------------

HOSTILE_TYPES = ["Obs\x00ervation", "A" * 400, "x/../../../../escaped", "/etc/passwd", "Observatoin", None, 7]


async def test_a_hostile_manifest_type_never_becomes_a_file_name(httpx_mock: HTTPXMock, tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "c" / "out"
    folder = out / "bulk"
    httpx_mock.add_response(url=f"{BASE}/files/ok.ndjson", content=LINE)
    outputs = [(f"{BASE}/files/{i}.ndjson", t) for i, t in enumerate(HOSTILE_TYPES)]
    outputs += [(f"{BASE}/files/ok.ndjson", "Observation"), (f"{BASE}/files/enc.ndjson", "Encounter")]
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(*outputs))
    local = await exporter().download(job, folder)
    assert sent_to(httpx_mock) == [f"{BASE}/files/ok.ndjson"]  # only the Observation file
    assert [o["url"] for o in local["output"]] == ["008.Observation.ndjson"]
    skipped = local["not_downloaded"]
    assert [(e["index"], e["reason"]) for e in skipped] == [(n, NOT_R4_TYPE) for n in range(1, 8)] + [
        (9, NOT_REQUESTED)]
    assert skipped[0]["type"] == '"Obs\\u0000ervation"' and len(skipped[1]["type"]) <= 120
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "a/b/c/out/bulk/008.Observation.ndjson", "a/b/c/out/bulk/manifest.json"]


async def test_error_files_are_named_operation_outcome_whatever_type_they_claim(httpx_mock: HTTPXMock,
                                                                                tmp_path: Path) -> None:
    httpx_mock.add_response(url=f"{BASE}/files/err.ndjson", content=b'{"resourceType":"OperationOutcome"}\n')
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest={
        **manifest(), "error": [{"type": "../../x\x00", "url": f"{BASE}/files/err.ndjson"}]})
    local = await exporter().download(job, tmp_path / "bulk")
    assert local["error"][0]["url"] == "error.001.OperationOutcome.ndjson"
    assert local["error"][0]["type"] == "OperationOutcome"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "error.001.OperationOutcome.ndjson", "manifest.json"]
