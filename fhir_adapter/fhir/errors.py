"""Exceptions raised by the FHIR client.

Every message names what was requested (method and URL, query secrets redacted), what the server answered
and, where it helps, what the user can do. No message ever contains a token, a client assertion or a key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

__all__ = [
    "FhirAuthError",
    "FhirError",
    "FhirHttpError",
    "FhirPagingError",
    "FhirResponseError",
    "FhirServerUnavailable",
    "FhirTransportError",
]


class FhirError(Exception):
    """Base class of every error raised by :mod:`fhir_adapter.fhir`.

    ``attempts`` is how many times the request was sent before giving up (1 when it was not retried).
    """

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url
        self.attempts = 1
        self.elapsed = 0.0  # seconds from the first attempt to giving up

    def __str__(self) -> str:
        if self.attempts > 1:
            over = f" over {self.elapsed:.0f} s" if self.elapsed >= 1 else ""
            return f"{self.message} (gave up after {self.attempts} attempts{over})"
        return self.message


class FhirHttpError(FhirError):
    """The server answered with an error status (4xx/5xx) that was not, or no longer, retried.

    ``diagnostics`` holds the ``issue[].diagnostics`` and ``issue[].details.text`` of the OperationOutcome the
    server returned (empty when it returned none); they are also part of the message.
    """

    def __init__(
        self,
        *,
        method: str,
        url: str,
        status: int,
        reason: str,
        diagnostics: Sequence[str] = (),
        body_excerpt: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.diagnostics = list(diagnostics)
        self.retry_after = retry_after
        answer = "; ".join(self.diagnostics) if self.diagnostics else (body_excerpt or "no OperationOutcome")
        message = f"{method} {url} failed with HTTP {status} {reason}: {answer}"
        super().__init__(message, method=method, url=url)


class FhirAuthError(FhirError):
    """Authentication failed: the FHIR server rejected the credentials (HTTP 401, also after one token
    refresh), or the token endpoint / SMART discovery could not issue a token.

    ``transient`` is True when the token endpoint was temporarily unavailable (429/5xx); such errors are
    retried by the client's retry policy like any other transient failure.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, method=method, url=url)
        self.status = status
        self.transient = transient
        self.retry_after = retry_after


class FhirResponseError(FhirError):
    """A successful (2xx) answer whose body is not what FHIR promises: not JSON, malformed JSON, not a JSON
    object, or not the expected resource type."""


class FhirPagingError(FhirError):
    """Paging through a searchset was stopped: a ``next`` link repeated an earlier page (a paging loop) or
    pointed to another host than the configured FHIR base URL."""


class FhirTransportError(FhirError):
    """The request could not be completed at the network level (connection refused or dropped, timeout,
    protocol error) and was not, or no longer, retried. The original httpx exception is ``__cause__``.

    ``kind``: ``dns`` (the host name does not resolve), ``tls`` (certificate not trusted), ``refused``,
    ``timeout``, ``dropped``, ``too-large`` or ``other``; the message says what to check for each."""

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None,
                 kind: str = "other", hint: str = "") -> None:
        super().__init__(message, method=method, url=url)
        self.kind = kind
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}; {self.hint}" if self.hint else text


class FhirServerUnavailable(FhirError):
    """The client stopped sending requests: too many consecutive requests failed for reasons of the server
    (connection refused or dropped, timeouts, 5xx/429 after every retry), across several subjects.

    ``since`` is when the first of those failures happened (UTC); ``last_error`` the failure that tripped it."""

    def __init__(self, message: str, *, since: str, last_error: FhirError | None = None) -> None:
        super().__init__(message)
        self.since = since
        self.last_error = last_error


def outcome_messages(content: bytes) -> list[str]:
    """``issue[].diagnostics`` and ``issue[].details.text`` of an OperationOutcome body (empty otherwise)."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    messages: list[str] = []
    for issue in body.get("issue") or ():
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        texts = [
            t
            for t in (issue.get("diagnostics"), details.get("text") if isinstance(details, dict) else None)
            if isinstance(t, str) and t.strip()
        ]
        if not texts:
            continue
        if len(texts) == 2 and texts[0].strip() == texts[1].strip():
            texts = texts[:1]
        prefix = "/".join(str(issue[k]) for k in ("severity", "code") if isinstance(issue.get(k), str))
        messages.append((f"[{prefix}] " if prefix else "") + " — ".join(t.strip() for t in texts))
    return messages
