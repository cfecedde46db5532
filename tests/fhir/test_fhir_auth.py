"""Auth flows: bearer, SMART Backend Services (assertion, discovery, caching, renewal, 401), env, secrecy."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr
from pytest_httpx import HTTPXMock

from fhir_adapter.fhir import (
    BearerToken,
    ClientSettings,
    FhirAuthError,
    FhirClient,
    SmartBackendServices,
    auth_from_env,
    load_private_key,
)
from tests.fhir.fhir_testkit import (
    BASE,
    TOKEN_URL,
    FakeClock,
    FakeSleep,
    TokenServer,
    all_text,
    bearer_of,
    bundle,
    patients,
)

CLIENT_ID = "trial-adapter-001"
KID = "key-2025-01"
SCOPE = "system/Patient.rs system/Observation.rs"
PATIENT = {"resourceType": "Patient", "id": "p1"}


def smart(key: Any, alg: str = "RS384", **kwargs: Any) -> SmartBackendServices:
    """The client under test; ``alg`` may be one it must refuse (RS256), hence the cast."""
    kwargs.setdefault("token_url", TOKEN_URL)
    return SmartBackendServices(CLIENT_ID, key, KID, cast(Literal["RS384", "ES384"], alg), SCOPE, **kwargs)


def key_for(alg: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Any:
    return rsa_key if alg == "RS384" else ec_key


# ------------------------------------------------------------------------------------------ bearer


async def test_bearer_token_is_sent(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", json=PATIENT)
    async with FhirClient(BASE, auth=BearerToken("static-SECRET-abc")) as c:
        await c.read("Patient", "p1")
    request = httpx_mock.get_request()
    assert request is not None and bearer_of(request) == "static-SECRET-abc"


async def test_bearer_token_401_raises_auth_error_at_once(httpx_mock: HTTPXMock, fake_sleep: FakeSleep) -> None:
    httpx_mock.add_response(
        url=f"{BASE}/Patient/p1",
        status_code=401,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": "Token expired"}],
        },
    )
    async with FhirClient(BASE, auth=BearerToken("static-SECRET-abc"), sleep=fake_sleep) as c:
        with pytest.raises(FhirAuthError) as info:
            await c.read("Patient", "p1")
    message = str(info.value)
    assert f"{BASE}/Patient/p1" in message and "Token expired" in message and "cannot be renewed" in message
    assert "static-SECRET-abc" not in message
    assert len(httpx_mock.get_requests()) == 1


def test_reprs_redact_secrets(rsa_key: rsa.RSAPrivateKey) -> None:
    bearer = BearerToken("static-SECRET-abc")
    assert "static-SECRET-abc" not in repr(bearer) and "static-SECRET-abc" not in str(bearer)
    assert "redacted" in repr(bearer)
    auth = smart(rsa_key)
    auth._token = SecretStr("tok-SECRET-x")
    assert "tok-SECRET-x" not in repr(auth) and CLIENT_ID in repr(auth)
    assert "PRIVATE" not in repr(auth)
    assert "static-SECRET-abc" not in repr(FhirClient(BASE, auth=bearer))


# ------------------------------------------------------------------------------------------ assertion


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_client_assertion_claims_and_header(
    httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, alg: str
) -> None:
    key = key_for(alg, rsa_key, ec_key)
    tokens = TokenServer().register(httpx_mock)
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", json=PATIENT, is_reusable=True)
    auth = smart(key, alg)
    async with FhirClient(BASE, auth=auth) as c:
        await c.read("Patient", "p1")
        auth._token = None  # force a second token request
        await c.read("Patient", "p1")
        assert c.stats.total.auth_requests == 2

    assert len(tokens.forms) == 2
    jtis = set()
    for form in tokens.forms:
        assert form["grant_type"] == "client_credentials"
        assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        assert form["scope"] == SCOPE
        assertion = form["client_assertion"]
        header = jwt.get_unverified_header(assertion)
        assert header["alg"] == alg and header["kid"] == KID and header["typ"] == "JWT"
        claims = jwt.decode(assertion, key.public_key(), algorithms=[alg], audience=TOKEN_URL)
        assert claims["iss"] == claims["sub"] == CLIENT_ID
        assert claims["aud"] == TOKEN_URL
        assert 0 < claims["exp"] - claims["iat"] <= 300
        jtis.add(claims["jti"])
        with pytest.raises(jwt.InvalidSignatureError):  # signed by this key, not any other
            other = rsa.generate_private_key(65537, 2048) if alg == "RS384" else ec.generate_private_key(ec.SECP384R1())
            jwt.decode(assertion, other.public_key(), algorithms=[alg], audience=TOKEN_URL)
    assert len(jtis) == 2


def test_assertion_lifetime_is_capped_at_300_seconds(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = smart(rsa_key, assertion_lifetime_seconds=3600)
    claims = jwt.decode(
        auth.client_assertion(TOKEN_URL), rsa_key.public_key(), algorithms=["RS384"], audience=TOKEN_URL
    )
    assert claims["exp"] - claims["iat"] == 300


def test_key_must_match_alg(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError, match="RSA"):
        smart(ec_key, "RS384")
    with pytest.raises(ValueError, match="P-384"):
        smart(rsa_key, "ES384")
    with pytest.raises(ValueError, match="P-384"):
        smart(ec.generate_private_key(ec.SECP256R1()), "ES384")
    with pytest.raises(ValueError, match="RS384 or ES384"):
        smart(rsa_key, "RS256")


def test_token_url_must_be_https(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(FhirAuthError, match="https is required"):
        smart(rsa_key, token_url="http://auth.example.org/token")
    smart(rsa_key, token_url="http://localhost:8080/token")  # loopback is fine


# ------------------------------------------------------------------------------------------ discovery


async def test_token_endpoint_discovered_from_smart_configuration(
    httpx_mock: HTTPXMock, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    discovered = "https://login.example.org/oauth2/v1/token"
    httpx_mock.add_response(
        url=f"{BASE}/.well-known/smart-configuration",
        json={
            "token_endpoint": discovered,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        },
    )
    tokens = TokenServer().register(httpx_mock, url=discovered)
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", json=PATIENT, is_reusable=True)
    auth = smart(ec_key, "ES384", token_url=None, fhir_base_url=BASE + "/")
    async with FhirClient(BASE, auth=auth) as c:
        await c.read("Patient", "p1")
        await c.read("Patient", "p1")
    assert auth.token_url == discovered
    claims = jwt.decode(
        tokens.forms[0]["client_assertion"], ec_key.public_key(), algorithms=["ES384"], audience=discovered
    )
    assert claims["aud"] == discovered
    assert len(tokens.forms) == 1  # cached, and discovery happened once
    assert len(httpx_mock.get_requests(url=f"{BASE}/.well-known/smart-configuration")) == 1


async def test_discovery_without_token_endpoint_is_a_clear_error(
    httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey, fake_sleep: FakeSleep
) -> None:
    httpx_mock.add_response(url=f"{BASE}/.well-known/smart-configuration", json={"capabilities": []})
    auth = smart(rsa_key, token_url=None, fhir_base_url=BASE)
    async with FhirClient(BASE, auth=auth, sleep=fake_sleep) as c:
        with pytest.raises(FhirAuthError, match=r"no token_endpoint.*FHIR_ADAPTER_SMART_TOKEN_URL"):
            await c.read("Patient", "p1")


@pytest.mark.parametrize("status", [500, 503])
async def test_a_discovery_endpoint_answering_5xx_is_transient_not_bad_credentials(
    httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey, fake_sleep: FakeSleep, status: int
) -> None:
    """An authorization server failing (5xx) is a server unavailable (exit 3), as at the token endpoint —
    not rejected credentials (exit 4)."""
    from fhir_adapter.cli.console import exit_code_of

    httpx_mock.add_response(url=f"{BASE}/.well-known/smart-configuration", status_code=status, is_reusable=True)
    auth = smart(rsa_key, token_url=None, fhir_base_url=BASE)
    async with FhirClient(BASE, auth=auth, settings=ClientSettings(max_attempts=2), sleep=fake_sleep) as c:
        with pytest.raises(FhirAuthError) as info:
            await c.read("Patient", "p1")
    assert info.value.transient and exit_code_of(info.value) == 3


# ------------------------------------------------------------------------------------------ renewal


async def test_401_mid_paging_renews_token_once_and_paging_completes(
    httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey, fake_sleep: FakeSleep
) -> None:
    tokens = TokenServer().register(httpx_mock)
    page2, page3 = f"{BASE}/Patient?page=2", f"{BASE}/Patient?page=3"
    pages = {
        f"{BASE}/Patient?_count=1000": bundle(patients("a"), page2),
        page2: bundle(patients("b"), page3),
        page3: bundle(patients("c")),
    }
    sent: list[tuple[str, str]] = []

    def fhir_server(request: httpx.Request) -> httpx.Response:
        token = bearer_of(request)
        sent.append((str(request.url), token))
        if str(request.url) == page2 and token == tokens.tokens[0]:  # the first token expired mid-run
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(200, json=pages[str(request.url)])

    httpx_mock.add_callback(fhir_server, url=re.compile(f"{re.escape(BASE)}/Patient.*"), is_reusable=True)
    auth = smart(rsa_key)
    async with FhirClient(BASE, auth=auth, sleep=fake_sleep) as c:
        ids = [r["id"] async for r in c.search("Patient", label="S-001")]
        assert c.stats.label("S-001").requests == 4  # 3 pages + the replay after the 401
        assert c.stats.total.auth_requests == 2
    assert ids == ["a", "b", "c"]
    assert auth.tokens_issued == 2
    first, second = tokens.tokens
    assert [t for _, t in sent] == [first, first, second, second]
    assert [u for u, _ in sent][1:3] == [page2, page2]
    assert fake_sleep.delays == []  # the renewal is not a retry of the policy


async def test_repeated_401_raises_auth_error(
    httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey, fake_sleep: FakeSleep
) -> None:
    tokens = TokenServer().register(httpx_mock)
    for _ in range(2):
        httpx_mock.add_response(
            url=f"{BASE}/Patient/p1",
            status_code=401,
            json={
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "security", "details": {"text": "scope not granted"}}],
            },
        )
    async with FhirClient(BASE, auth=smart(rsa_key), sleep=fake_sleep) as c:
        with pytest.raises(FhirAuthError) as info:
            await c.read("Patient", "p1")
    message = str(info.value)
    assert f"GET {BASE}/Patient/p1" in message and "401" in message and "scope not granted" in message
    assert all(t not in message for t in tokens.tokens)
    assert len(tokens.forms) == 2  # renewed exactly once
    assert len(httpx_mock.get_requests(url=f"{BASE}/Patient/p1")) == 2


async def test_token_renewed_before_expiry_across_a_long_run(httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock()
    tokens = TokenServer(clock=clock, expires_in=300).register(httpx_mock)
    rejected: list[str] = []

    def fhir_server(request: httpx.Request) -> httpx.Response:
        token = bearer_of(request)
        if not tokens.is_valid(token, clock()):
            rejected.append(token)
            return httpx.Response(401)
        return httpx.Response(200, json=PATIENT)

    httpx_mock.add_callback(fhir_server, url=f"{BASE}/Patient/p1", is_reusable=True)
    auth = smart(rsa_key, clock=clock, refresh_skew_seconds=30)
    start = clock.now
    async with FhirClient(BASE, auth=auth) as c:
        for _ in range(100):  # 100 requests, 20 s apart: a 33-minute pull
            await c.read("Patient", "p1")
            clock.now += 20
    assert rejected == []  # never sent an expired token, never needed the 401 path
    assert auth.tokens_issued == 8  # renewed every 280 s (first 20-s tick at or after 270 s)
    issued_at = [at - start for _, at in tokens.issued]
    assert issued_at == [0, 280, 560, 840, 1120, 1400, 1680, 1960]
    # each assertion was signed at the fake time it was requested
    for form, (_, at) in zip(tokens.forms, tokens.issued, strict=True):
        claims = jwt.decode(
            form["client_assertion"],
            rsa_key.public_key(),
            algorithms=["RS384"],
            audience=TOKEN_URL,
            options={"verify_exp": False, "verify_iat": False},
        )
        assert claims["iat"] == int(at) and claims["exp"] == int(at) + 300


async def test_concurrent_requests_share_one_token_request(httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey) -> None:
    tokens = TokenServer().register(httpx_mock)
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", json=PATIENT, is_reusable=True)
    async with FhirClient(BASE, auth=smart(rsa_key), settings=ClientSettings(max_concurrency=4)) as c:
        await asyncio.gather(*(c.read("Patient", "p1") for _ in range(12)))
    assert len(tokens.forms) == 1


async def test_token_endpoint_rejection_is_an_auth_error(
    httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey, fake_sleep: FakeSleep
) -> None:
    httpx_mock.add_response(
        url=TOKEN_URL,
        method="POST",
        status_code=400,
        json={"error": "invalid_client", "error_description": "unknown kid"},
    )
    async with FhirClient(BASE, auth=smart(rsa_key), sleep=fake_sleep) as c:
        with pytest.raises(FhirAuthError, match="invalid_client unknown kid") as info:
            await c.read("Patient", "p1")
    assert TOKEN_URL in str(info.value)
    assert fake_sleep.delays == []  # not retried


@pytest.mark.parametrize(("answer", "says"), [
    ({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]},
     "failed with HTTP 404 and no OAuth error: nothing issues tokens at that URL — check "
     "FHIR_ADAPTER_SMART_TOKEN_URL"),
    ({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found",
                                                     "diagnostics": "Unknown path auth/tokn"}]},
     "failed with HTTP 404: [error/not-found] Unknown path auth/tokn"),
])
async def test_a_token_url_where_a_fhir_server_answers_404_says_what_to_check(
    httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey, fake_sleep: FakeSleep, answer: dict[str, Any], says: str
) -> None:
    httpx_mock.add_response(url=TOKEN_URL, method="POST", status_code=404, json=answer)
    async with FhirClient(BASE, auth=smart(rsa_key), sleep=fake_sleep) as c:
        with pytest.raises(FhirAuthError) as info:
            await c.read("Patient", "p1")
    assert says in str(info.value) and ": ;" not in str(info.value) and not str(info.value).endswith(": ")


async def test_token_endpoint_503_is_retried(
    httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey, fake_sleep: FakeSleep
) -> None:
    httpx_mock.add_response(url=TOKEN_URL, method="POST", status_code=503, headers={"Retry-After": "3"})
    TokenServer().register(httpx_mock)
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", json=PATIENT)
    async with FhirClient(BASE, auth=smart(rsa_key), sleep=fake_sleep) as c:
        assert await c.read("Patient", "p1") == PATIENT
    assert fake_sleep.delays == [3.0]


async def test_a_token_endpoint_that_stays_down_is_a_server_that_is_down(
    httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey, fake_sleep: FakeSleep
) -> None:
    # the EHR's authorization server answering 503 to every token request: no request can be sent, so after
    # the breaker's run of failures across subjects the run stops (exit 3), instead of failing every subject
    # after its whole retry budget (exit 2)
    from fhir_adapter.cli.console import exit_code_of
    from fhir_adapter.fhir.errors import FhirServerUnavailable
    from fhir_adapter.job.exit_codes import SERVER_UNAVAILABLE

    httpx_mock.add_response(url=TOKEN_URL, method="POST", status_code=503, is_reusable=True)
    settings = ClientSettings(max_attempts=2, circuit_breaker_failures=3, circuit_breaker_subjects=2)
    async with FhirClient(BASE, auth=smart(rsa_key), settings=settings, sleep=fake_sleep) as c:
        for label in ("S-001", "S-001", "S-002"):
            with pytest.raises(FhirAuthError) as failed:
                await c.read("Patient", "p1", label=label)
            assert failed.value.transient and exit_code_of(failed.value) == SERVER_UNAVAILABLE
        sent = len(httpx_mock.get_requests())
        with pytest.raises(FhirServerUnavailable, match=r"server unavailable since .*token request"):
            await c.read("Patient", "p1", label="S-003")
        assert len(httpx_mock.get_requests()) == sent


# ------------------------------------------------------------------------------------------ secrecy


async def test_tokens_and_assertions_never_appear_in_logs(
    httpx_mock: HTTPXMock, rsa_key: rsa.RSAPrivateKey, fake_sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # root: every logger, httpx and httpcore included
    tokens = TokenServer().register(httpx_mock)
    page2 = f"{BASE}/Patient?page=2"
    httpx_mock.add_response(url=f"{BASE}/Patient?_count=1000", json=bundle(patients("a"), page2))
    httpx_mock.add_response(url=page2, status_code=401)
    httpx_mock.add_response(url=page2, status_code=503, headers={"Retry-After": "1"})
    httpx_mock.add_response(url=page2, json=bundle(patients("b")))
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", status_code=401)
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", status_code=401)
    auth = smart(rsa_key)
    errors: list[str] = []
    async with FhirClient(BASE, auth=auth, sleep=fake_sleep) as c:
        await c.search_all("Patient")
        try:
            await c.read("Patient", "p1")
        except FhirAuthError as exc:
            errors.append(str(exc))
            errors.append(repr(exc))
        errors.append(repr(c))
    assert len(tokens.tokens) == 3 and errors
    secrets = [*tokens.tokens, *(f["client_assertion"] for f in tokens.forms)]
    texts = [*all_text(caplog.records), *errors, repr(auth)]
    assert caplog.records  # the run did log
    for secret in secrets:
        assert all(secret not in text for text in texts), "a secret leaked into logs or errors"


async def test_static_token_never_appears_in_logs(
    httpx_mock: HTTPXMock, fake_sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "static-SECRET-7f3a9c"
    # a server that echoes the Authorization header in its error body must not leak it either
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", status_code=403, text=f"forbidden for Bearer {token}")
    async with FhirClient(BASE, auth=BearerToken(token), sleep=fake_sleep) as c:
        with pytest.raises(Exception) as info:
            await c.read("Patient", "p1")
    assert token not in str(info.value)
    assert all(token not in text for text in all_text(caplog.records))


# ------------------------------------------------------------------------------------------ keys and env


def _pem(key: Any, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    pem: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return pem


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    data: dict[str, Any] = json.loads(algorithm.to_jwk(key))
    data["kid"] = kid
    return data


def test_load_private_key_from_pem_and_jwk(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    pem_file = tmp_path / "key.pem"
    pem_file.write_bytes(_pem(rsa_key))
    assert load_private_key(pem_file).private_numbers() == rsa_key.private_numbers()
    assert load_private_key(str(pem_file)).private_numbers() == rsa_key.private_numbers()
    assert load_private_key(_pem(rsa_key).decode()).private_numbers() == rsa_key.private_numbers()

    enc = tmp_path / "enc.pem"
    enc.write_bytes(_pem(ec_key, b"pw"))
    assert load_private_key(enc, password="pw").private_numbers() == ec_key.private_numbers()
    with pytest.raises(ValueError, match="password"):
        load_private_key(enc)

    jwks = {"keys": [_jwk(rsa_key, "a"), _jwk(ec_key, "b")]}
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    assert load_private_key(jwks_file, kid="b").private_numbers() == ec_key.private_numbers()
    assert load_private_key(json.dumps(_jwk(rsa_key, "a"))).private_numbers() == rsa_key.private_numbers()
    with pytest.raises(ValueError, match="2 private keys"):
        load_private_key(jwks_file)
    public = {k: v for k, v in _jwk(rsa_key, "a").items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    with pytest.raises(ValueError, match="public key"):
        load_private_key(json.dumps(public))
    with pytest.raises(ValueError, match="cannot read"):
        load_private_key(tmp_path / "missing.pem")


def test_key_errors_never_quote_key_material(rsa_key: rsa.RSAPrivateKey) -> None:
    broken = _pem(rsa_key).decode()[:200]  # a truncated PEM
    with pytest.raises(ValueError) as info:
        load_private_key(broken)
    assert broken[40:80] not in str(info.value)


def test_auth_from_env_bearer(tmp_path: Path) -> None:
    assert auth_from_env({}) is None
    auth = auth_from_env({"FHIR_ADAPTER_BEARER_TOKEN": "env-SECRET-1"})
    assert isinstance(auth, BearerToken) and auth.redact("x env-SECRET-1 y") == "x <redacted> y"
    token_file = tmp_path / "token"
    token_file.write_text("file-SECRET-2\n")
    auth = auth_from_env({"FHIR_ADAPTER_BEARER_TOKEN_FILE": str(token_file)})
    assert isinstance(auth, BearerToken) and auth.redact("file-SECRET-2") == "<redacted>"
    with pytest.raises(ValueError, match="not both"):
        auth_from_env({"FHIR_ADAPTER_BEARER_TOKEN": "a", "FHIR_ADAPTER_BEARER_TOKEN_FILE": str(token_file)})


def test_auth_from_env_smart(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(_pem(ec_key))
    env = {
        "FHIR_ADAPTER_SMART_CLIENT_ID": CLIENT_ID,
        "FHIR_ADAPTER_SMART_KEY_FILE": str(key_file),
        "FHIR_ADAPTER_SMART_KID": KID,
        "FHIR_ADAPTER_SMART_ALG": "ES384",
        "FHIR_ADAPTER_SMART_SCOPE": SCOPE,
        "FHIR_ADAPTER_SMART_TOKEN_URL": TOKEN_URL,
    }
    auth = auth_from_env(env)
    assert isinstance(auth, SmartBackendServices)
    assert (auth.client_id, auth.kid, auth.alg, auth.scope, auth.token_url) == (
        CLIENT_ID,
        KID,
        "ES384",
        SCOPE,
        TOKEN_URL,
    )
    without_url = {k: v for k, v in env.items() if k != "FHIR_ADAPTER_SMART_TOKEN_URL"}
    discovered = auth_from_env(without_url, fhir_base_url=BASE)
    assert isinstance(discovered, SmartBackendServices) and discovered.token_url is None
    with pytest.raises(ValueError, match="no FHIR base URL"):
        auth_from_env(without_url)
    jwk_env = {**env, "FHIR_ADAPTER_SMART_KEY": json.dumps(_jwk(ec_key, KID))}
    del jwk_env["FHIR_ADAPTER_SMART_KEY_FILE"]
    assert isinstance(auth_from_env(jwk_env), SmartBackendServices)


def test_auth_from_env_errors_name_variables_not_values() -> None:
    with pytest.raises(ValueError) as info:
        auth_from_env({"FHIR_ADAPTER_SMART_CLIENT_ID": "client-xyz", "FHIR_ADAPTER_SMART_SCOPE": "system/*.rs"})
    message = str(info.value)
    assert "FHIR_ADAPTER_SMART_KID" in message and "FHIR_ADAPTER_SMART_KEY_FILE" in message
    assert "client-xyz" not in message
    with pytest.raises(ValueError, match="both bearer") as info:
        auth_from_env({"FHIR_ADAPTER_BEARER_TOKEN": "env-SECRET-1", "FHIR_ADAPTER_SMART_CLIENT_ID": "c"})
    assert "env-SECRET-1" not in str(info.value)
    with pytest.raises(ValueError, match="RS384 or ES384"):
        auth_from_env(
            {
                "FHIR_ADAPTER_SMART_CLIENT_ID": "c",
                "FHIR_ADAPTER_SMART_KEY": "-----BEGIN x",
                "FHIR_ADAPTER_SMART_KID": "k",
                "FHIR_ADAPTER_SMART_SCOPE": "s",
                "FHIR_ADAPTER_SMART_ALG": "HS256",
            }
        )


def test_a_key_that_cannot_be_loaded_names_its_variable_and_file(tmp_path: Path) -> None:
    """Issue 16: an error names the environment variable (and the file; never the key text)."""
    not_a_key = tmp_path / "adapter.yaml"
    not_a_key.write_text("client:\n  max_concurrency: 4\n")
    env = {"FHIR_ADAPTER_SMART_CLIENT_ID": "c", "FHIR_ADAPTER_SMART_KID": "k", "FHIR_ADAPTER_SMART_SCOPE": "s",
           "FHIR_ADAPTER_SMART_TOKEN_URL": TOKEN_URL, "FHIR_ADAPTER_SMART_KEY_FILE": str(not_a_key)}
    with pytest.raises(ValueError, match=rf"^FHIR_ADAPTER_SMART_KEY_FILE={re.escape(str(not_a_key))}: cannot load"):
        auth_from_env(env)
    inline = {**{k: v for k, v in env.items() if k != "FHIR_ADAPTER_SMART_KEY_FILE"},
              "FHIR_ADAPTER_SMART_KEY": "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----"}
    with pytest.raises(ValueError, match=r"^FHIR_ADAPTER_SMART_KEY: cannot load") as info:
        auth_from_env(inline)
    assert "not base64" not in str(info.value)


# ---------------------------------------------------------------------------------- client secret


async def test_a_client_secret_is_sent_form_encoded_in_http_basic_and_tokens_renewed_before_expiry(
        httpx_mock: HTTPXMock) -> None:
    import base64
    from urllib.parse import unquote_plus

    from fhir_adapter.fhir import ClientSecret

    clock = FakeClock()
    tokens = TokenServer(clock=clock).register(httpx_mock)
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", json=PATIENT, is_reusable=True)
    auth = ClientSecret("id with space", "sec:ret%+SECRET", token_url=TOKEN_URL, clock=clock)
    async with FhirClient(BASE, auth=auth) as c:
        await c.read("Patient", "p1")
        clock.now += 290  # within the renewal skew of the 300 s token
        await c.read("Patient", "p1")
    token_requests = [r for r in httpx_mock.get_requests() if str(r.url) == TOKEN_URL]
    assert len(token_requests) == 2 and tokens.forms[0] == {"grant_type": "client_credentials"}  # no scope asked
    user, _, password = base64.b64decode(token_requests[0].headers["Authorization"].removeprefix("Basic ")) \
        .decode().partition(":")
    assert (unquote_plus(user), unquote_plus(password)) == ("id with space", "sec:ret%+SECRET")
    assert "SECRET" not in repr(auth) and auth.redact("x sec:ret%+SECRET y") == "x <redacted> y"


async def test_client_secret_post_sends_the_pair_in_the_form_with_the_scope(httpx_mock: HTTPXMock) -> None:
    from fhir_adapter.fhir import ClientSecret

    tokens = TokenServer().register(httpx_mock)
    httpx_mock.add_response(url=f"{BASE}/Patient/p1", json=PATIENT)
    auth = ClientSecret("c1", "s-SECRET", "https://fhir.example.org/.default", token_url=TOKEN_URL,
                        method="client_secret_post")
    async with FhirClient(BASE, auth=auth) as c:
        await c.read("Patient", "p1")
    assert tokens.forms == [{"grant_type": "client_credentials", "scope": "https://fhir.example.org/.default",
                             "client_id": "c1", "client_secret": "s-SECRET"}]
    token_request = next(r for r in httpx_mock.get_requests() if str(r.url) == TOKEN_URL)
    assert "Authorization" not in token_request.headers


def test_client_secret_from_env_and_its_errors_name_variables_not_values(tmp_path: Path) -> None:
    from fhir_adapter.fhir import ClientSecret

    secret_file = tmp_path / "secret"
    secret_file.write_text("file-SECRET\n")
    found = auth_from_env({"FHIR_ADAPTER_OAUTH_CLIENT_ID": "c", "FHIR_ADAPTER_OAUTH_CLIENT_SECRET_FILE":
                           str(secret_file), "FHIR_ADAPTER_OAUTH_TOKEN_URL": TOKEN_URL}, fhir_base_url=BASE)
    assert isinstance(found, ClientSecret) and found.method == "client_secret_basic" and found.token_url == TOKEN_URL
    for env, said in (
            # a long-lived secret is never sent to a token endpoint a discovery document names
            ({"FHIR_ADAPTER_OAUTH_CLIENT_ID": "c", "FHIR_ADAPTER_OAUTH_CLIENT_SECRET": "env-SECRET"},
             "missing: FHIR_ADAPTER_OAUTH_TOKEN_URL"),
            ({"FHIR_ADAPTER_OAUTH_CLIENT_SECRET": "env-SECRET"}, "missing: FHIR_ADAPTER_OAUTH_CLIENT_ID"),
            ({"FHIR_ADAPTER_OAUTH_CLIENT_ID": "c", "FHIR_ADAPTER_OAUTH_CLIENT_SECRET": "env-SECRET",
              "FHIR_ADAPTER_OAUTH_AUTH_METHOD": "private_key_jwt"}, "FHIR_ADAPTER_OAUTH_AUTH_METHOD must be"),
            ({"FHIR_ADAPTER_OAUTH_CLIENT_ID": "c", "FHIR_ADAPTER_OAUTH_CLIENT_SECRET": "env-SECRET",
              "FHIR_ADAPTER_SMART_CLIENT_ID": "c"}, "both SMART (FHIR_ADAPTER_SMART_CLIENT_ID) and OAuth"),
            ({"FHIR_ADAPTER_OAUTH_CLIENT_ID": "c", "FHIR_ADAPTER_OAUTH_CLIENT_SECRET": "env-SECRET",
              "FHIR_ADAPTER_OAUTH_CLIENT_SECRET_FILE": str(secret_file)}, "not both")):
        with pytest.raises(ValueError, match=re.escape(said)) as info:
            auth_from_env(env, fhir_base_url=BASE)
        assert "env-SECRET" not in str(info.value) and "file-SECRET" not in str(info.value)
