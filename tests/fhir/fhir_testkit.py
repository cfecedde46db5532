"""Helpers of the FHIR client tests: fake sleep/clock, Bundle builders, a fake SMART token endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
from pytest_httpx import HTTPXMock

BASE = "https://fhir.example.org/r4"
TOKEN_URL = "https://auth.example.org/oauth2/token"


class FakeSleep:
    """Records the delays the retry policy asked for, without waiting."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.delays: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def bundle(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "self", "url": "ignored"}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def outcome(diagnostics: str, code: str = "processing", text: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if text is not None:
        issue["details"] = {"text": text}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def patients(*ids: str) -> list[dict[str, Any]]:
    return [{"resourceType": "Patient", "id": i} for i in ids]


@dataclass
class TokenServer:
    """A fake SMART token endpoint: issues distinctive tokens, records the form of each token request."""

    clock: FakeClock | None = None
    expires_in: int = 300
    prefix: str = "tok-SECRET-"
    forms: list[dict[str, str]] = field(default_factory=list)
    issued: list[tuple[str, float]] = field(default_factory=list)  # (token, issued at)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.forms.append(form)
        token = f"{self.prefix}{len(self.issued) + 1}-c0ffee"
        self.issued.append((token, self.clock() if self.clock else 0.0))
        return httpx.Response(200, json={"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in})

    @property
    def tokens(self) -> list[str]:
        return [t for t, _ in self.issued]

    def is_valid(self, token: str, now: float) -> bool:
        return any(t == token and now < at + self.expires_in for t, at in self.issued)

    def register(self, httpx_mock: HTTPXMock, url: str = TOKEN_URL) -> TokenServer:
        httpx_mock.add_callback(self, url=url, method="POST", is_reusable=True)
        return self


def bearer_of(request: httpx.Request) -> str:
    value = str(request.headers.get("Authorization", ""))
    assert value.startswith("Bearer "), value
    return value.removeprefix("Bearer ")


def json_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


def all_text(records: list[Any]) -> Iterator[str]:
    for record in records:
        yield record.getMessage()
        yield repr(record.args)
        yield record.exc_text or ""
        yield repr(record.__dict__)
