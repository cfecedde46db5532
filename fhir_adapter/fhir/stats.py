"""Request counters for run reports: totals and per caller-supplied label (e.g. per trial subject)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["ClientStats", "RequestCounts"]


@dataclass
class RequestCounts:
    """Counters of one label (or of the whole client).

    ``requests``: HTTP exchanges with the FHIR server, retries and the replay after a token renewal included;
    ``retries``: waits before a new attempt; ``auth_requests``: SMART discovery and token requests;
    ``failures``: logical requests that ended in an exception; ``bytes_sent`` / ``bytes_received``: request
    bodies and response bodies (as received on the wire) of the FHIR requests.
    """

    requests: int = 0
    retries: int = 0
    auth_requests: int = 0
    failures: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass
class ClientStats:
    """``total`` plus ``by_label``; :meth:`as_dict` gives plain data for a report."""

    total: RequestCounts = field(default_factory=RequestCounts)
    by_label: dict[str, RequestCounts] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.total.requests

    @property
    def retries(self) -> int:
        return self.total.retries

    @property
    def bytes_received(self) -> int:
        return self.total.bytes_received

    def label(self, name: str) -> RequestCounts:
        """Counters of ``name`` (zeros when nothing was counted under it)."""
        return self.by_label.get(name, RequestCounts())

    def add(self, label: str | None, **increments: int) -> None:
        targets = [self.total]
        if label is not None:
            targets.append(self.by_label.setdefault(label, RequestCounts()))
        for counts in targets:
            for name, value in increments.items():
                setattr(counts, name, getattr(counts, name) + value)

    def as_dict(self) -> dict[str, object]:
        return {"total": asdict(self.total), "by_label": {k: asdict(v) for k, v in self.by_label.items()}}
