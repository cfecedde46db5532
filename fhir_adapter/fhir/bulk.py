"""FHIR Bulk Data Access (IG v2.0.0) ``$export`` client: kick-off, status polling, downloads, DELETE.

As the IG and the servers hospitals run (SMART's reference server, HAPI FHIR, Epic, Oracle Health) behave:

* kick-off ``GET [base]/Group/[id]/$export`` or ``[base]/Patient/$export`` with ``Prefer: respond-async`` and
  ``Accept: application/fhir+json``; ``202`` + ``Content-Location`` is the status URL; an error answer's
  OperationOutcome is shown; ``429``/``503`` with ``Retry-After`` are waited out;
* status: ``202`` (``X-Progress`` reported, ``Retry-After`` as seconds or an HTTP-date, capped at
  ``max_retry_after_seconds``; exponential backoff without it), ``200`` + the manifest (or a redirect to it),
  ``429`` (polled too often: wait longer), ``5xx`` (transient: retried ``status_attempts`` times — but one whose
  OperationOutcome has issue codes none of which is transient, :data:`TRANSIENT_CODES`, says the job failed:
  :class:`BulkExportError` with ``job_failed``, not retried), other ``4xx``
  (the job failed, expired or is unknown: the OperationOutcome shown); all within ``poll_limit_seconds``;
* manifest: ``output[]``, ``error[]`` and ``deleted[]`` file URLs, absolute or relative to the base URL;
  ``link[next]`` pages (v2) followed; ``requiresAccessToken``: the credentials are sent with the downloads only
  when it is ``true``; an ``output[]`` entry whose ``type`` is not an R4 resource type the kick-off asked for
  (``_type``) is not downloaded but listed under ``not_downloaded`` for the run report; the local file names
  are built from the entry's number and a fixed word or its R4 type only (``003.Observation.ndjson``,
  ``error.001.OperationOutcome.ndjson``, ``deleted.001.Bundle.ndjson``), never from what else the server wrote;
* ``deleted[]`` (IG v2.0.0, "Response - Complete Status"): with ``_since``, files of the resources deleted since
  then, each line a ``transaction`` Bundle whose entries carry ``request.method`` ``DELETE`` and
  ``request.url`` ``Type/id``; downloaded as the output files are (same URL checks, token rule and retries),
  whatever ``type`` the entry claims; reading them is the source's job
  (:mod:`fhir_adapter.source.bulk_deletions`);
* every URL the server names (status URL, redirect, manifest page, file) is checked before it is requested
  (:meth:`BulkExporter.check_url`): credentials never go over plain http to another machine, the token goes to
  another host than the FHIR server's only over https and as ``token_hosts`` allows (by default any https host,
  as the Bulk Data IG asks; a site may name the hosts), and an https server's export is never fetched over
  plain http;
* downloads: gzip transfer encoding accepted, retries on network failures, ``429`` and ``5xx``; a file is
  written under a hidden ``.part`` name and renamed when complete — checked first: a gzip file served as is
  must decompress to its end, and hold as many lines as the manifest entry's ``count`` when it gives one
  (:func:`_damaged`), else it is removed and fetched again within
  ``download_attempts``, then an error naming it (exit 3) — so an interrupted run resumes where it
  stopped (finished files are not downloaded again; the job's state is kept in ``.bulk-job.json``); every file
  the client writes in the folder (a ``.part``, ``manifest.json``, the job's state) is opened without following a
  symbolic link (issue 11: a link planted there is replaced, what it points to is not touched), and a link
  standing at a finished file's name is not taken for a finished file;
* a download that fails for the server's reasons after its retries (connection refused or dropped, timeouts,
  ``429``, ``5xx``) raises :class:`BulkExportError` with the HTTP status, or with the network failure as its
  ``__cause__``, so that the command exits 3 (run again later: the download resumes); credentials refused
  (:class:`~fhir_adapter.fhir.errors.FhirAuthError`) and an open circuit breaker
  (:class:`~fhir_adapter.fhir.errors.FhirServerUnavailable`) are raised as they are, not retried;
* a file URL answered with a redirect (``301``/``302``/``303``/``307``/``308``, e.g. to a pre-signed URL of a
  blob store) is followed by the adapter itself, at most :data:`MAX_FILE_REDIRECTS` hops, each hop checked
  with :meth:`BulkExporter.check_url`; the token goes only to a hop on the origin (scheme, host, port) of the
  manifest's file URL, and only when ``requiresAccessToken`` is ``true`` — a pre-signed URL elsewhere gets no
  ``Authorization`` header; a redirect loop or too many hops is an error naming the file;
* a file larger than ``max_file_bytes`` (``bulk.max_file_bytes``) once decompressed — written under a gzip
  ``Content-Encoding``, or a gzip file served as is — stops the download with an error naming the file and the
  setting (a decompression bomb would fill the disk; ``client.max_response_bytes`` bounds other answers);
* ``DELETE`` of the status URL once the files are down and checked (the server may then free them): the files
  kept in the folder are complete, so a run stopped while reading them reads them again without the server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from fhir_adapter.fhir.client import FhirClient, plain_http_elsewhere
from fhir_adapter.fhir.errors import FhirAuthError, FhirError, FhirServerUnavailable, FhirTransportError
from fhir_adapter.fhir.ndjson_lines import COUNTS_CHECKED, ndjson_lines
from fhir_adapter.fhir.r4 import is_r4_type
from fhir_adapter.fhir.retry import parse_retry_after, transport_failure
from fhir_adapter.fhir.urls import redact_url, same_origin
from fhir_adapter.safe_paths import open_new

log = logging.getLogger(__name__)

STATE_FILE = ".bulk-job.json"
LABEL = "bulk"
FHIR_JSON = "application/fhir+json"
OUTCOME = "OperationOutcome"
#: why a manifest entry was not downloaded (``not_downloaded[].reason``)
NOT_R4_TYPE = "not-r4-type"
NOT_REQUESTED = "not-requested"
#: what a manifest's ``deleted[]`` files hold: transaction Bundles of DELETE entries (IG v2.0.0)
DELETED_TYPE = "Bundle"
#: redirects a file download follows (a pre-signed blob-store URL is one hop)
MAX_FILE_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
#: the first bytes of every gzip stream (RFC 1952)
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
#: the local file name's prefix per manifest list (``output[]`` files: none)
_LOCAL_PREFIX = {"error": "error.", "deleted": "deleted."}
_SHOWN_CHARS = 120
_SHOWN_URL_CHARS = 300


class BulkExportError(FhirError):
    """The export could not be made or fetched; the message says what the server answered and what to do."""

    def __init__(self, message: str, *, url: str, status: int | None = None,
                 diagnostics: Sequence[str] = (), job_failed: bool = False) -> None:
        super().__init__(message, method="GET", url=redact_url(url) if url else url)  # a pre-signed file URL's sig
        self.status = status
        self.diagnostics = list(diagnostics)
        #: the server said the export job failed (a status error whose issue code is not transient): the job is
        #: not to be resumed, the next run kicks off a new export
        self.job_failed = job_failed


@dataclass(frozen=True)
class BulkOptions:
    poll_limit_seconds: float = 3600.0
    max_retry_after_seconds: float = 300.0
    first_poll_seconds: float = 1.0
    max_poll_seconds: float = 60.0
    status_attempts: int = 5
    download_attempts: int = 4
    #: the largest a file may be once decompressed (``bulk.max_file_bytes``)
    max_file_bytes: int = 50 * 1024 ** 3
    #: hosts besides the FHIR server's to which the access token may be sent over https when the server names
    #: them (a status URL, files with requiresAccessToken: true); lower case
    token_hosts: frozenset[str] = frozenset({"*"})  # bulk.token_hosts: "*" any https host


@dataclass
class Job:
    """One export: what was asked, where its status is, and (when complete) its manifest."""

    kickoff: str
    status_url: str | None = None
    #: the kick-off the run meant to send before any fallback (a refused _type or _typeFilter dropped, a Group
    #: unknown): what a resumed run compares with its own before it resumes the job (``asked`` in the state)
    asked: str | None = None
    manifest: dict[str, Any] | None = None
    progress: list[str] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=lambda: {"kickoff": 0, "status": 0, "files": 0, "delete": 0})


Sleep = Callable[[float], Awaitable[None]]


class BulkExporter:
    def __init__(self, client: FhirClient, options: BulkOptions | None = None, *, sleep: Sleep | None = None,
                 clock: Callable[[], float] = time.time,
                 on_progress: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.options = options or BulkOptions()
        self._sleep = sleep or asyncio.sleep
        self._clock = clock
        self._on_progress = on_progress

    # -- kick-off --------------------------------------------------------------------------------------
    def kickoff_url(self, path: str, params: Sequence[tuple[str, str]]) -> str:
        return f"{str(self.client.base_url).rstrip('/')}/{path}" + (f"?{urlencode(list(params))}" if params else "")

    async def kickoff(self, job: Job) -> str:
        """Start the export; returns the status URL (``Content-Location``)."""
        headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
        for attempt in range(1, self.options.status_attempts + 1):
            job.requests["kickoff"] += 1
            response = await self.client.exchange("GET", job.kickoff, headers=headers, label=LABEL)
            if response.status_code == 202:
                location = response.headers.get("Content-Location")
                if not location:
                    raise BulkExportError(f"GET {job.kickoff}: HTTP 202 without Content-Location: the server gave "
                                          "no status URL; this is not a Bulk Data server answer", url=job.kickoff)
                job.status_url = self.check_url(self._absolute(location), "the kick-off's status URL "
                                                "(Content-Location)", with_auth=True)
                return job.status_url
            if response.status_code in (429, 503) and attempt < self.options.status_attempts:
                await self._sleep(self._retry_after(response, 2.0 ** attempt))
                continue
            raise self._error("kick-off", job.kickoff, response)
        raise AssertionError("unreachable")

    # -- status ----------------------------------------------------------------------------------------
    async def wait(self, job: Job) -> dict[str, Any]:
        """Poll the status URL until the manifest is there; returns it (pages merged)."""
        assert job.status_url is not None
        url = self.check_url(job.status_url, "the export's status URL", with_auth=True)
        started = self._clock()
        interval = self.options.first_poll_seconds
        failures = 0
        while True:
            job.requests["status"] += 1
            response = await self.client.exchange("GET", url, headers={"Accept": "application/json"}, label=LABEL)
            status = response.status_code
            if status == 200:
                manifest = await self._manifest_pages(job, self._json(url, response))
                job.manifest = manifest
                return manifest
            if status in REDIRECT_STATUSES and response.headers.get("Location"):
                url = self.check_url(self._absolute(response.headers["Location"]),  # the manifest elsewhere
                                     "the status URL's redirect (Location)", with_auth=True)
                continue
            if status == 202:
                failures = 0
                progress = response.headers.get("X-Progress")
                if progress:
                    job.progress.append(progress)
                    if self._on_progress:
                        self._on_progress(progress)
                delay = self._retry_after(response, interval)
                interval = min(interval * 2, self.options.max_poll_seconds)
            elif status == 429:
                delay = self._retry_after(response, interval * 2)
                interval = min(interval * 2, self.options.max_poll_seconds)
            elif status >= 500 and (codes := _failed_job_codes(response)):
                error = self._error("status", url, response)
                raise BulkExportError(
                    f"{error}; the issue code ({', '.join(codes)}) is not transient, so the server says the export "
                    "job failed (Bulk Data IG): it is not resumed, run again to start a new export", url=url,
                    status=status, diagnostics=error.diagnostics, job_failed=True)
            elif status >= 500 and failures + 1 < self.options.status_attempts:
                failures += 1
                delay = self._retry_after(response, interval * 2 ** failures)
            else:
                raise self._error("status", url, response)
            if self._clock() - started + delay > self.options.poll_limit_seconds:
                raise BulkExportError(
                    f"the export at {job.status_url} is not finished after {self.options.poll_limit_seconds:g} s "
                    f"(last progress: {job.progress[-1] if job.progress else 'none reported'}): run again later to "
                    "resume waiting for the same job, or raise bulk.poll_limit_seconds", url=job.status_url)
            await self._sleep(delay)

    async def _manifest_pages(self, job: Job, manifest: dict[str, Any]) -> dict[str, Any]:
        """A v2 manifest may be paged (``link[relation=next]``): the pages' output/error lists merged."""
        merged = dict(manifest)
        page = manifest
        seen: set[str] = set()
        while (nxt := next((link.get("url") for link in page.get("link") or []
                            if isinstance(link, dict) and link.get("relation") == "next"), None)):
            nxt = self.check_url(self._absolute(str(nxt)), "the manifest's next page", with_auth=True)
            if nxt in seen:
                break
            seen.add(nxt)
            job.requests["status"] += 1
            response = await self.client.exchange("GET", nxt, headers={"Accept": "application/json"}, label=LABEL)
            if response.status_code != 200:
                raise self._error("manifest page", nxt, response)
            page = self._json(nxt, response)
            for key in ("output", "error", "deleted"):
                merged[key] = list(merged.get(key) or []) + list(page.get(key) or [])
        merged.pop("link", None)
        return merged

    # -- files -----------------------------------------------------------------------------------------
    async def download(self, job: Job, folder: Path) -> dict[str, Any]:
        """Every output, error and deleted file of the manifest into ``folder``; returns the local manifest (file
        names instead of URLs, and ``not_downloaded``: the output entries whose type is not an R4 resource type
        the kick-off asked for), also written to ``folder/manifest.json``. Files already there are not fetched
        again.

        Every file URL is checked (:meth:`check_url`) before the first file is fetched: a manifest naming one
        URL the credentials must not go to stops the download with :class:`BulkExportError`."""
        assert job.manifest is not None
        with_auth = job.manifest.get("requiresAccessToken") is True  # the IG's boolean; anything else: no token
        asked = requested_types(job.kickoff)
        lists = ("output", "error", "deleted")
        local: dict[str, Any] = {k: v for k, v in job.manifest.items() if k not in lists}
        local["not_downloaded"] = []
        fetches: list[tuple[str, str, str, dict[str, Any]]] = []  # (list, url, local stem, entry)
        for key in lists:
            local[key] = []
            for n, entry in enumerate(job.manifest.get(key) or [], start=1):
                if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                    raise BulkExportError(f"the manifest's {key}[{n}] has no url", url=str(job.status_url))
                if key == "error":  # OperationOutcome files, whatever type they claim
                    rtype: str = OUTCOME
                elif key == "deleted":  # transaction Bundles of DELETE entries, whatever type they claim
                    rtype = DELETED_TYPE
                else:
                    rtype, refused = _output_type(entry.get("type"), asked)
                    if refused is not None:
                        local["not_downloaded"].append({
                            "list": key, "index": n, "type": shown(entry.get("type")), "reason": refused,
                            "url": shown(redact_url(entry["url"]), _SHOWN_URL_CHARS)})
                        continue
                url = self.check_url(self._absolute(entry["url"]), f"the manifest's {key}[{n}]", with_auth=with_auth)
                stem = f"{_LOCAL_PREFIX.get(key, '')}{n:03d}.{rtype}"  # a fixed word, a number, an R4 type only
                fetches.append((key, url, stem, {**entry, "type": rtype, "source_url": entry["url"]}))
        folder.mkdir(parents=True, exist_ok=True)
        for key, url, stem, entry in fetches:
            count = entry.get("count")
            name = await self._fetch(job, url, folder, stem, with_auth,
                                     count if isinstance(count, int) and not isinstance(count, bool) else None)
            local[key].append({**entry, "url": name})
        local[COUNTS_CHECKED] = True  # the files' lines matched their count when downloaded: not counted again
        with open_new(folder / "manifest.json") as fh:
            fh.write((json.dumps(local, indent=2) + "\n").encode("utf-8"))
        return local

    async def _fetch(self, job: Job, url: str, folder: Path, stem: str, with_auth: bool,
                     count: int | None = None) -> str:
        for done in (f"{stem}.ndjson", f"{stem}.ndjson.gz"):
            if (folder / done).is_file() and not (folder / done).is_symlink():
                return done  # finished by an earlier, interrupted run (a link there is not: the rename replaces it)
        part = folder / f".{stem}.part"
        for attempt in range(1, self.options.download_attempts + 1):
            try:
                response, sent_token = await self._get_file(job, url, with_auth)
            except BulkExportError:
                raise  # a redirect the adapter must not follow, or a loop: not retried
            except FhirError as exc:
                if isinstance(exc, FhirServerUnavailable) or (isinstance(exc, FhirAuthError) and not exc.transient):
                    raise  # breaker open (exit 3) or credentials refused (exit 4): not retried, not wrapped
                if attempt == self.options.download_attempts:
                    raise BulkExportError(f"{redact_url(url)}: download failed: {exc}", url=url) from exc
                await self._sleep(2.0 ** attempt)
                continue
            try:
                if response.status_code == 200:
                    size = 0
                    head = b""
                    with open_new(part) as fh:
                        async for chunk in response.aiter_bytes():  # a Content-Encoding decompressed
                            if not head:
                                head = chunk[:2]
                            size += len(chunk)
                            if size > self.options.max_file_bytes:
                                break
                            fh.write(chunk)
                    if size > self.options.max_file_bytes:
                        part.unlink(missing_ok=True)
                        raise self._too_big(url, f"{stem}.ndjson")
                    self.client.stats.add(LABEL, bytes_received=size)
                    gzipped = head == GZIP_MAGIC
                    name = f"{stem}.ndjson.gz" if gzipped else f"{stem}.ndjson"  # a gzip'd file as is
                    try:
                        problem = _damaged(part, gzipped, count, self.options.max_file_bytes)
                    except _TooBig:
                        part.unlink(missing_ok=True)
                        raise self._too_big(url, f"{stem}.ndjson.gz") from None
                    if problem is None:
                        part.rename(folder / name)  # complete: never fetched again
                        return name
                    part.unlink(missing_ok=True)
                    if attempt < self.options.download_attempts:
                        await self._sleep(2.0 ** attempt)
                        continue
                    cut = FhirTransportError(f"GET {redact_url(url)}: the body arrived incomplete ({problem})",
                                             method="GET", url=redact_url(url), kind="dropped")
                    raise BulkExportError(
                        f"{redact_url(url)}: the downloaded file {name} {problem} on each of {attempt} attempt(s): the "
                        "server sent it incomplete; it was not kept: run again later (the download resumes), or report "
                        "it to the hospital", url=url) from cut
                await response.aread()
            except httpx.HTTPError as exc:
                if attempt == self.options.download_attempts:
                    dropped = FhirTransportError(f"GET {redact_url(url)} interrupted: {type(exc).__name__}: {exc}",
                                                 method="GET", url=redact_url(url), kind=transport_failure(exc))
                    dropped.__cause__ = exc  # what the network said; its kind makes the exit code 3
                    raise BulkExportError(f"{redact_url(url)}: download interrupted ({exc}); run again to resume",
                                          url=url) from dropped
                await self._sleep(2.0 ** attempt)
                continue
            finally:
                await response.aclose()
            if (response.status_code == 429 or response.status_code >= 500) and \
                    attempt < self.options.download_attempts:
                await self._sleep(self._retry_after(response, 2.0 ** attempt))
                continue
            hint = ""
            if response.status_code in (401, 403) and not sent_token:
                hint = (" (the manifest does not say requiresAccessToken: true, so no token was sent)" if not with_auth
                        else " (redirected to another origin than the manifest's file URL, so no token was sent)")
            if str(response.request.url) != url:
                hint += f" (redirected to {shown(redact_url(response.request.url), _SHOWN_URL_CHARS)})"
            raise self._error(f"file download{hint}", url, response)
        raise AssertionError("unreachable")

    def _too_big(self, url: str, name: str) -> BulkExportError:
        limit = self.options.max_file_bytes
        return BulkExportError(
            f"{redact_url(url)}: the export file {name} is larger than bulk.max_file_bytes ({limit:,} bytes) once "
            "decompressed: it was not kept and the run stops; if the hospital confirms a file that large, raise "
            "bulk.max_file_bytes in the server config (--config), else report it to the hospital", url=url)

    async def _get_file(self, job: Job, url: str, with_auth: bool) -> tuple[httpx.Response, bool]:
        """``GET`` a file (the body left unread), following redirects — at most :data:`MAX_FILE_REDIRECTS` hops,
        each checked with :meth:`check_url` before it is requested; returns the last answer and whether the
        token went with it. The token goes only to a hop on the origin of ``url`` (the manifest's file URL, which
        the credentials were allowed for) and only when ``with_auth`` (``requiresAccessToken: true``): a
        pre-signed URL on a blob store gets no ``Authorization`` header. The adapter follows the hops itself
        (the client does not), so that this is decided per hop."""
        origin = httpx.URL(url)
        hop, hop_auth = url, with_auth
        seen = {url}
        for hops in range(MAX_FILE_REDIRECTS + 1):
            job.requests["files"] += 1
            response = await self.client.exchange(
                "GET", hop, headers={"Accept": "application/fhir+ndjson", "Accept-Encoding": "gzip"},
                label=LABEL, with_auth=hop_auth, stream=True)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response, hop_auth and self.client.has_credentials
            await response.aclose()
            what = f"the redirect (Location) of the file {shown(redact_url(url), _SHOWN_URL_CHARS)}"
            try:
                nxt = str(httpx.URL(hop).join(location))
            except httpx.InvalidURL:
                nxt = location  # check_url names it and refuses it
            if nxt in seen:
                raise BulkExportError(
                    f"{what} loops: {shown(redact_url(nxt), _SHOWN_URL_CHARS)} again after {hops + 1} "
                    "redirect(s); the file cannot be downloaded: report it to the hospital", url=redact_url(url))
            if hops == MAX_FILE_REDIRECTS:
                raise BulkExportError(
                    f"{what}: more than {MAX_FILE_REDIRECTS} redirects; the file cannot be downloaded: report "
                    "it to the hospital", url=redact_url(url))
            seen.add(nxt)
            hop_auth = with_auth and _same_origin_text(nxt, origin)
            hop = self.check_url(nxt, what, with_auth=hop_auth)
        raise AssertionError("unreachable")

    async def delete(self, job: Job) -> str | None:
        """``DELETE`` the job; returns a warning when the server refused (the files then expire on its own)."""
        if job.status_url is None:
            return None
        self.check_url(job.status_url, "the export's status URL", with_auth=True)
        job.requests["delete"] += 1
        try:
            response = await self.client.exchange("DELETE", job.status_url, headers={"Accept": FHIR_JSON},
                                                  label=LABEL)
        except FhirError as exc:
            return f"DELETE {job.status_url} failed ({exc}); the server deletes the files when they expire"
        if response.status_code in (200, 202, 204, 404, 410):
            return None
        return str(self._error("DELETE", job.status_url, response))

    # -- helpers ---------------------------------------------------------------------------------------
    def check_url(self, url: str, what: str, *, with_auth: bool) -> str:
        """``url`` — named by the server's answer, ``what`` says where — when the adapter may request it:

        * the access token (``with_auth`` and the client has credentials) or a ``user:password@`` in the URL
          never goes over plain http to another host than this machine;
        * the access token goes only to the FHIR server's own scheme, host and port, or over https to a host
          that ``token_hosts`` (``bulk.token_hosts``) allows — by default ``*``, any https host, as the Bulk Data
          IG asks for files with ``requiresAccessToken: true``; a site may restrict it to named hosts;
        * an https server's export is not fetched over plain http (its data would travel unencrypted).

        Otherwise :class:`BulkExportError` naming the URL and the fix; nothing has been sent to it."""
        base = self.client.base_url
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            shown_url = shown(url, _SHOWN_URL_CHARS)
            raise BulkExportError(f"{what} is not a valid URL ({shown_url}): the server's answer is not a Bulk "
                                  "Data answer the adapter can follow; report it to the hospital", url=shown_url) \
                from exc
        safe = shown(redact_url(parsed), _SHOWN_URL_CHARS)
        token = with_auth and self.client.has_credentials
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise BulkExportError(f"{what} is {safe}, not an http(s) URL: the adapter does not follow it; report "
                                  "it to the hospital", url=safe)
        if plain_http_elsewhere(parsed) and (token or parsed.userinfo):
            raise BulkExportError(
                f"refusing to send credentials over plain http to {safe} ({what}, named by the server): the "
                "credentials would travel unencrypted; ask the hospital to serve its Bulk export over https "
                "(plain http only for a server on this machine: localhost, 127.0.0.1, ::1)", url=safe)
        if plain_http_elsewhere(parsed) and base.scheme == "https":
            raise BulkExportError(
                f"refusing to fetch {safe} ({what}) over plain http: the server {base} is https and the export's "
                "data would travel unencrypted; ask the hospital to name https URLs (a server behind a TLS proxy "
                "needs to know its public https address)", url=safe)
        if token and not same_origin(parsed, base) and not (
                parsed.scheme == "https" and ("*" in self.options.token_hosts
                                              or (parsed.host or "").lower() in self.options.token_hosts)):
            raise BulkExportError(
                f"refusing to send the access token to {safe} ({what}): {parsed.host} is not the FHIR server "
                f"{base.scheme}://{base.netloc.decode()} the token is for, and bulk.token_hosts does not list it; if "
                f"the hospital confirms that this host serves its Bulk exports, add it in the server config "
                f"(--config): bulk: {{token_hosts: [{parsed.host}]}} (https only)", url=safe)
        return url

    def _absolute(self, url: str) -> str:
        """Absolute URLs as they are; a relative one (some servers write file URLs so) against the base URL."""
        if url.startswith(("http://", "https://")):
            return url
        return f"{str(self.client.base_url).rstrip('/')}/{url.lstrip('/')}"

    def _retry_after(self, response: httpx.Response, default: float) -> float:
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        seconds = parse_retry_after(response.headers.get("Retry-After"), now=now)
        return min(seconds if seconds is not None else default, self.options.max_retry_after_seconds)

    def _json(self, url: str, response: httpx.Response) -> dict[str, Any]:
        try:
            doc = json.loads(response.content)
        except ValueError as exc:
            raise BulkExportError(f"GET {redact_url(url)}: HTTP 200 but the manifest is not JSON",
                                  url=url) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("output"), list):
            raise BulkExportError(f"GET {redact_url(url)}: HTTP 200 but the body is not a Bulk Data manifest "
                                  "(no output[])", url=url)
        return doc

    def _error(self, what: str, url: str, response: httpx.Response) -> BulkExportError:
        try:
            said = self.client.outcome_messages(response.content)
        except httpx.ResponseNotRead:
            said = []
        answer = "; ".join(said) if said else "no OperationOutcome"
        hints = {
            401: "the credentials were refused: check FHIR_ADAPTER_BEARER_TOKEN / FHIR_ADAPTER_SMART_* / "
                 "FHIR_ADAPTER_OAUTH_* and the client's bulk scopes (system/*.read)",
            403: "the client is not allowed to export: ask the hospital to grant the bulk export scope",
            404: "the server does not know the file (expired, or deleted with its job): run again to start a "
                 "new export" if what.startswith("file download") else
                 "the server does not know it (an unknown Group, or an expired or deleted job): check "
                 "bulk.group_id, or run again to start a new export",
            410: "the job or its files expired: run again to start a new export",
            429: "the server is busy (too many requests, also after waiting): run again later",
        }
        hint = hints.get(response.status_code, "see the server's answer" if response.status_code < 500
                         else "the server failed: run again later")
        # the URL cut to _SHOWN_URL_CHARS: a kick-off's _typeFilter runs to thousands of characters and buried
        # the server's answer and the hint (-v logs the request in full)
        return BulkExportError(f"Bulk Data {what}: GET {shown(redact_url(url), _SHOWN_URL_CHARS)} answered HTTP "
                               f"{response.status_code}: {answer}; {hint}", url=url, status=response.status_code,
                               diagnostics=said)


class _Cut(Exception):
    """A gzip file ends before the end of its gzip data."""


class _TooBig(Exception):
    """A gzip file decompresses to more than the bound."""


def _damaged(path: Path, gzipped: bool, count: int | None = None, limit: int | None = None) -> str | None:
    """What is wrong with a downloaded file, or None. A gzip file (served as is) must decompress to the end of its
    last gzip member (its length and CRC checked): a download cut short would otherwise be kept as finished and
    never fetched again. With the manifest's ``count`` (Bulk Data IG v2: the resources in the file), the file
    must hold that many lines: a download cut at a line end is no valid file otherwise. Read in chunks: a file
    of any size is never held whole."""
    try:
        lines = ndjson_lines(lambda: _content(path, gzipped, limit), count)
    except zlib.error as exc:
        return f"is not valid gzip data ({exc})"
    except _Cut:
        return "ends before the end of its gzip data (truncated)"
    if count is not None and lines != count:
        return f"holds {lines} line(s) where the manifest's count says {count} (incomplete)"
    return None


def _content(path: Path, gzipped: bool, limit: int | None = None) -> Iterator[bytes]:
    """A downloaded file's bytes, decompressed when ``gzipped`` (every gzip member; zero bytes between them are
    padding, as Python's gzip reads them), in chunks of at most :data:`_CHUNK` bytes; :class:`_Cut` when the gzip
    data ends early, ``zlib.error`` when it is damaged, :class:`_TooBig` when it decompresses to more than
    ``limit`` bytes."""
    with open(path, "rb") as fh:
        if not gzipped:
            while chunk := fh.read(_CHUNK):
                yield chunk
            return
        inflater = zlib.decompressobj(wbits=31)
        size = 0
        while chunk := fh.read(_CHUNK):
            while chunk:
                if inflater.eof:  # another gzip member follows
                    chunk = chunk.lstrip(b"\0")
                    if not chunk:
                        break
                    inflater = zlib.decompressobj(wbits=31)
                data = inflater.decompress(chunk, _CHUNK)
                size += len(data)
                if limit is not None and size > limit:
                    raise _TooBig
                yield data
                chunk = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        if not inflater.eof:
            raise _Cut


#: OperationOutcome issue codes of a status error that does not mean the job failed: ``transient`` (the Bulk Data
#: IG) and those of its sub-codes that say "try again" (``exception``, an unexpected error, means it failed)
TRANSIENT_CODES = frozenset({"transient", "lock-error", "no-store", "timeout", "incomplete", "throttled"})


def _failed_job_codes(response: httpx.Response) -> list[str]:
    """The issue codes of a 5xx status answer's OperationOutcome when none is transient (the job failed, IG v2
    "Response - Error Status"); [] when the answer has no OperationOutcome with codes, or one is transient (the
    poll is retried)."""
    try:
        doc = json.loads(response.content)
    except (ValueError, httpx.ResponseNotRead):
        return []
    if not isinstance(doc, dict) or doc.get("resourceType") != OUTCOME:
        return []
    codes = [str(i["code"]) for i in doc.get("issue") or [] if isinstance(i, dict) and isinstance(i.get("code"), str)]
    return [] if not codes or TRANSIENT_CODES & set(codes) else [shown(c, 40) for c in dict.fromkeys(codes)]


def _same_origin_text(url: str, origin: httpx.URL) -> bool:
    try:
        return same_origin(httpx.URL(url), origin)
    except httpx.InvalidURL:
        return False


def requested_types(kickoff: str) -> set[str] | None:
    """The resource types a kick-off URL asked for (``_type``); None when it named none (every type)."""
    asked = [t for k, v in parse_qsl(urlsplit(kickoff).query) if k == "_type" for t in v.split(",") if t]
    return set(asked) if asked else None


def _output_type(value: Any, asked: set[str] | None) -> tuple[str, str | None]:
    """(the R4 type of a manifest ``output[]`` entry, None) when it may be downloaded; else ("", the reason).
    OperationOutcome files are always taken: they carry what the server could not export."""
    if not isinstance(value, str) or not is_r4_type(value):
        return "", NOT_R4_TYPE
    if asked is not None and value not in asked and value != OUTCOME:
        return "", NOT_REQUESTED
    return value, None


def shown(value: Any, limit: int = _SHOWN_CHARS) -> str:
    """Text from a server's answer as it may go into a message or report: JSON-quoted when it is not a plain
    string (control characters, NUL visible as escapes), at most ``limit`` characters."""
    text = value if isinstance(value, str) and value.isprintable() else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_job(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    if not path.is_file() or path.is_symlink():  # a link is no job this client saved
        return None
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return None
    return doc


def save_job(folder: Path, job: Job, **extra: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {"kickoff": job.kickoff, "asked": job.asked or job.kickoff, "status_url": job.status_url,
             "manifest": job.manifest, **extra}
    tmp = folder / f"{STATE_FILE}.tmp"
    with open_new(tmp) as fh:  # never through a link; the rename replaces a link at STATE_FILE, not its target
        fh.write(json.dumps(state, indent=2).encode("utf-8"))
    tmp.replace(folder / STATE_FILE)

