"""FhirClient: the async FHIR R4 REST client — read, search with paging, batch, transaction, capabilities."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from fhir_adapter.fhir.auth import AUTH_REQUEST_EXTENSION, BearerToken, ClientSecret, RedactingAuth, TokenFlow
from fhir_adapter.fhir.bundles import bundle_link, replay_safe
from fhir_adapter.fhir.errors import (
    FhirAuthError,
    FhirError,
    FhirHttpError,
    FhirPagingError,
    FhirResponseError,
    FhirServerUnavailable,
    FhirTransportError,
    outcome_messages,
)
from fhir_adapter.fhir.flow import AdaptiveLimit, CircuitBreaker
from fhir_adapter.fhir.retry import RETRY_AFTER_STATUSES, RetryPolicy, Sleep, parse_retry_after, transport_failure
from fhir_adapter.fhir.server_clock import ClockOffset
from fhir_adapter.fhir.settings import ClientSettings
from fhir_adapter.fhir.stats import ClientStats
from fhir_adapter.fhir.urls import (
    check_id,
    check_type,
    normalise_base_url,
    redact_url,
    resolve_link,
    resource_path,
    same_origin,
)

__all__ = ["FHIR_JSON", "FhirClient", "SearchParams", "is_loopback", "plain_http_elsewhere"]

log = logging.getLogger("fhir_adapter.fhir")

FHIR_JSON = "application/fhir+json"
FORM = "application/x-www-form-urlencoded"
_LABEL_EXTENSION = "fhir_adapter.label"
_EXCERPT_CHARS = 300
_LOOPBACK = ("localhost", "127.0.0.1", "::1")

SearchParams = Mapping[str, str | int | bool | Sequence[str | int]] | Sequence[tuple[str, str | int]]


def _query_items(params: SearchParams | None) -> list[tuple[str, str]]:
    def text(value: str | int | bool) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    items: list[tuple[str, str]] = []
    if params is None:
        return items
    if isinstance(params, Mapping):
        for key, value in params.items():
            if isinstance(value, list | tuple):
                items.extend((key, text(v)) for v in value)
            else:
                items.append((key, text(value)))  # type: ignore[arg-type]
    else:
        items.extend((key, text(value)) for key, value in params)
    return items


def _body_excerpt(response: httpx.Response) -> str:
    content_type = response.headers.get("Content-Type", "")
    if not response.content:
        return "empty body"
    if "json" in content_type or content_type.startswith("text/") or not content_type:
        text = " ".join(response.content[:2000].decode("utf-8", errors="replace").split())
        return text[:_EXCERPT_CHARS] + ("…" if len(text) > _EXCERPT_CHARS else "")
    return f"{len(response.content)} bytes of {content_type}"


def is_loopback(url: httpx.URL) -> bool:
    """True when ``url`` names this machine (localhost, 127.0.0.1, ::1)."""
    return url.host in _LOOPBACK


def plain_http_elsewhere(url: httpx.URL) -> bool:
    """True when a request to ``url`` would travel unencrypted over the network: plain http to another host
    than this machine."""
    return url.scheme == "http" and not is_loopback(url)


def refuse_credentials_over_plain_http(url: httpx.URL, what: str = "") -> None:
    """Raise :class:`FhirError` when credentials sent to ``url`` would travel over plain http to another host
    than this machine (``what`` names where the URL came from, for the message)."""
    if plain_http_elsewhere(url):
        shown = redact_url(url)
        raise FhirError(f"refusing to send credentials over plain http to {shown}{f' ({what})' if what else ''}: "
                        "use https (plain http only for a server on this machine: localhost, 127.0.0.1, ::1)",
                        url=shown)


def check_transport(base_url: httpx.URL, settings: ClientSettings, *, credentials: bool) -> None:
    """Refuse what would expose the adapter's credentials or data: credentials over plain http to anything
    but this machine, and TLS without certificate verification to another host."""
    loopback = is_loopback(base_url)
    if credentials:
        refuse_credentials_over_plain_http(base_url)
    if settings.insecure_skip_tls_verify and settings.verify is True:
        if not loopback:
            raise FhirError(f"insecure_skip_tls_verify is refused for {base_url.host}: only a server on this machine "
                            "may skip certificate verification; give the server's CA bundle instead (verify: "
                            "/path/ca.pem in --config, or FHIR_ADAPTER_CA_BUNDLE)", url=str(base_url))
        log.warning("INSECURE: TLS certificate verification is disabled for %s (insecure_skip_tls_verify)", base_url)


class FhirClient:
    """Async client of one FHIR R4 server; use as ``async with FhirClient(base_url) as client: ...``.

    Verbs (all return plain JSON dicts; parsing into fhir.resources models is the caller's job):

    * :meth:`read` — ``GET [base]/[type]/[id]``;
    * :meth:`search` (resources), :meth:`search_bundles` (pages), :meth:`search_all` (a list) — ``GET
      [base]/[type]?params`` then only the server's ``Bundle.link[relation=next]`` URLs, never computed page
      numbers; a ``next`` link that repeats a page or leaves the server's host raises
      :class:`FhirPagingError`;
    * :meth:`batch`, :meth:`transaction` — ``POST [base]`` with ``Content-Type: application/fhir+json``;
    * :meth:`capabilities` — ``GET [base]/metadata``.

    Every request goes through one retry policy (:mod:`fhir_adapter.fhir.retry`), one adaptive limit of
    requests in flight (:class:`~fhir_adapter.fhir.flow.AdaptiveLimit`: at most ``max_concurrency``, halved on
    a 429, held only while a request is in flight, not during waits) and one circuit breaker
    (:class:`~fhir_adapter.fhir.flow.CircuitBreaker`: once the server is recognised as down, every request
    raises :class:`FhirServerUnavailable` without being sent), and is counted in :attr:`stats`, in total and
    under the caller's ``label`` (e.g. the trial subject). An answer must be complete within
    ``max_response_seconds`` and at most ``max_response_bytes`` long.

    ``transport`` replaces the network (tests); when given, ``verify``/``http2`` are the transport's business.
    ``sleep`` replaces ``asyncio.sleep`` between attempts and ``clock`` (UNIX time) is used to read HTTP-date
    ``Retry-After`` headers and the server's ``Date`` (:attr:`clock_offset`) — both for tests.
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        *,
        auth: httpx.Auth | None = None,
        settings: ClientSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.settings = settings if settings is not None else ClientSettings()
        self.stats = ClientStats()
        self._auth = auth
        self._clock = clock
        self._retry = RetryPolicy(self.settings, sleep=sleep)
        #: the server's clock against this machine's, from its successful answers' Date headers (None: none yet)
        self.clock_offset: ClockOffset | None = None
        s = self.settings
        self.limit = AdaptiveLimit(s.max_concurrency, adaptive=s.adaptive_concurrency)
        self.breaker = CircuitBreaker(s.circuit_breaker_failures, s.circuit_breaker_subjects)
        check_transport(self.base_url, s, credentials=auth is not None)
        common: dict[str, Any] = {
            "auth": auth,
            "headers": {"Accept": FHIR_JSON, "User-Agent": s.user_agent},
            "timeout": httpx.Timeout(
                connect=s.connect_timeout, read=s.read_timeout, write=s.write_timeout, pool=s.pool_timeout
            ),
            "follow_redirects": False,
            "event_hooks": {"request": [self._count_request]},
        }
        if transport is not None:
            self._http = httpx.AsyncClient(transport=transport, **common)
        else:
            http2 = s.http2 and importlib.util.find_spec("h2") is not None
            if s.http2 and not http2:
                log.warning("http2 requested but the 'h2' package is not installed; using HTTP/1.1")
            verify = self._ssl_verify(s.verify)
            # insecure_skip_tls_verify is for a server on this machine only: every other host (a Bulk file server,
            # a token endpoint) is verified whatever the setting
            local_verify = False if s.insecure_skip_tls_verify and s.verify is True else verify
            limits = httpx.Limits(max_connections=s.max_concurrency, max_keepalive_connections=s.max_concurrency)
            # this machine is reached directly, never through a proxy of the environment (HTTP_PROXY…): the
            # exceptions for a server on this machine (credentials over plain http, no TLS verification) hold
            # only if the request does not leave it
            direct = {f"all://{host if ':' not in host else f'[{host}]'}":
                      httpx.AsyncHTTPTransport(http2=http2, verify=local_verify, limits=limits) for host in _LOOPBACK}
            self._http = httpx.AsyncClient(http2=http2, verify=verify, limits=limits, mounts=direct, **common)

    @staticmethod
    def _ssl_verify(verify: bool | Path) -> bool | ssl.SSLContext:
        if isinstance(verify, Path):
            return ssl.create_default_context(cafile=str(verify))
        return verify

    def __repr__(self) -> str:
        return f"FhirClient(base_url={str(self.base_url)!r}, auth={self._auth!r})"

    @property
    def has_credentials(self) -> bool:
        """True when requests carry credentials (a bearer token, SMART Backend Services)."""
        return self._auth is not None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---------------------------------------------------------------------------------------------- verbs

    async def read(self, resource_type: str, resource_id: str, *, label: str | None = None) -> dict[str, Any]:
        """``GET [base]/[type]/[id]`` → the resource as a dict. A deleted resource raises
        :class:`FhirHttpError` with status 410, an unknown one 404."""
        url = resource_path(self.base_url, check_type(resource_type), check_id(resource_id))
        resource = await self._call("GET", url, label=label, idempotent=True)
        if resource.get("resourceType") != resource_type:
            raise FhirResponseError(
                f"GET {redact_url(url)} returned a {resource.get('resourceType')}, not a {resource_type}",
                method="GET",
                url=redact_url(url),
            )
        return resource

    async def capabilities(self, *, label: str | None = None) -> dict[str, Any]:
        """``GET [base]/metadata`` → the CapabilityStatement."""
        return await self._call("GET", resource_path(self.base_url, "metadata"), label=label, idempotent=True)

    async def exchange(self, method: str, url: str | httpx.URL, *, headers: Mapping[str, str] | None = None,
                       label: str | None = None, with_auth: bool = True, stream: bool = False) -> httpx.Response:
        """One request outside the REST verbs (the Bulk Data protocol: kick-off, status, file, DELETE), answered
        as it is, whatever its status: counted under ``label``, within the limit of requests in flight and the
        circuit breaker, but not retried (the caller owns that protocol's waits). ``with_auth=False`` sends no
        credentials (a file server that does not require the token); ``stream=True`` leaves the body unread
        (the caller reads it and closes the response). A network failure raises :class:`FhirTransportError`.

        The URL may come from a server's answer (a status URL, a manifest's file URL): a request that would
        carry credentials (the client's, when ``with_auth``; a ``user:password@`` in the URL, which httpx
        sends as Basic auth) over plain http to another host than this machine is refused with
        :class:`FhirError` before anything is sent."""
        self.breaker.check()
        extensions = {_LABEL_EXTENSION: label} if label is not None else None
        request = self._http.build_request(method, url, headers=headers, extensions=extensions)
        if (with_auth and self.has_credentials) or request.url.userinfo:
            refuse_credentials_over_plain_http(request.url)
        await self.limit.acquire()
        throttled: bool | None = None
        try:
            response = await self._http.send(request, stream=stream,
                                             auth=httpx.USE_CLIENT_DEFAULT if with_auth else None)
            throttled = response.status_code == 429
        except httpx.RequestError as exc:
            raise self._transport_error(method, redact_url(request.url), exc) from exc
        finally:
            await self.limit.release(throttled=throttled)
        if not stream:
            self.stats.add(label, bytes_received=response.num_bytes_downloaded)
        return response

    def outcome_messages(self, content: bytes) -> list[str]:
        """The diagnostics/details texts of an OperationOutcome body (credentials redacted)."""
        return [self._redact(d) for d in outcome_messages(content)]

    async def search_bundles(
        self, resource_type: str, params: SearchParams | None = None, *, label: str | None = None,
        history: bool = False, trips_breaker: bool = True, resource_id: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the searchset Bundle pages of ``GET [base]/[type]?params`` (with ``history``: the history
        Bundle pages of ``GET [base]/[type]/_history?params``, e.g. ``_since``; with ``history`` and
        ``resource_id``: those of one resource's, ``GET [base]/[type]/[id]/_history``, newest version first,
        a deleted resource's too).

        ``_count`` is set to ``settings.page_size`` unless ``params`` has one. Pages after the first are read
        from ``Bundle.link[relation=next]`` only; relative links are resolved against the base URL (its path
        included). Raises :class:`FhirPagingError` when a ``next`` link points to another scheme/host/port
        than the base URL (credentials must not leave the server) or repeats an earlier page (a loop).

        ``trips_breaker=False``: a failure of this search does not count toward the circuit breaker (the caller
        asks again in smaller parts, e.g. a search for many patients again per patient, whose failures count).
        """
        items = _query_items(params)
        if self.settings.page_size is not None and not any(key == "_count" for key, _ in items):
            items.append(("_count", str(self.settings.page_size)))
        if resource_id is not None and not history:
            raise ValueError("resource_id names an instance history: give history=True")
        segments: tuple[str, ...] = (check_type(resource_type),)
        if resource_id is not None:
            segments += (check_id(resource_id),)
        if history:
            segments += ("_history",)
        url = resource_path(self.base_url, *segments).copy_merge_params(httpx.QueryParams(tuple(items)))
        seen: dict[str, int] = {}
        page_number = 1
        # a first page whose URL is too long for the server's or a proxy's limit (longer than max_get_url_length,
        # or answered 414): POST [type]/_search, same parameters as a form body (a search, so as safe to retry as
        # the GET); later pages follow `next` links
        post_body: bytes | None = None
        if not history and len(str(url)) > self.settings.max_get_url_length:
            post_body = str(httpx.QueryParams(tuple(items))).encode()
        while True:
            seen[str(url)] = page_number
            if post_body is not None:
                search_url = resource_path(self.base_url, check_type(resource_type), "_search")
                bundle = await self._call("POST", search_url, label=label, idempotent=True, content=post_body,
                                          content_type=FORM, trips_breaker=trips_breaker)
                post_body = None
            else:
                try:
                    bundle = await self._call("GET", url, label=label, idempotent=True, trips_breaker=trips_breaker,
                                              handled=(414,) if page_number == 1 and not history else ())
                except FhirHttpError as exc:
                    if exc.status != 414 or page_number != 1 or history:
                        raise
                    # the server (or a proxy) caps URLs below client.max_get_url_length: this search as a POST
                    log.info("%s answered 414 URI Too Long; sending the search as POST %s/_search (lower "
                             "client.max_get_url_length to send such searches so at once)", redact_url(url),
                             resource_type)
                    post_body = str(httpx.QueryParams(tuple(items))).encode()
                    continue
            if bundle.get("resourceType") != "Bundle":
                raise FhirResponseError(
                    f"GET {redact_url(url)} returned a {bundle.get('resourceType')}, not a searchset Bundle",
                    method="GET",
                    url=redact_url(url),
                )
            yield bundle
            link = bundle_link(bundle, "next")
            if link is None:
                return
            next_url = resolve_link(self.base_url, link)
            if not same_origin(next_url, self.base_url):
                raise FhirPagingError(
                    f"refusing to follow the next link of page {page_number} of {resource_type} search to "
                    f"{redact_url(next_url)}: it is not on the FHIR server {self.base_url} (scheme, host or "
                    "port differ). Check the server's configured base address (e.g. behind a proxy).",
                    method="GET",
                    url=redact_url(next_url),
                )
            if str(next_url) in seen:
                raise FhirPagingError(
                    f"paging loop in {resource_type} search: the next link of page {page_number} repeats "
                    f"page {seen[str(next_url)]} ({redact_url(next_url)}); stopped to avoid reading forever",
                    method="GET",
                    url=redact_url(next_url),
                )
            url = next_url
            page_number += 1

    async def search(
        self, resource_type: str, params: SearchParams | None = None, *, label: str | None = None,
        trips_breaker: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the resources (``entry.resource``) of every page of a search, lazily — ``_include``d
        resources too. Entries with ``search.mode = outcome`` (server warnings) are logged, not yielded."""
        async for bundle in self.search_bundles(resource_type, params, label=label, trips_breaker=trips_breaker):
            for index, entry in enumerate(bundle.get("entry") or ()):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict):
                    log.warning("%s search: entry %d of a page has no resource; skipped", resource_type, index)
                    continue
                mode = (entry.get("search") or {}).get("mode")
                if mode == "outcome" or (mode is None and resource.get("resourceType") == "OperationOutcome"):
                    warnings = outcome_messages(json.dumps(resource).encode())
                    log.warning("%s search: server reported %s", resource_type, "; ".join(warnings) or "an outcome")
                    continue
                yield resource

    async def search_all(
        self, resource_type: str, params: SearchParams | None = None, *, label: str | None = None,
        trips_breaker: bool = True,
    ) -> list[dict[str, Any]]:
        """All resources of a search as a list (see :meth:`search`)."""
        return [resource async for resource in self.search(resource_type, params, label=label,
                                                           trips_breaker=trips_breaker)]

    async def batch(self, bundle: dict[str, Any], *, label: str | None = None,
                    trips_breaker: bool = True) -> dict[str, Any]:
        """POST a ``batch`` Bundle to the base URL → the ``batch-response`` Bundle. Entries succeed or fail
        independently: check each ``entry.response.status``. Retried like :meth:`transaction`;
        ``trips_breaker`` as for :meth:`search_bundles`."""
        return await self._post_bundle(bundle, "batch", label, trips_breaker)

    async def transaction(self, bundle: dict[str, Any], *, label: str | None = None) -> dict[str, Any]:
        """POST a ``transaction`` Bundle to the base URL → the ``transaction-response`` Bundle (atomic).

        Retries: a Bundle whose every entry is safe to replay (:func:`~fhir_adapter.fhir.bundles.replay_safe`:
        reads, ``PUT``/``DELETE``, conditional creates — the adapter's write-back transactions are) is retried
        like a read: after 429/503, a read timeout, a dropped connection or a 500/502/504 too; a replay after a
        commit the answer of which was lost duplicates nothing, and an ``If-Match`` update already made answers
        412, which the caller must check (the write-back reads the results again). Any other Bundle (a plain
        ``POST`` create) is only retried when the server certainly did not process it: 429 and 503 (honouring
        ``Retry-After``) and connections that could not be opened (nothing was sent); after a 500/502/504 or a
        connection dropped mid-request it may have been committed: :class:`FhirHttpError` /
        :class:`FhirTransportError` is raised and the caller decides.

        A Bundle with more than ``settings.max_transaction_entries`` entries is refused (ValueError); split it
        with :func:`split_transaction`.
        """
        return await self._post_bundle(bundle, "transaction", label)

    # ---------------------------------------------------------------------------------------------- internals

    async def _post_bundle(self, bundle: dict[str, Any], kind: str, label: str | None,
                           trips_breaker: bool = True) -> dict[str, Any]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or bundle.get("type") != kind:
            raise ValueError(f"{kind}() needs a Bundle dict with type '{kind}'")
        entries = bundle.get("entry") or []
        limit = self.settings.max_transaction_entries
        if len(entries) > limit:
            raise ValueError(
                f"{kind} Bundle has {len(entries)} entries, more than max_transaction_entries={limit}; "
                "split it with split_transaction()"
            )
        try:
            content = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{kind} Bundle is not JSON-serialisable ({exc}); dump models with model_dump(mode='json')"
            ) from None
        # a Bundle whose every entry is idempotent or conditional is retried like a read (a read timeout, a
        # dropped connection, a 5xx); any other only where the server certainly did not process it
        response = await self._call("POST", self.base_url, label=label, idempotent=replay_safe(bundle),
                                    content=content, trips_breaker=trips_breaker)
        if response.get("resourceType") != "Bundle":
            raise FhirResponseError(
                f"POST {redact_url(self.base_url)} ({kind}) returned a {response.get('resourceType')} "
                f"instead of a {kind}-response Bundle",
                method="POST",
                url=redact_url(self.base_url),
            )
        return response

    async def _count_request(self, request: httpx.Request) -> None:
        if request.extensions.get(AUTH_REQUEST_EXTENSION):
            self.stats.add(None, auth_requests=1)
            return
        label = request.extensions.get(_LABEL_EXTENSION)
        body = request.content if isinstance(request.stream, httpx.ByteStream) else b""
        self.stats.add(label if isinstance(label, str) else None, requests=1, bytes_sent=len(body))

    def _redact(self, text: str) -> str:
        if isinstance(self._auth, RedactingAuth):
            return self._auth.redact(text)
        return text

    async def _call(
        self,
        method: str,
        url: httpx.URL,
        *,
        label: str | None,
        idempotent: bool,
        content: bytes | None = None,
        content_type: str = FHIR_JSON,
        trips_breaker: bool = True,
        handled: tuple[int, ...] = (),
    ) -> dict[str, Any]:
        """One logical request under the retry policy → the JSON object of a 2xx answer. ``handled``: statuses
        the caller answers itself (a 414 sent again as POST): raised, but counted as no failure."""

        async def attempt() -> dict[str, Any]:
            self.breaker.check()  # the server is down: nothing more is sent, retries included
            return await self._attempt(method, url, label, content, content_type)

        def on_retry(exc: BaseException, delay: float) -> None:
            self.stats.add(label, retries=1)

        try:
            result = await self._retry.call(attempt, idempotent=idempotent, on_retry=on_retry)
        except FhirServerUnavailable:
            raise
        except FhirError as exc:
            if isinstance(exc, FhirHttpError) and exc.status in handled:
                raise
            self.stats.add(label, failures=1)
            if trips_breaker:
                self.breaker.failed(exc, label)
            raise
        self.breaker.succeeded()
        return result

    async def _attempt(self, method: str, url: httpx.URL, label: str | None, content: bytes | None,
                       content_type: str = FHIR_JSON) -> dict[str, Any]:
        headers = {"Content-Type": content_type} if content is not None else None
        extensions = {_LABEL_EXTENSION: label} if label is not None else None
        request = self._http.build_request(method, url, content=content, headers=headers, extensions=extensions)
        safe_url = redact_url(request.url)
        await self.limit.acquire()
        throttled: bool | None = None
        started = time.monotonic()
        sent = self._clock()
        try:
            try:
                async with asyncio.timeout(self.settings.max_response_seconds):
                    response = await self._receive(request, safe_url)
                if 200 <= response.status_code < 300 and "Age" not in response.headers:  # the server's own answer
                    answer = ClockOffset.from_answer(response.headers.get("Date"), sent, self._clock())
                    self.clock_offset = answer if self.clock_offset is None else self.clock_offset.narrowed(answer)
            except TimeoutError:
                slow = httpx.ReadTimeout(f"the answer was not complete within max_response_seconds="
                                         f"{self.settings.max_response_seconds:g}", request=request)
                raise self._transport_error(method, safe_url, slow) from slow
            throttled = response.status_code == 429
        finally:
            await self.limit.release(throttled=throttled)
        elapsed = time.monotonic() - started
        self.stats.add(label, bytes_received=response.num_bytes_downloaded)
        log.debug("%s %s -> %d (%.3f s)", method, safe_url, response.status_code, elapsed)
        return self._parse(method, safe_url, response)

    async def _receive(self, request: httpx.Request, safe_url: str) -> httpx.Response:
        """Send and read the whole answer, refusing one longer than ``max_response_bytes``."""
        limit = self.settings.max_response_bytes
        try:
            response = await self._http.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise FhirTransportError(
                            f"{request.method} {safe_url}: the answer is larger than max_response_bytes={limit}",
                            method=request.method, url=safe_url, kind="too-large",
                            hint="lower client.page_size (or raise client.max_response_bytes)")
                    chunks.append(chunk)
                response._content = b"".join(chunks)
            finally:
                await response.aclose()
        except httpx.RequestError as exc:
            raise self._transport_error(request.method, safe_url, exc) from exc
        return response

    def _transport_error(self, method: str, safe_url: str, exc: httpx.RequestError) -> FhirTransportError:
        """A network failure as a one-line error: what was tried and what to check."""
        detail = self._redact(str(exc))[:_EXCERPT_CHARS] or "no detail"
        kind = transport_failure(exc)
        url = httpx.URL(safe_url)
        host = url.host
        endpoint = f"{host}:{url.port or (443 if url.scheme == 'https' else 80)}"
        proxies = urllib.request.getproxies()
        proxy = proxies.get(url.scheme) or proxies.get("all")
        via = f"through the proxy {redact_url(proxy)} (from the environment)" if proxy else "directly (no proxy set)"
        hints = {
            "dns": f"the host name {host!r} does not resolve (DNS; not retried): check the URL in --source and "
                   "the proxy settings (HTTPS_PROXY / NO_PROXY)",
            "tls": f"the TLS certificate of {host} is not trusted (not retried): set client.verify in the server "
                   "config, or FHIR_ADAPTER_CA_BUNDLE, to the hospital's CA bundle file; check the URL",
            "refused": f"nothing accepts connections at {endpoint}, tried {via}: check the URL and port in "
                       "--source, that the FHIR server is running, and the proxy settings (HTTPS_PROXY / NO_PROXY)",
            "timeout": f"the server at {endpoint} did not answer in time: it is slow or overloaded; run later, or "
                       "raise client.read_timeout / client.max_response_seconds",
            "dropped": f"the connection to {endpoint} was dropped by the server or a proxy",
        }
        return FhirTransportError(f"{method} {safe_url} failed: {type(exc).__name__}: {detail}", method=method,
                                  url=safe_url, kind=kind, hint=hints.get(kind, ""))

    def _parse(self, method: str, safe_url: str, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if 200 <= status < 300:
            return self._json_body(method, safe_url, response)
        diagnostics = [self._redact(d) for d in outcome_messages(response.content)]
        excerpt = self._redact(_body_excerpt(response))
        if 300 <= status < 400 and "Location" in response.headers:
            location = redact_url(response.headers["Location"])
            excerpt = f"redirect to {location} not followed; if that is the server's address, use it as base URL"
        if status == 401:
            raise self._auth_error(method, safe_url, response, diagnostics or [excerpt])
        retry_after = None
        if status in RETRY_AFTER_STATUSES:
            now = datetime.fromtimestamp(self._clock(), UTC)
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=now)
        raise FhirHttpError(
            method=method,
            url=safe_url,
            status=status,
            reason=response.reason_phrase,
            diagnostics=diagnostics,
            body_excerpt=excerpt,
            retry_after=retry_after,
        )

    def _auth_error(self, method: str, safe_url: str, response: httpx.Response, answer: list[str]) -> FhirAuthError:
        challenge = response.headers.get("WWW-Authenticate")
        said = "; ".join(answer) + (f" (WWW-Authenticate: {self._redact(challenge)})" if challenge else "")
        if self._auth is None:
            hint = (
                "the server requires authentication: set FHIR_ADAPTER_BEARER_TOKEN(_FILE), the "
                "FHIR_ADAPTER_SMART_* variables (SMART Backend Services) or the FHIR_ADAPTER_OAUTH_* variables "
                "(a client secret)"
            )
        elif isinstance(self._auth, TokenFlow):
            what = "secret" if isinstance(self._auth, ClientSecret) else "key"
            hint = (f"rejected again after renewing the access token once at the token endpoint "
                    f"{self._auth.token_url or '(discovered from ' + str(self.base_url) + ')'} for client id "
                    f"{self._auth.client_id!r}: check that client's registration, {what} and scopes there")
        elif isinstance(self._auth, BearerToken):
            hint = ("a static bearer token cannot be renewed: provide a valid one, or let the adapter obtain tokens "
                    "(the FHIR_ADAPTER_SMART_* or FHIR_ADAPTER_OAUTH_* variables)")
        else:
            hint = "the credentials were rejected"
        return FhirAuthError(
            f"{method} {safe_url} answered HTTP 401 Unauthorized: {said}; {hint}",
            method=method,
            url=safe_url,
            status=401,
        )

    def _json_body(self, method: str, safe_url: str, response: httpx.Response) -> dict[str, Any]:
        content_type = response.headers.get("Content-Type", "(none)")
        if not response.content:
            raise FhirResponseError(
                f"{method} {safe_url} answered HTTP {response.status_code} with an empty body, not FHIR JSON",
                method=method,
                url=safe_url,
            )
        try:
            body = json.loads(response.content)
        except UnicodeDecodeError:
            reason = "is not UTF-8 text"
        except json.JSONDecodeError as exc:
            reason = f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        else:
            if isinstance(body, dict) and isinstance(body.get("resourceType"), str):
                return body
            reason = "is JSON but not a FHIR resource (an object with resourceType)"
        raise FhirResponseError(
            f"{method} {safe_url} answered HTTP {response.status_code} with a body that {reason}; "
            f"Content-Type {content_type}",
            method=method,
            url=safe_url,
        )
