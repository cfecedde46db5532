"""The Bulk Data $export protocol paths a real server does not produce on demand (pytest-httpx): 5xx while
polling, an expired job, a manifest file that 404s, Retry-After as an HTTP-date or far in the future, 429 on
the status URL, a redirect to the manifest, paged manifests, requiresAccessToken true/false, relative URLs,
deleted[] files, file URLs answered with redirects (a pre-signed URL elsewhere gets no token; plain http
refused; loops and too many hops stop), a download that fails for the server's reasons (exit 3) or for the
credentials (exit 4), and links planted in the download folder before a resumed download (issue 11)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Generator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from fhir_adapter.cli.console import exit_code_of
from fhir_adapter.fhir import BearerToken, FhirAuthError, FhirClient
from fhir_adapter.fhir.bulk import STATE_FILE, BulkExporter, BulkExportError, BulkOptions, Job, load_job, save_job
from fhir_adapter.fhir.errors import FhirServerUnavailable
from fhir_adapter.job import exit_codes
from tests.fhir.fhir_testkit import BASE, FakeClock, FakeSleep, outcome

STATUS = f"{BASE}/$export-status/job-1"
KICKOFF = f"{BASE}/Patient/$export?_type=Observation"
LINE = b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}\n'
FILE = f"{BASE}/files/1.ndjson"


def manifest(*urls: str, token: bool = False, **extra: Any) -> dict[str, Any]:
    return {"transactionTime": "2026-11-01T00:00:00Z", "request": KICKOFF, "requiresAccessToken": token,
            "output": [{"type": "Observation", "url": u} for u in urls], "error": [], **extra}


def exporter(clock: FakeClock, sleep: FakeSleep, auth: httpx.Auth | None = None, **options: Any) -> BulkExporter:
    client = FhirClient(BASE, auth=auth)
    return BulkExporter(client, BulkOptions(**options), sleep=sleep, clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleep(clock: FakeClock) -> FakeSleep:
    return FakeSleep(clock)


async def test_kickoff_returns_the_status_url_and_sends_the_async_headers(httpx_mock: HTTPXMock, clock: FakeClock,
                                                                          sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=KICKOFF, status_code=202, headers={"Content-Location": STATUS})
    job = Job(kickoff=KICKOFF)
    assert await exporter(clock, sleep).kickoff(job) == STATUS
    request = httpx_mock.get_requests()[0]
    assert request.headers["Prefer"] == "respond-async" and request.headers["Accept"] == "application/fhir+json"


async def test_kickoff_refused_shows_the_operation_outcome(httpx_mock: HTTPXMock, clock: FakeClock,
                                                           sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=KICKOFF, status_code=400, json=outcome("_type: Specimen is not exportable"))
    with pytest.raises(BulkExportError, match=r"HTTP 400: .*_type: Specimen is not exportable") as err:
        await exporter(clock, sleep).kickoff(Job(kickoff=KICKOFF))
    assert err.value.status == 400 and err.value.diagnostics[0].endswith("_type: Specimen is not exportable")


async def test_5xx_while_polling_is_retried(httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=STATUS, status_code=202, headers={"X-Progress": "50%", "Retry-After": "5"})
    httpx_mock.add_response(url=STATUS, status_code=503, json=outcome("busy", code="transient"))
    httpx_mock.add_response(url=STATUS, status_code=500)
    httpx_mock.add_response(url=STATUS, json=manifest(f"{BASE}/files/1.ndjson"))
    job = Job(kickoff=KICKOFF, status_url=STATUS)
    got = await exporter(clock, sleep).wait(job)
    assert got["output"][0]["url"] == f"{BASE}/files/1.ndjson" and job.progress == ["50%"]
    assert sleep.delays[0] == 5 and len(sleep.delays) == 3 and job.requests["status"] == 4


async def test_a_kickoff_refused_with_a_long_type_filter_keeps_the_answer_in_view(
        httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep) -> None:
    """A kick-off whose _typeFilter runs to thousands of characters: the error line shows the URL cut short, so
    the server's answer and the hint are not buried after it."""
    long_kickoff = KICKOFF + "&_typeFilter=" + ",".join(f"Observation%3Fcode%3Dhttp://loinc.org|{n}-1"
                                                         for n in range(200))
    httpx_mock.add_response(url=long_kickoff, status_code=500, json=outcome("export subsystem offline"))
    with pytest.raises(BulkExportError) as err:
        await exporter(clock, sleep).kickoff(Job(kickoff=long_kickoff))
    message = str(err.value)
    assert len(long_kickoff) > 5000 and len(message) < 600, len(message)
    assert "export subsystem offline; the server failed: run again later" in message and "…" in message


async def test_5xx_that_persists_is_an_error(httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep) -> None:
    for _ in range(3):
        httpx_mock.add_response(url=STATUS, status_code=503, json=outcome("export worker crashed", code="transient"))
    with pytest.raises(BulkExportError, match=r"HTTP 503: .*export worker crashed; the server failed"):
        await exporter(clock, sleep, status_attempts=3).wait(Job(kickoff=KICKOFF, status_url=STATUS))


@pytest.mark.parametrize("code", ["exception", "processing"])
async def test_a_status_error_that_is_not_transient_is_a_failed_job(httpx_mock: HTTPXMock, clock: FakeClock,
                                                                     sleep: FakeSleep, code: str) -> None:
    """The IG: a status error that does not mean the job failed SHOULD carry a transient issue code; another
    code says the job failed: not polled again (it would fail forever), the job is to be forgotten."""
    httpx_mock.add_response(url=STATUS, status_code=202)
    httpx_mock.add_response(url=STATUS, status_code=500, json=outcome("export of Observation failed", code=code))
    with pytest.raises(BulkExportError, match=rf"HTTP 500: .*export of Observation failed.*issue code \({code}\) "
                                              r"is not transient.*run again to start a new export") as err:
        await exporter(clock, sleep).wait(Job(kickoff=KICKOFF, status_url=STATUS))
    assert err.value.job_failed and len(httpx_mock.get_requests()) == 2


async def test_an_expired_job_is_an_error_naming_it(httpx_mock: HTTPXMock, clock: FakeClock,
                                                    sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=STATUS, status_code=404, json=outcome("job job-1 expired"))
    with pytest.raises(BulkExportError, match=r"job job-1 expired.*expired or deleted job") as err:
        await exporter(clock, sleep).wait(Job(kickoff=KICKOFF, status_url=STATUS))
    assert err.value.status == 404


async def test_retry_after_as_http_date_and_far_future_capped(httpx_mock: HTTPXMock, clock: FakeClock,
                                                              sleep: FakeSleep) -> None:
    now = datetime.fromtimestamp(clock.now, UTC)
    httpx_mock.add_response(url=STATUS, status_code=202,
                            headers={"Retry-After": format_datetime(now + timedelta(seconds=30), usegmt=True)})
    httpx_mock.add_response(url=STATUS, status_code=202,
                            headers={"Retry-After": format_datetime(now + timedelta(days=3), usegmt=True)})
    httpx_mock.add_response(url=STATUS, status_code=202, headers={"Retry-After": "86400"})
    httpx_mock.add_response(url=STATUS, json=manifest())
    await exporter(clock, sleep, max_retry_after_seconds=120, poll_limit_seconds=10_000).wait(
        Job(kickoff=KICKOFF, status_url=STATUS))
    assert sleep.delays == [30, 120, 120]


async def test_rate_limited_polling_waits_longer(httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=STATUS, status_code=202)
    httpx_mock.add_response(url=STATUS, status_code=429, headers={"Retry-After": "17"})
    httpx_mock.add_response(url=STATUS, status_code=429)
    httpx_mock.add_response(url=STATUS, json=manifest())
    await exporter(clock, sleep, first_poll_seconds=1).wait(Job(kickoff=KICKOFF, status_url=STATUS))
    assert sleep.delays[0] == 1 and sleep.delays[1] == 17 and sleep.delays[2] > sleep.delays[0]


async def test_time_limit(httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=STATUS, status_code=202, headers={"Retry-After": "100", "X-Progress": "10%"},
                            is_reusable=True)
    with pytest.raises(BulkExportError, match=r"not finished after 250 s \(last progress: 10%\).*resume"):
        await exporter(clock, sleep, poll_limit_seconds=250).wait(Job(kickoff=KICKOFF, status_url=STATUS))


async def test_status_answered_with_a_redirect_and_a_paged_manifest(httpx_mock: HTTPXMock, clock: FakeClock,
                                                                    sleep: FakeSleep) -> None:
    httpx_mock.add_response(url=STATUS, status_code=303, headers={"Location": f"{BASE}/manifests/1"})
    httpx_mock.add_response(url=f"{BASE}/manifests/1", json=manifest(
        "files/a.ndjson", link=[{"relation": "next", "url": f"{BASE}/manifests/2"}]))
    httpx_mock.add_response(url=f"{BASE}/manifests/2", json=manifest("files/b.ndjson"))
    got = await exporter(clock, sleep).wait(Job(kickoff=KICKOFF, status_url=STATUS))
    assert [o["url"] for o in got["output"]] == ["files/a.ndjson", "files/b.ndjson"] and "link" not in got


@pytest.mark.parametrize("token", [True, False])
async def test_downloads_send_the_token_only_when_required(httpx_mock: HTTPXMock, clock: FakeClock,
                                                           sleep: FakeSleep, tmp_path: Path, token: bool) -> None:
    httpx_mock.add_response(url=f"{BASE}/files/1.ndjson", content=LINE)  # relative in the manifest
    httpx_mock.add_response(url="https://storage.example.org/x/2.ndjson", content=LINE)
    job = Job(kickoff=KICKOFF, status_url=STATUS,
              manifest=manifest("files/1.ndjson", "https://storage.example.org/x/2.ndjson", token=token))
    # the file store on another host takes the token only because the server config lists it
    local = await exporter(clock, sleep, auth=BearerToken("s3cret"),
                           token_hosts=frozenset({"storage.example.org"})).download(job, tmp_path)
    assert [o["url"] for o in local["output"]] == ["001.Observation.ndjson", "002.Observation.ndjson"]
    assert (tmp_path / "001.Observation.ndjson").read_bytes() == LINE
    sent = [("Authorization" in r.headers) for r in httpx_mock.get_requests()]
    assert sent == [token, token]


async def test_a_manifest_file_that_404s_is_an_error_naming_it(httpx_mock: HTTPXMock, clock: FakeClock,
                                                               sleep: FakeSleep, tmp_path: Path) -> None:
    url = f"{BASE}/files/gone.ndjson"
    httpx_mock.add_response(url=url, status_code=404, json=outcome("file expired"))
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(url))
    with pytest.raises(BulkExportError, match=r"files/gone.ndjson answered HTTP 404: .*file expired") as err:
        await exporter(clock, sleep).download(job, tmp_path)
    assert not list(tmp_path.glob("*.ndjson"))
    assert "run again to start a new export" in str(err.value) and "group_id" not in str(err.value)  # a file, no Group


async def test_a_gzip_file_served_as_is_is_kept_gzipped(httpx_mock: HTTPXMock, clock: FakeClock,
                                                        sleep: FakeSleep, tmp_path: Path) -> None:
    import gzip

    httpx_mock.add_response(url=f"{BASE}/files/1.ndjson.gz", content=gzip.compress(LINE),
                            headers={"Content-Type": "application/gzip"})
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(f"{BASE}/files/1.ndjson.gz"))
    local = await exporter(clock, sleep).download(job, tmp_path)
    assert local["output"][0]["url"] == "001.Observation.ndjson.gz"
    assert gzip.decompress((tmp_path / "001.Observation.ndjson.gz").read_bytes()) == LINE


GZ_FILE = f"{BASE}/files/1.ndjson.gz"


async def test_a_truncated_gzip_download_is_fetched_again(httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep,
                                                          tmp_path: Path) -> None:
    """A gzip file served as is and cut short (the connection closed at a clean boundary) is not kept as
    finished: it would never be fetched again. It is fetched again, within the download attempts."""
    import gzip

    whole = gzip.compress(LINE * 50)
    httpx_mock.add_response(url=GZ_FILE, content=whole[: len(whole) // 2])
    httpx_mock.add_response(url=GZ_FILE, content=whole)
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(GZ_FILE))
    await exporter(clock, sleep).download(job, tmp_path)
    assert gzip.decompress((tmp_path / "001.Observation.ndjson.gz").read_bytes()) == LINE * 50
    assert job.requests["files"] == 2 and not list(tmp_path.glob(".*.part"))


async def test_a_gzip_download_truncated_on_every_attempt_is_an_error_and_not_kept(
        httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep, tmp_path: Path) -> None:
    import gzip

    whole = gzip.compress(LINE * 50)
    for _ in range(2):
        httpx_mock.add_response(url=GZ_FILE, content=whole[:-5])  # the CRC and length are missing
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(GZ_FILE))
    with pytest.raises(BulkExportError, match=r"1.ndjson.gz: the downloaded file 001.Observation.ndjson.gz ends "
                                              r"before the end of its gzip data .*run again later") as err:
        await exporter(clock, sleep, download_attempts=2).download(job, tmp_path)
    assert exit_code_of(err.value) == exit_codes.SERVER_UNAVAILABLE
    assert not list(tmp_path.iterdir())  # nothing kept: the next run downloads it again


async def test_a_gzip_download_of_several_members_is_complete(httpx_mock: HTTPXMock, clock: FakeClock,
                                                              sleep: FakeSleep, tmp_path: Path) -> None:
    import gzip

    httpx_mock.add_response(url=GZ_FILE, content=gzip.compress(LINE) + gzip.compress(LINE) + b"\0" * 8)
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(GZ_FILE))
    await exporter(clock, sleep).download(job, tmp_path)
    assert gzip.decompress((tmp_path / "001.Observation.ndjson.gz").read_bytes()) == LINE * 2


def counted(url: str, count: int) -> dict[str, Any]:
    return manifest(url, output=[{"type": "Observation", "url": url, "count": count}])


async def test_a_download_cut_at_a_line_end_is_fetched_again(httpx_mock: HTTPXMock, clock: FakeClock,
                                                             sleep: FakeSleep, tmp_path: Path) -> None:
    """A file cut at a line end is valid NDJSON: the manifest's count (IG v2) says it is not all of it."""
    httpx_mock.add_response(url=FILE, content=LINE * 30)
    httpx_mock.add_response(url=FILE, content=LINE * 50 + b"\n")  # a blank line is no resource
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=counted(FILE, 50))
    local = await exporter(clock, sleep).download(job, tmp_path)
    assert (tmp_path / "001.Observation.ndjson").read_bytes() == LINE * 50 + b"\n" and job.requests["files"] == 2
    assert local["output"][0]["count"] == 50 and local["counts_checked"] is True


async def test_a_download_short_of_its_count_on_every_attempt_is_an_error(httpx_mock: HTTPXMock, clock: FakeClock,
                                                                          sleep: FakeSleep, tmp_path: Path) -> None:
    import gzip

    for _ in range(2):
        httpx_mock.add_response(url=GZ_FILE, content=gzip.compress(LINE * 30))
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=counted(GZ_FILE, 50))
    with pytest.raises(BulkExportError, match=r"the downloaded file 001.Observation.ndjson.gz holds 30 line\(s\) "
                                              r"where the manifest's count says 50 \(incomplete\)") as err:
        await exporter(clock, sleep, download_attempts=2).download(job, tmp_path)
    assert exit_code_of(err.value) == exit_codes.SERVER_UNAVAILABLE and not list(tmp_path.iterdir())


class _Chunks(httpx.AsyncByteStream):
    """A body sent in chunks of 1 KB, as a network delivers it."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for at in range(0, len(self.body), 1024):
            yield self.body[at:at + 1024]


@pytest.mark.parametrize("served", ["content-encoding", "as-is"])
async def test_a_file_larger_than_the_bound_once_decompressed_stops_the_download(
        httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep, tmp_path: Path, served: str) -> None:
    """A gzip "bomb": a few KB on the wire, far more once decompressed. client.max_response_bytes does not bound a
    download; bulk.max_file_bytes does — for a Content-Encoding written out and for a gzip file served as is. The
    error names a pre-signed URL without its signature."""
    import gzip

    bomb = gzip.compress(LINE * 20_000)  # 1.6 MB of lines in a few KB
    assert len(bomb) < 20_000
    headers = {"Content-Encoding": "gzip"} if served == "content-encoding" else {}
    signed = f"{FILE}?se=2026-12-09&sig=SECRETSIGNATURE"
    httpx_mock.add_response(url=signed, stream=_Chunks(bomb), headers=headers)
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(signed))
    with pytest.raises(BulkExportError, match=r"the export file 001.Observation.ndjson(.gz)? is larger than "
                                              r"bulk.max_file_bytes \(1,000,000 bytes\) once decompressed") as err:
        await exporter(clock, sleep, max_file_bytes=1_000_000, download_attempts=1).download(job, tmp_path)
    assert "SECRETSIGNATURE" not in str(err.value) and "SECRETSIGNATURE" not in str(err.value.url)
    assert not list(tmp_path.iterdir()) and job.requests["files"] == 1  # nothing kept, not fetched again
    httpx_mock.add_response(url=signed, stream=_Chunks(bomb), headers=headers)
    await exporter(clock, sleep, max_file_bytes=2_000_000).download(job, tmp_path)  # within the bound: kept
    assert len(list(tmp_path.glob("001.Observation.ndjson*"))) == 1


async def test_delete_refused_is_a_warning(httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep) -> None:
    httpx_mock.add_response(method="DELETE", url=STATUS, status_code=500, json=outcome("cannot delete"))
    warning = await exporter(clock, sleep).delete(Job(kickoff=KICKOFF, status_url=STATUS))
    assert warning is not None and "cannot delete" in warning


async def test_deleted_files_are_downloaded_under_a_fixed_name(httpx_mock: HTTPXMock, clock: FakeClock,
                                                               sleep: FakeSleep, tmp_path: Path) -> None:
    """An export _since lists deleted[] files (transaction Bundles of DELETE entries): downloaded as the output
    files are, named from a fixed word and the entry's number whatever type or URL the server wrote."""
    gone = b'{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE",' \
           b'"url":"Observation/o9"}}]}\n'
    httpx_mock.add_response(url=f"{BASE}/files/1.ndjson", content=LINE)
    httpx_mock.add_response(url=f"{BASE}/files/gone/../x.ndjson", content=gone)
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(
        f"{BASE}/files/1.ndjson", deleted=[{"type": "../Evil", "url": f"{BASE}/files/gone/../x.ndjson"}]))
    local = await exporter(clock, sleep).download(job, tmp_path)
    assert [d["url"] for d in local["deleted"]] == ["deleted.001.Bundle.ndjson"]
    assert local["deleted"][0]["type"] == "Bundle"
    assert (tmp_path / "deleted.001.Bundle.ndjson").read_bytes() == gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["001.Observation.ndjson", "deleted.001.Bundle.ndjson",
                                                          "manifest.json"]


async def test_a_deleted_file_url_is_checked_as_the_output_files(httpx_mock: HTTPXMock, clock: FakeClock,
                                                                 sleep: FakeSleep, tmp_path: Path) -> None:
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(
        deleted=[{"type": "Bundle", "url": "http://files.example.org/deleted.ndjson"}], token=True))
    with pytest.raises(BulkExportError, match=r"refusing to send credentials over plain http.*deleted\[1\]"):
        await exporter(clock, sleep, auth=BearerToken("s3cret")).download(job, tmp_path)
    assert httpx_mock.get_requests() == []


SIGNED = "https://blobs.example.net/exports/1.ndjson?sig=abc&se=2026-11-02"


@pytest.mark.parametrize("status", [302, 303, 307])
async def test_a_redirect_to_a_presigned_url_is_followed_without_the_token(
        httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep, tmp_path: Path, status: int) -> None:
    """A file URL answered with a redirect to a pre-signed blob-store URL: the file is fetched from there, and
    the access token (requiresAccessToken: true) goes only to the FHIR server's origin, never to the store."""
    httpx_mock.add_response(url=f"{BASE}/files/1.ndjson", status_code=status, headers={"Location": SIGNED})
    httpx_mock.add_response(url=SIGNED, content=LINE)
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(f"{BASE}/files/1.ndjson", token=True))
    local = await exporter(clock, sleep, auth=BearerToken("s3cret")).download(job, tmp_path)
    assert (tmp_path / local["output"][0]["url"]).read_bytes() == LINE
    first, second = httpx_mock.get_requests()
    assert first.headers["Authorization"] == "Bearer s3cret"
    assert str(second.url) == SIGNED and "Authorization" not in second.headers
    assert job.requests["files"] == 2


async def test_a_redirect_on_the_same_origin_keeps_the_token(httpx_mock: HTTPXMock, clock: FakeClock,
                                                             sleep: FakeSleep, tmp_path: Path) -> None:
    httpx_mock.add_response(url=f"{BASE}/files/1.ndjson", status_code=307, headers={"Location": "2.ndjson"})
    httpx_mock.add_response(url=f"{BASE}/files/2.ndjson", content=LINE)  # relative to the hop's URL
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(f"{BASE}/files/1.ndjson", token=True))
    await exporter(clock, sleep, auth=BearerToken("s3cret")).download(job, tmp_path)
    assert [r.headers.get("Authorization") for r in httpx_mock.get_requests()] == ["Bearer s3cret"] * 2


async def test_a_redirect_to_plain_http_elsewhere_is_refused(httpx_mock: HTTPXMock, clock: FakeClock,
                                                             sleep: FakeSleep, tmp_path: Path) -> None:
    httpx_mock.add_response(url=f"{BASE}/files/1.ndjson", status_code=302,
                            headers={"Location": "http://blobs.example.net/1.ndjson"})
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(f"{BASE}/files/1.ndjson"))
    with pytest.raises(BulkExportError, match=r"refusing to fetch http://blobs.example.net/1.ndjson \(the redirect"):
        await exporter(clock, sleep).download(job, tmp_path)
    assert len(httpx_mock.get_requests()) == 1  # nothing sent to the http URL, and not retried
    assert not list(tmp_path.glob("*.ndjson"))


async def test_a_redirect_loop_stops_with_an_error(httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep,
                                                   tmp_path: Path) -> None:
    httpx_mock.add_response(url=f"{BASE}/files/1.ndjson", status_code=302,
                            headers={"Location": "https://blobs.example.net/a"})
    httpx_mock.add_response(url="https://blobs.example.net/a", status_code=302,
                            headers={"Location": f"{BASE}/files/1.ndjson"})
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(f"{BASE}/files/1.ndjson"))
    with pytest.raises(BulkExportError, match=r"redirect .*files/1.ndjson loops: .*files/1.ndjson again after 2"):
        await exporter(clock, sleep).download(job, tmp_path)
    assert len(httpx_mock.get_requests()) == 2


async def test_too_many_redirects_stop_with_an_error(httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep,
                                                     tmp_path: Path) -> None:
    for n in range(1, 7):
        httpx_mock.add_response(url=f"{BASE}/files/{n}", status_code=302, headers={"Location": f"{n + 1}"})
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(f"{BASE}/files/1"))
    with pytest.raises(BulkExportError, match=r"more than 5 redirects"):
        await exporter(clock, sleep).download(job, tmp_path)
    assert len(httpx_mock.get_requests()) == 6


# -- a download that fails: the exit code of the table (docs/cli.md) ---------------------------------------


async def test_a_download_refused_on_every_attempt_exits_3(httpx_mock: HTTPXMock, clock: FakeClock,
                                                           sleep: FakeSleep, tmp_path: Path) -> None:
    for _ in range(4):
        httpx_mock.add_exception(httpx.ConnectError("[Errno 111] Connection refused"), url=FILE)
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(FILE))
    with pytest.raises(BulkExportError, match=r"download failed: .*Connection refused") as err:
        await exporter(clock, sleep).download(job, tmp_path)
    assert len(sleep.delays) == 3 and exit_code_of(err.value) == exit_codes.SERVER_UNAVAILABLE


async def test_a_download_throttled_after_every_retry_exits_3(httpx_mock: HTTPXMock, clock: FakeClock,
                                                              sleep: FakeSleep, tmp_path: Path) -> None:
    for _ in range(4):
        httpx_mock.add_response(url=FILE, status_code=429)
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(FILE))
    with pytest.raises(BulkExportError, match=r"HTTP 429: .*run again later") as err:
        await exporter(clock, sleep).download(job, tmp_path)
    assert err.value.status == 429 and exit_code_of(err.value) == exit_codes.SERVER_UNAVAILABLE


class _DroppedMidway(httpx.AsyncByteStream):
    """A file whose connection drops after its first line."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield LINE
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


async def test_a_download_interrupted_on_every_attempt_exits_3(httpx_mock: HTTPXMock, clock: FakeClock,
                                                               sleep: FakeSleep, tmp_path: Path) -> None:
    for _ in range(4):
        httpx_mock.add_response(url=FILE, stream=_DroppedMidway())
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(FILE))
    with pytest.raises(BulkExportError, match=r"download interrupted .*run again to resume") as err:
        await exporter(clock, sleep).download(job, tmp_path)
    assert exit_code_of(err.value) == exit_codes.SERVER_UNAVAILABLE
    assert not list(tmp_path.glob("*.ndjson"))  # the .part is kept for no one: the next run downloads it again


class _TokenRefused(httpx.Auth):
    """Credentials whose token refresh the token endpoint refuses."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise FhirAuthError("the token endpoint refused the client (HTTP 400 invalid_client)", status=400)
        yield request  # a generator, as httpx asks


async def test_credentials_refused_during_a_download_stop_it_unwrapped_and_unretried(
        httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep, tmp_path: Path) -> None:
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(FILE, token=True))
    with pytest.raises(FhirAuthError, match="invalid_client") as err:
        await exporter(clock, sleep, auth=_TokenRefused()).download(job, tmp_path)
    assert type(err.value) is FhirAuthError and sleep.delays == [] and job.requests["files"] == 1
    assert exit_code_of(err.value) == exit_codes.AUTH_FAILED


class _TokenEndpointDown(httpx.Auth):
    """Credentials whose token endpoint answers 503 (transient) to every request."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise FhirAuthError("SMART token request failed with HTTP 503", status=503, transient=True)
        yield request  # a generator, as httpx asks


async def test_a_token_endpoint_down_for_every_attempt_of_a_download_exits_3(
        httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep, tmp_path: Path) -> None:
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(FILE, token=True))
    with pytest.raises(BulkExportError, match=r"download failed: .*HTTP 503") as err:
        await exporter(clock, sleep, auth=_TokenEndpointDown()).download(job, tmp_path)
    assert len(sleep.delays) == 3 and exit_code_of(err.value) == exit_codes.SERVER_UNAVAILABLE


async def test_an_open_circuit_breaker_stops_a_download_unwrapped_and_unretried(
        httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep, tmp_path: Path) -> None:
    bulk = exporter(clock, sleep)
    bulk.client.breaker.error = FhirServerUnavailable("server unavailable since 2026-11-01T00:00:00Z",
                                                      since="2026-11-01T00:00:00Z")
    job = Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(FILE))
    with pytest.raises(FhirServerUnavailable) as err:
        await bulk.download(job, tmp_path)
    assert sleep.delays == [] and exit_code_of(err.value) == exit_codes.SERVER_UNAVAILABLE


# -- links planted in the download folder (issue 11: nothing is written through a link inside OUT) ----------

async def test_a_resumed_download_writes_through_no_link_planted_in_its_folder(
        httpx_mock: HTTPXMock, clock: FakeClock, sleep: FakeSleep, tmp_path: Path) -> None:
    """As a resumed run does (source/bulk.py ``_complete``): the job's state read and saved, the files
    downloaded, the state saved again — with a link at every name the client writes, and at a finished
    file's name, each pointing to a file outside OUT."""
    httpx_mock.add_response(url=FILE, content=LINE)
    httpx_mock.add_response(url=f"{BASE}/files/2.ndjson", content=LINE)
    folder, elsewhere = tmp_path / "out" / "bulk", tmp_path / "elsewhere"
    folder.mkdir(parents=True)
    elsewhere.mkdir()
    save_job(folder, Job(kickoff=KICKOFF, status_url=STATUS, manifest=manifest(FILE, f"{BASE}/files/2.ndjson")))
    planted = ["manifest.json", ".001.Observation.part", f"{STATE_FILE}.tmp", "002.Observation.ndjson"]
    for name in planted:
        (elsewhere / name).write_text("precious\n")
        (folder / name).symlink_to(elsewhere / name)
    state = load_job(folder)
    assert state is not None
    job = Job(kickoff=state["kickoff"], status_url=state["status_url"], manifest=state["manifest"])
    save_job(folder, job)
    local = await exporter(clock, sleep).download(job, folder)
    save_job(folder, job, deleted=True)
    assert [(elsewhere / name).read_text() for name in planted] == ["precious\n"] * len(planted)
    assert not [p.name for p in folder.iterdir() if p.is_symlink()]
    assert [e["url"] for e in local["output"]] == ["001.Observation.ndjson", "002.Observation.ndjson"]
    assert (folder / "002.Observation.ndjson").read_bytes() == LINE  # the link was no finished file
    assert json.loads((folder / "manifest.json").read_text())["output"][0]["url"] == "001.Observation.ndjson"


async def test_a_link_in_place_of_the_job_state_is_no_job(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.json").write_text(json.dumps({"kickoff": KICKOFF, "status_url": STATUS}))
    (tmp_path / STATE_FILE).symlink_to(tmp_path / "elsewhere.json")
    assert load_job(tmp_path) is None
