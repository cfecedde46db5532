"""The one retry policy of fhir-adapter, declared here and applied at the HTTP edge only.

Nothing deeper in the adapter retries: a stage that gets an exception from :class:`FhirClient` treats it as
final. The policy is built from tenacity's own building blocks (:meth:`RetryPolicy.retrying`)::

    AsyncRetrying(
        retry=retry_if_exception(is_retryable),                       # the table below
        wait=wait_retry_after(cap, fallback=wait_random_exponential(initial, max) + wait_random(0, jitter)),
        stop=stop_after_attempt(max_attempts) | stop_before_delay(max_total_seconds),
        before_sleep=<log the failure and the wait, count the retry>,
    )

======================================  ==========================================  ======================
What happened                           Wait before the next attempt                GET   batch/transaction
                                                                                          (not replay-safe)
======================================  ==========================================  ======================
429 Too Many Requests, 503 Unavailable  ``Retry-After`` (seconds or HTTP-date),      yes   yes
                                        capped by ``max_retry_after_seconds``;
                                        exponential backoff when absent
408, 500, 502, 504                      exponential backoff with full jitter        yes   no
connection refused / connect or pool    exponential backoff with full jitter        yes   yes
timeout (request never left the client)
read timeout (a response slower than    exponential backoff with full jitter        yes   no
``read_timeout``, or not complete
within ``max_response_seconds``),
dropped connection (reset, protocol)
token endpoint 429/5xx/unreachable      as above                                    yes   yes
host name does not resolve (DNS), TLS   not retried: :class:`FhirTransportError`     -     -
certificate not trusted                 whose message says what to check
any other 4xx (400, 401, 403, 404,      not retried: :class:`FhirHttpError`          -     -
409, 410, 412, 422...)                  (401: :class:`FhirAuthError`)
======================================  ==========================================  ======================

A batch/transaction Bundle whose every entry is safe to replay (:func:`fhir_adapter.fhir.bundles.replay_safe`:
reads, ``PUT``/``DELETE``, conditional creates with ``ifNoneExist``) is idempotent and is retried like a GET
(the "GET" column): a read timeout (an answer slower than ``read_timeout``) is retried like a 503. The
adapter's write-back transactions are such Bundles: a replay after a commit whose answer was lost creates
nothing again (the conditional creates, the Provenance's included, find what the first attempt created), and
an ``If-Match`` update already made answers 412, which the write-back recognises by reading its results again
(:func:`fhir_adapter.writeback.sink.write_subject`). Any other Bundle (a plain ``POST`` create is *not*
idempotent) is repeated only when the server certainly did not process it (the last column): 429/503
(rejected before processing) or a connection that could not be opened (nothing was sent). A 500/502/504 or a
connection dropped after sending may hide a committed transaction; the caller gets the error and decides.

Every logical request is bounded by ``max_attempts`` (first attempt included) and by ``max_total_seconds``
(the client gives up instead of starting a wait that would end after it). The sleep function is injectable
so tests never really wait.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from fhir_adapter.fhir.errors import FhirAuthError, FhirError, FhirHttpError, FhirTransportError
from fhir_adapter.fhir.settings import ClientSettings

__all__ = ["RetryPolicy", "Sleep", "is_retryable", "parse_retry_after", "transport_failure", "wait_retry_after"]

log = logging.getLogger("fhir_adapter.fhir")

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

RETRY_AFTER_STATUSES = frozenset({429, 503})
BACKOFF_STATUSES = frozenset({408, 500, 502, 504})
_SAFE_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_IDEMPOTENT_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_DNS_TEXT = ("name or service not known", "nodename nor servname", "getaddrinfo failed",
             "name resolution", "no address associated")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header: delta-seconds (``"120"``) or an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``, relative to ``now``, default the current UTC time). A date in the
    past gives 0. Returns None when the header is absent or unparseable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def transport_failure(exc: BaseException) -> str:
    """What kind of network failure an httpx exception is: ``dns`` (the host name does not resolve), ``tls``
    (certificate not trusted / handshake failed), ``refused``, ``timeout``, ``dropped`` or ``other``."""
    chain = _chain(exc)
    text = " ".join(str(e).lower() for e in chain)
    if any(isinstance(e, socket.gaierror) for e in chain) or any(t in text for t in _DNS_TEXT):
        return "dns"
    if any(isinstance(e, ssl.SSLError) for e in chain) or "certificate verify failed" in text:
        return "tls"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in text \
            or "all connection attempts failed" in text:
        return "refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return "dropped"
    return "other"


def is_retryable(exc: BaseException, *, idempotent: bool) -> bool:
    """The single retry predicate (see the module docstring's table)."""
    if isinstance(exc, FhirHttpError):
        if exc.status in RETRY_AFTER_STATUSES:
            return True
        return idempotent and exc.status in BACKOFF_STATUSES
    if isinstance(exc, FhirAuthError):
        return exc.transient
    if isinstance(exc, FhirTransportError):
        cause = exc.__cause__
        if cause is None or transport_failure(cause) in ("dns", "tls"):
            return False  # a name that does not resolve or a certificate not trusted will not heal by waiting
        if isinstance(cause, _SAFE_TRANSPORT_ERRORS):
            return True
        return idempotent and isinstance(cause, _IDEMPOTENT_TRANSPORT_ERRORS)
    return False


def _retry_after_of(exc: BaseException | None) -> float | None:
    if isinstance(exc, FhirHttpError | FhirAuthError):
        return exc.retry_after
    return None


class wait_retry_after(wait_base):  # named like tenacity's wait strategies
    """The server's ``Retry-After`` (capped at ``cap`` seconds) when the failed attempt carried one,
    otherwise the ``fallback`` wait."""

    def __init__(self, cap: float, fallback: wait_base) -> None:
        self.cap = cap
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        retry_after = _retry_after_of(outcome.exception() if outcome is not None else None)
        if retry_after is not None:
            return min(retry_after, self.cap)
        return float(self.fallback(retry_state))


class RetryPolicy:
    """Retry policy built from :class:`ClientSettings`; :meth:`call` runs one logical request under it."""

    def __init__(self, settings: ClientSettings, *, sleep: Sleep | None = None) -> None:
        self.settings = settings
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        s = settings
        self.wait = wait_retry_after(
            s.max_retry_after_seconds,
            fallback=wait_random_exponential(multiplier=s.backoff_initial_seconds, max=s.backoff_max_seconds)
            + wait_random(0, s.backoff_jitter_seconds),
        )
        self.stop = stop_after_attempt(s.max_attempts) | stop_before_delay(s.max_total_seconds)

    def retrying(self, *, idempotent: bool,
                 on_retry: Callable[[BaseException, float], None] | None = None) -> AsyncRetrying:
        """The tenacity controller of one logical request."""
        max_attempts = self.settings.max_attempts

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            if exc is None:
                return
            source = "Retry-After" if _retry_after_of(exc) is not None else "backoff"
            log.warning("attempt %d of %d failed (%s); retrying in %.2f s (%s)", state.attempt_number,
                        max_attempts, exc, state.upcoming_sleep, source)
            if on_retry is not None:
                on_retry(exc, state.upcoming_sleep)

        return AsyncRetrying(
            sleep=self._sleep,
            stop=self.stop,
            wait=self.wait,
            retry=retry_if_exception(lambda e: is_retryable(e, idempotent=idempotent)),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """Run ``attempt`` until it succeeds, fails with a non-retryable error, or the bounds are reached.

        The final exception is re-raised unchanged except that a :class:`FhirError` gets ``attempts`` and
        ``elapsed`` set. ``on_retry(exc, delay)`` is called before each wait (for statistics).
        """
        retrying = self.retrying(idempotent=idempotent, on_retry=on_retry)
        attempt_number = 0
        try:
            async for try_ in retrying:
                attempt_number = try_.retry_state.attempt_number
                with try_:
                    return await attempt()
        except FhirError as exc:
            exc.attempts = attempt_number
            stats = retrying.statistics
            exc.elapsed = max(float(stats.get("delay_since_first_attempt") or 0.0), float(stats.get("idle_for") or 0.0))
            raise
        raise AssertionError("unreachable: tenacity ended without result or exception")  # pragma: no cover
