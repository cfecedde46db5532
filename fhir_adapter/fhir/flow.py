"""Flow control of the FHIR client: how many requests may be in flight (adaptive), and when to stop sending
altogether because the server is down (circuit breaker)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from fhir_adapter.fhir.errors import FhirAuthError, FhirError, FhirHttpError, FhirServerUnavailable, FhirTransportError

__all__ = ["AdaptiveLimit", "CircuitBreaker", "is_unavailability"]

log = logging.getLogger("fhir_adapter.fhir")


class AdaptiveLimit:
    """Requests in flight, at most ``limit``; additive increase, multiplicative decrease (AIMD).

    A 429 halves the limit (not below 1); after ``limit`` answers in a row that were not throttled the limit
    grows by one again, up to ``maximum``. With ``adaptive=False`` it is a plain semaphore of ``maximum``.
    """

    def __init__(self, maximum: int, *, adaptive: bool = True) -> None:
        self.maximum = maximum
        self.limit = maximum
        self.lowest = maximum  # the lowest limit reached (for the run report)
        self.adaptive = adaptive
        self.in_flight = 0
        self.peak_in_flight = 0
        self._answers_since_change = 0
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def acquire(self) -> None:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    async def release(self, *, throttled: bool | None) -> None:
        """``throttled``: True after a 429, False after any other answer, None when there was no answer."""
        cond = self._condition()
        async with cond:
            self.in_flight -= 1
            if self.adaptive and throttled:
                new = max(1, self.limit // 2)
                if new < self.limit:
                    log.info("server throttles (429): requests in flight lowered from %d to %d", self.limit, new)
                    self.limit = new
                    self.lowest = min(self.lowest, new)
                self._answers_since_change = 0
            elif self.adaptive and throttled is False and self.limit < self.maximum:
                self._answers_since_change += 1
                if self._answers_since_change >= self.limit:
                    self.limit += 1
                    self._answers_since_change = 0
                    log.info("server keeps up again: requests in flight raised to %d", self.limit)
            cond.notify_all()


def is_unavailability(exc: BaseException) -> bool:
    """A failure that says the server is down or overloaded (not a problem of one request) — the FHIR server's,
    or its authorization server's: a token endpoint answering 429 or 5xx after the retries (a transient
    :class:`FhirAuthError`) leaves no request that can be sent, so it counts toward the circuit breaker and ends
    the run as "server unavailable" (exit 3), not one subject after another."""
    if isinstance(exc, FhirHttpError):
        return exc.status in (429, 500, 502, 503, 504)
    if isinstance(exc, FhirAuthError):
        return exc.transient
    if isinstance(exc, FhirTransportError):
        return exc.kind in ("refused", "timeout", "dropped", "other")
    return isinstance(exc, FhirServerUnavailable)


class CircuitBreaker:
    """Opens after ``failures`` consecutive requests failed for the server's reasons (after their retries),
    spanning at least ``subjects`` different labels; any answered request in between resets the count. Once
    open, :meth:`check` raises :class:`FhirServerUnavailable` and nothing more is sent."""

    def __init__(self, failures: int, subjects: int,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.failures = failures
        self.subjects = subjects
        self._clock = clock
        self._streak: list[tuple[str | None, FhirError]] = []
        self._since: dt.datetime | None = None
        self.error: FhirServerUnavailable | None = None

    @property
    def is_open(self) -> bool:
        return self.error is not None

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def succeeded(self) -> None:
        if self.error is None:
            self._streak.clear()
            self._since = None

    def failed(self, exc: FhirError, label: str | None) -> None:
        if self.error is not None:
            return
        if not is_unavailability(exc):
            self.succeeded()  # the server answered: it is up
            return
        if self._since is None:
            self._since = self._clock()
        self._streak.append((label, exc))
        labels = {lab for lab, _ in self._streak}
        if len(self._streak) >= self.failures and len(labels) >= min(self.subjects, self.failures):
            since = self._since.isoformat(timespec="seconds").replace("+00:00", "Z")
            self.error = FhirServerUnavailable(
                f"server unavailable since {since}: {len(self._streak)} requests in a row failed after their "
                f"retries (last: {exc})", since=since, last_error=exc)
            log.warning("%s; no more requests are sent", self.error)
