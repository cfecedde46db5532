"""The server's clock against this machine's, read from the ``Date`` header of the server's first answer.

``--since last`` searches ``_lastUpdated=ge<the last run's start>``, and ``_lastUpdated`` is stamped by the
server's clock. A run's start read from this machine's clock is a safe base only when the server's clock is not
behind it: were the server's clock two minutes behind, the changes the EHR made in the two minutes before the
run's reads would be stamped before the recorded start, and no later ``--since last`` would read them again.

An HTTP ``Date`` (RFC 9110 §6.6.1) is whole seconds, and servers cache it (:data:`DATE_STALENESS`): the
server's time when it answered lies in ``[Date, Date + 1 s + staleness)``, and on this machine's clock that
moment lies between sending the request and receiving the answer. The difference server − machine therefore
lies in ``[Date − received, Date + 1 + staleness − sent)``;
every successful answer of the run narrows these bounds (:meth:`ClockOffset.narrowed`) — not an error answer (a
gateway's) nor one a cache kept (an ``Age`` header). Answers whose bounds do not meet leave the bounds spanning
them all, and the base is moved back by the most any of them allows.
:func:`since_base` moves the recorded start back only when that difference is certainly negative (the server
certainly behind), by its largest possible value, so the base is never later on the server's clock than the
run's start. A server whose clock agrees with this machine's within the header's precision (about three
seconds) keeps this machine's start as before; a Bulk run keeps the export's ``transactionTime`` (already the
server's clock).
"""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass

#: a server's clock behind this machine's by more than this is warned of (a lag within it is ordinary drift)
WARN_SECONDS = 5.0
#: how stale a Date header may be: servers cache it (Node and Jetty format it once a second, later when busy)
DATE_STALENESS = 2.0


@dataclass(frozen=True)
class ClockOffset:
    """Bounds, in seconds, of the server's clock minus this machine's. ``disagree``: answers whose bounds do not
    meet (a proxy or a cache answering with another clock, servers behind a balancer whose clocks differ, or the
    server's clock set during the run) — ``low`` is then the most behind and ``high`` the most ahead any answer
    allows."""

    low: float
    high: float
    disagree: bool = False

    @classmethod
    def from_answer(cls, date_header: str | None, sent: float, received: float) -> ClockOffset | None:
        """From one answer's ``Date`` header and this machine's UNIX times around its request (None: no
        usable header)."""
        if not date_header:
            return None
        try:
            when = email.utils.parsedate_to_datetime(date_header)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a header without a zone is read as GMT
            when = when.replace(tzinfo=dt.UTC)
        server = when.timestamp()
        return cls(low=server - received, high=server + 1.0 + DATE_STALENESS - sent)

    def narrowed(self, other: ClockOffset | None) -> ClockOffset:
        """Both answers' bounds at once (each answer's second is cut at another point, so a run's answers narrow
        the bounds to about a request's round trip plus :data:`DATE_STALENESS`). Bounds that do not meet cannot
        say which clock stamps the records: from then on the bounds span every answer's (``disagree``), the safe
        side for :func:`since_base` whichever answer was right."""
        if other is None:
            return self
        if self.disagree or other.disagree or other.low > self.high or other.high < self.low:
            return ClockOffset(low=min(self.low, other.low), high=max(self.high, other.high), disagree=True)
        return ClockOffset(low=max(self.low, other.low), high=min(self.high, other.high))

    @property
    def server_behind(self) -> bool:
        """The server's clock is behind this machine's, whatever the header's rounding and the request's time."""
        return self.high < 0


def since_base(started: dt.datetime, offset: ClockOffset | None) -> dt.datetime:
    """The base a REST run records for the next ``--since last``: the run's start on this machine's clock,
    moved back by the server's lag when the server's clock is certainly behind — and, when the answers
    disagree, by the most any of them allows, so that whichever clock stamps the records none is missed."""
    if offset is None:
        return started
    if offset.disagree:
        return started + dt.timedelta(seconds=min(0.0, offset.low))
    if not offset.server_behind:
        return started
    return started + dt.timedelta(seconds=offset.low)


def clock_warnings(offset: ClockOffset | None) -> dict[str, str]:
    """The run report's warnings, by kind: ``behind`` when the server's clock is more than :data:`WARN_SECONDS`
    behind this machine's, ``disagree`` when its answers' Date headers disagree by more than that."""
    if offset is None:
        return {}
    if offset.disagree:
        if offset.high - offset.low <= WARN_SECONDS + 1:
            return {}
        return {"disagree": f"the Date headers of the server's answers disagree by up to "
                            f"{offset.high - offset.low:.0f} s (a proxy or cache answering with another clock, or "
                            "servers whose clocks differ): the next --since last counts from "
                            f"{max(0.0, -offset.low):.0f} s before this run's start, so that no change is missed "
                            "whichever clock stamps the records"}
    if offset.high >= -WARN_SECONDS:
        return {}
    return {"behind": f"the server's clock is at least {-offset.high:.0f} s behind this machine's (its Date "
                      "header): the next --since last counts from this run's start on the server's clock, so no "
                      "change is missed; an EHR whose clocks disagree also stamps its records inconsistently"}


def described(offset: ClockOffset | None) -> str:
    """The server's clock against this machine's, as ``fhir-adapter check`` prints it."""
    if offset is None:
        return "the server sends no Date header: --since last counts on this machine's clock (keep both in step: NTP)"
    if offset.disagree:
        return (f"the Date headers of the server's answers disagree by up to {offset.high - offset.low:.0f} s (a "
                "proxy or cache with another clock?): --since last counts from the earliest they allow")
    if offset.server_behind:
        lag = f"at least {-offset.high:.0f} s" if -offset.high >= 1 else "up to a second"
        return (f"the server's clock is {lag} behind this machine's: --since last counts on the server's clock (no "
                "change is missed), but have both synchronised (NTP)")
    if offset.low > 0:
        lead = f"at least {offset.low:.0f} s" if offset.low >= 1 else "up to a second"
        return (f"the server's clock is {lead} ahead of this machine's: --since last reads again the subjects "
                "changed in the gap; have both synchronised (NTP)")
    return "in step with this machine's (within the Date header's precision, about three seconds)"
