"""The one retry policy of fhir-adapter, declared here and applied at the HTTP edge only.

Nothing deeper in the adapter retries: a stage that gets an exception from :class:`FhirClient` treats it as
final. The policy is built from the server's own signals:

======================================  ==========================================  ======================
What happened                           Wait before the next attempt                GET   batch/transaction
======================================  ==========================================  ======================
429 Too Many Requests, 503 Unavailable  ``Retry-After`` (seconds or HTTP-date),      yes   yes
                                        capped by ``max_retry_after_seconds``;
                                        exponential backoff when absent
408, 500, 502, 504                      exponential backoff with jitter             yes   no
connection refused / connect or pool    exponential backoff with jitter             yes   yes
timeout (request never left the client)
read/write timeout, dropped connection  exponential backoff with jitter             yes   no
(``RemoteProtocolError``, ``ReadError``)
token endpoint 429/5xx/unreachable      as above                                    yes   yes
any other 4xx (400, 401, 403, 404,      not retried: :class:`FhirHttpError`          -     -
409, 410, 412, 422...)                  (401: :class:`FhirAuthError`)
======================================  ==========================================  ======================

Why a POST of a batch/transaction is retried only where it is certainly safe: the adapter's write-back
transactions are built from conditional updates (``PUT Type?identifier=system|value``) with deterministic
business identifiers, so they are idempotent and even a replay would converge to the same server state.
But the client does not know how a caller built its bundle (a plain ``POST`` create is *not* idempotent),
so it only repeats a POST when the server certainly did not process it: 429/503 (rejected before
processing) or a connection that could not be opened (nothing was sent). A 500/502/504 or a connection
dropped after sending may hide a committed transaction; the caller gets the error and decides (re-running
the adapter is the safe retry, because its transactions are idempotent).

Every logical request is bounded by ``max_attempts`` (first attempt included) and by ``max_total_seconds``
(time spent in attempts plus the waits between them; the client gives up instead of starting a wait that
would exceed it). The sleep function is injectable so tests never really wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from fhir_adapter.fhir.errors import FhirAuthError, FhirError, FhirHttpError, FhirTransportError
from fhir_adapter.fhir.settings import ClientSettings

__all__ = ["RetryPolicy", "Sleep", "is_retryable", "parse_retry_after"]

log = logging.getLogger("fhir_adapter.fhir")

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

RETRY_AFTER_STATUSES = frozenset({429, 503})
BACKOFF_STATUSES = frozenset({408, 500, 502, 504})
_SAFE_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_IDEMPOTENT_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


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
        if isinstance(cause, _SAFE_TRANSPORT_ERRORS):
            return True
        return idempotent and isinstance(cause, _IDEMPOTENT_TRANSPORT_ERRORS)
    return False


def _retry_after_of(exc: BaseException | None) -> float | None:
    if isinstance(exc, FhirHttpError | FhirAuthError):
        return exc.retry_after
    return None


class RetryPolicy:
    """Retry policy built from :class:`ClientSettings`; :meth:`call` runs one logical request under it."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._rng = rng if rng is not None else random.Random()

    def backoff(self, attempt_number: int) -> float:
        """Exponential backoff with jitter after failed attempt ``attempt_number`` (1-based)."""
        s = self.settings
        try:
            delay = s.backoff_initial_seconds * 2.0 ** (attempt_number - 1)
        except OverflowError:
            delay = s.backoff_max_seconds
        return min(s.backoff_max_seconds, delay + self._rng.uniform(0.0, s.backoff_jitter_seconds))

    def delay_for(self, exc: BaseException | None, attempt_number: int) -> float:
        """How long to wait after ``exc`` ended attempt ``attempt_number``."""
        retry_after = _retry_after_of(exc)
        if retry_after is not None:
            return min(retry_after, self.settings.max_retry_after_seconds)
        return self.backoff(attempt_number)

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """Run ``attempt`` until it succeeds, fails with a non-retryable error, or the bounds are reached.

        The final exception is re-raised unchanged except that a :class:`FhirError` gets ``attempts`` set.
        ``on_retry(exc, delay)`` is called before each wait (for statistics).
        """
        settings = self.settings
        real_sleep = 0.0
        planned: dict[int, float] = {}

        def wait(state: RetryCallState) -> float:
            # memoised: tenacity may ask for the wait in its stop check and again before sleeping
            if state.attempt_number not in planned:
                exc = state.outcome.exception() if state.outcome is not None else None
                planned[state.attempt_number] = self.delay_for(exc, state.attempt_number)
            return planned[state.attempt_number]

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= settings.max_attempts:
                return True
            elapsed = state.seconds_since_start or 0.0
            used = max(0.0, elapsed - real_sleep) + state.idle_for  # time in attempts + time waited
            return used + wait(state) > settings.max_total_seconds

        async def sleep(seconds: float) -> None:
            nonlocal real_sleep
            started = time.monotonic()
            try:
                await self._sleep(seconds)
            finally:
                real_sleep += time.monotonic() - started

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            assert exc is not None
            delay = state.upcoming_sleep
            source = "Retry-After" if _retry_after_of(exc) is not None else "backoff"
            log.warning(
                "attempt %d of %d failed (%s); retrying in %.2f s (%s)",
                state.attempt_number,
                settings.max_attempts,
                exc,
                delay,
                source,
            )
            if on_retry is not None:
                on_retry(exc, delay)

        retrying = AsyncRetrying(
            sleep=sleep,
            stop=stop,
            wait=wait,
            retry=retry_if_exception(lambda e: is_retryable(e, idempotent=idempotent)),
            before_sleep=before_sleep,
            reraise=True,
        )
        attempt_number = 0
        try:
            async for try_ in retrying:
                attempt_number = try_.retry_state.attempt_number
                with try_:
                    return await attempt()
        except FhirError as exc:
            exc.attempts = attempt_number
            raise
        raise AssertionError("unreachable: tenacity ended without result or exception")  # pragma: no cover
