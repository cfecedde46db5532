"""Authentication flows for the FHIR client, as :class:`httpx.Auth` implementations.

* :class:`BearerToken` — a static access token (e.g. issued out of band for a test server).
* :class:`ClientSecret` — OAuth 2.0 ``client_credentials`` with a client secret (``client_secret_basic`` or
  ``client_secret_post``), for FHIR servers behind an identity provider (Entra ID, Keycloak, Okta); the token
  life cycle below is the same (:class:`TokenFlow`).
* :class:`SmartBackendServices` — SMART App Launch v2 "Backend Services": ``client_credentials`` grant with a
  ``private_key_jwt`` client assertion signed RS384 or ES384. The token endpoint is discovered from
  ``{base}/.well-known/smart-configuration`` unless given; the token is cached, renewed
  ``refresh_skew_seconds`` before it expires (SMART tokens live ≈300 s, so a long pull renews many times),
  and renewed once when the server answers 401 — the request is then sent once more; a second 401 reaches
  the client, which raises :class:`FhirAuthError`.

Secrets come from environment variables or files only, read by :func:`auth_from_env`:

==================================  =====================================================================
Variable                            Meaning
==================================  =====================================================================
``FHIR_ADAPTER_BEARER_TOKEN``       static bearer token (value)
``FHIR_ADAPTER_BEARER_TOKEN_FILE``  file holding the static bearer token (surrounding whitespace ignored)
``FHIR_ADAPTER_SMART_CLIENT_ID``    SMART client_id registered with the EHR (``iss`` = ``sub`` of the JWT)
``FHIR_ADAPTER_SMART_KEY_FILE``     private key file: PEM (PKCS#1/PKCS#8/SEC1) or JWK / JWK Set JSON
``FHIR_ADAPTER_SMART_KEY``          the same key inline (alternative to ``_KEY_FILE``, e.g. a mounted secret)
``FHIR_ADAPTER_SMART_KEY_PASSWORD`` password of an encrypted PEM key (optional)
``FHIR_ADAPTER_SMART_KID``          ``kid`` of the public key registered with the EHR (JWT header)
``FHIR_ADAPTER_SMART_ALG``          ``RS384`` (default) or ``ES384``
``FHIR_ADAPTER_SMART_SCOPE``        requested scopes, e.g. ``system/Patient.rs system/Observation.rs``
``FHIR_ADAPTER_SMART_TOKEN_URL``    token endpoint; when unset it is discovered from the FHIR base URL
``FHIR_ADAPTER_OAUTH_*``            the client-secret flow: ``_CLIENT_ID``, ``_CLIENT_SECRET`` (or
                                    ``_CLIENT_SECRET_FILE``), ``_SCOPE``, ``_TOKEN_URL``, ``_AUTH_METHOD``
==================================  =====================================================================

Bearer, SMART and OAuth variables are mutually exclusive. Tokens, keys and client assertions never appear in log
records, exception messages or ``repr()``.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import json
import logging
import os
import time
import urllib.parse
import uuid
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP384R1, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from pydantic import SecretStr

from fhir_adapter.fhir.errors import FhirAuthError, outcome_messages
from fhir_adapter.fhir.retry import parse_retry_after
from fhir_adapter.fhir.urls import normalise_base_url, redact_url

__all__ = [
    "AUTH_REQUEST_EXTENSION",
    "AUTH_VARS",
    "BearerToken",
    "ClientSecret",
    "PrivateKey",
    "RedactingAuth",
    "SmartBackendServices",
    "auth_from_env",
    "load_private_key",
]

log = logging.getLogger("fhir_adapter.fhir.auth")

PrivateKey = RSAPrivateKey | EllipticCurvePrivateKey
Algorithm = Literal["RS384", "ES384"]
#: extension marking the requests an auth flow sends itself (discovery, token), for the statistics
AUTH_REQUEST_EXTENSION = "fhir_adapter.auth_request"
_MAX_ASSERTION_LIFETIME = 300  # SMART: exp no more than five minutes in the future
_REDACTED = "<redacted>"


class RedactingAuth(httpx.Auth):
    """Base of the adapter's auth flows: knows its secrets so that error messages can be scrubbed."""

    def _secrets(self) -> list[str]:
        return []

    def redact(self, text: str) -> str:
        """``text`` with every secret this flow holds replaced by ``<redacted>``."""
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, _REDACTED)
        return text


class BearerToken(RedactingAuth):
    """A static bearer token. It cannot be renewed: a 401 raises :class:`FhirAuthError` at once."""

    def __init__(self, token: str | SecretStr) -> None:
        secret = token if isinstance(token, SecretStr) else SecretStr(token)
        value = secret.get_secret_value().strip()
        if not value or any(c in value for c in "\r\n"):
            raise ValueError("bearer token is empty or contains line breaks")
        self._token = SecretStr(value)

    def __repr__(self) -> str:
        return f"BearerToken(token={_REDACTED!r})"

    __str__ = __repr__

    def _secrets(self) -> list[str]:
        return [self._token.get_secret_value()]

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        yield request


# --------------------------------------------------------------------------------------------- key loading


def _looks_inline(text: str) -> bool:
    stripped = text.lstrip()
    return stripped.startswith("-----BEGIN") or stripped.startswith("{")


def _key_from_jwk(data: bytes, kid: str | None) -> Any:
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"private key is not valid JWK JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("private key JSON is neither a JWK nor a JWK Set object")
    if "keys" in obj:
        keys = [k for k in obj["keys"] if isinstance(k, dict) and "d" in k]
        if kid is not None:
            keys = [k for k in keys if k.get("kid") == kid]
        if len(keys) != 1:
            which = f" with kid {kid!r}" if kid is not None else ""
            raise ValueError(f"JWK Set holds {len(keys)} private keys{which}; expected exactly one")
        obj = keys[0]
    if "d" not in obj:
        raise ValueError("JWK is a public key (no 'd' member); a private key is needed to sign assertions")
    try:
        return jwt.PyJWK(obj).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load the JWK private key: {type(exc).__name__}") from None


def load_private_key(
    source: str | os.PathLike[str], *, kid: str | None = None, password: str | bytes | None = None
) -> PrivateKey:
    """Load an RSA or EC private key for signing SMART client assertions.

    ``source`` is either a path to a key file or the key text itself (e.g. the value of an environment
    variable): PEM (``-----BEGIN ... PRIVATE KEY-----``, PKCS#1, PKCS#8 or SEC1, optionally encrypted with
    ``password``) or JSON — a private JWK, or a JWK Set from which the one private key (or the one with
    ``kid``) is taken. Errors never quote the key material.
    """
    if isinstance(source, str) and _looks_inline(source):
        data = source.encode()
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read private key file {path}: {exc.strerror}") from None
    if data.lstrip().startswith(b"{"):
        key = _key_from_jwk(data, kid)
    else:
        pw = password.encode() if isinstance(password, str) else password
        try:
            key = serialization.load_pem_private_key(data, password=pw)
        except (ValueError, TypeError) as exc:
            reason = "wrong or missing password" if "password" in str(exc).lower() else "not a PEM private key"
            raise ValueError(f"cannot load the PEM private key: {reason}") from None
    if not isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
        raise ValueError(
            f"unsupported private key type {type(key).__name__}: SMART needs RSA (RS384) or EC P-384 (ES384)"
        )
    return key


def _check_key(key: PrivateKey, alg: str) -> None:
    if alg == "RS384":
        if not isinstance(key, RSAPrivateKey):
            raise ValueError("alg RS384 needs an RSA private key")
        if key.key_size < 2048:
            raise ValueError(f"RSA key of {key.key_size} bits is too short; use at least 2048 bits")
    elif alg == "ES384":
        if not isinstance(key, EllipticCurvePrivateKey) or not isinstance(key.curve, SECP384R1):
            raise ValueError("alg ES384 needs an EC private key on curve P-384 (secp384r1)")
    else:
        raise ValueError(f"alg must be RS384 or ES384 (SMART Backend Services), got {alg!r}")


def _check_endpoint(url: str, what: str) -> str:
    parsed = httpx.URL(url)
    loopback = parsed.host in ("localhost", "127.0.0.1", "::1")
    if parsed.scheme != "https" and not (parsed.scheme == "http" and loopback):
        raise FhirAuthError(
            f"refusing to send client credentials to {what} {redact_url(parsed)}: https is required "
            "(plain http only for localhost)",
            url=redact_url(parsed),
        )
    return str(parsed)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        obj = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


# --------------------------------------------------------------------------------------------- SMART


def _token_error_detail(body: dict[str, Any] | None, content: bytes, status: int) -> str:
    """What a token endpoint's refusal says: the RFC 6749 §5.2 error object (error + error_description carry no
    secret), else an OperationOutcome's texts (a FHIR server answering at that URL), else what the status
    suggests."""
    oauth = [str(body[k]) for k in ("error", "error_description") if isinstance(body.get(k), str)] if body else []
    said = oauth or outcome_messages(content)
    if said:
        return ": " + " ".join(said)
    if status in (404, 405):
        return (" and no OAuth error: nothing issues tokens at that URL — check FHIR_ADAPTER_SMART_TOKEN_URL (or "
                "the token_endpoint of the server's .well-known/smart-configuration)")
    return " and no OAuth error in the answer"


class TokenFlow(RedactingAuth, abc.ABC):
    """OAuth 2.0 ``client_credentials`` (RFC 6749 §4.4) as an :class:`httpx.Auth` flow: the token life cycle
    shared by :class:`SmartBackendServices` and :class:`ClientSecret`, which differ in how the client
    authenticates to the token endpoint (:meth:`_authenticate`).

    Give ``token_url`` or ``fhir_base_url`` (the token endpoint is then discovered from
    ``{fhir_base_url}/.well-known/smart-configuration``). ``clock`` returns the current UNIX time
    (``time.time``); tests inject a fake one.

    Token life cycle: the access token is requested on first use, reused while
    ``clock() < issued + expires_in - skew`` (``skew`` = ``refresh_skew_seconds``, at most half the token's
    lifetime; ``expires_in`` defaults to 300 s when the server omits it) and renewed before it runs out. On a
    401 from the FHIR server the token is renewed once (unless a concurrent request already renewed it) and
    the request is sent once more. Concurrent requests share one renewal.
    """

    #: how the flow is named in messages, and the variable that sets its token endpoint
    kind = "OAuth"
    token_url_variable = "FHIR_ADAPTER_OAUTH_TOKEN_URL"

    def __init__(self, client_id: str, scope: str, token_url: str | None, fhir_base_url: str | None, *,
                 refresh_skew_seconds: float, clock: Callable[[], float]) -> None:
        if not client_id:
            raise ValueError(f"{self.kind} client_id is empty")
        if token_url is None and fhir_base_url is None:
            raise ValueError("give token_url or fhir_base_url (to discover the token endpoint)")
        self.client_id = client_id
        self.scope = " ".join(scope.split())
        self.fhir_base_url = str(normalise_base_url(fhir_base_url)) if fhir_base_url is not None else None
        self.token_url = _check_endpoint(token_url, "token endpoint") if token_url is not None else None
        self.refresh_skew_seconds = refresh_skew_seconds
        self._clock = clock
        self._token: SecretStr | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        #: number of tokens obtained so far (for reports and tests)
        self.tokens_issued = 0

    @abc.abstractmethod
    def _authenticate(self, form: dict[str, str], headers: dict[str, str], audience: str) -> None:
        """Add the client's authentication to the token request (its form and headers)."""

    # -- token life cycle --------------------------------------------------------------------------------

    def _token_is_fresh(self) -> bool:
        return self._token is not None and self._clock() < self._renew_at

    def _token_steps(self) -> Generator[httpx.Request, httpx.Response, None]:
        """Discovery (when needed) and the token request; receives each response with its body read."""
        if self.token_url is None:
            assert self.fhir_base_url is not None
            well_known = self.fhir_base_url.rstrip("/") + "/.well-known/smart-configuration"
            response = yield httpx.Request(
                "GET",
                well_known,
                headers={"Accept": "application/json"},
                extensions={AUTH_REQUEST_EXTENSION: True},
            )
            self._accept_discovery(well_known, response)
        assert self.token_url is not None
        log.debug("requesting a %s access token from %s for client_id %s", self.kind, self.token_url,
                  self.client_id)
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers = {"Accept": "application/json"}
        self._authenticate(form, headers, self.token_url)
        response = yield httpx.Request(
            "POST",
            self.token_url,
            data=form,
            headers=headers,
            extensions={AUTH_REQUEST_EXTENSION: True},
        )
        self._accept_token(response)

    def _accept_discovery(self, url: str, response: httpx.Response) -> None:
        if response.status_code != 200:
            raise FhirAuthError(
                f"SMART discovery GET {url} failed with HTTP {response.status_code}; set the token endpoint "
                f"explicitly ({self.token_url_variable}) if the server does not publish it",
                method="GET",
                url=url,
                status=response.status_code,
                transient=response.status_code == 429 or response.status_code >= 500,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        doc = _json_object(response)
        endpoint = doc.get("token_endpoint") if doc else None
        if not isinstance(endpoint, str) or not endpoint:
            raise FhirAuthError(
                f"SMART discovery document {url} has no token_endpoint; set {self.token_url_variable}",
                method="GET",
                url=url,
            )
        assert doc is not None
        self._check_discovery(url, doc)
        self.token_url = _check_endpoint(endpoint, "token endpoint")

    def _check_discovery(self, url: str, doc: dict[str, Any]) -> None:
        """What the flow checks in the server's SMART configuration besides its token endpoint."""

    def _accept_token(self, response: httpx.Response) -> None:
        url = self.token_url or "?"
        body = _json_object(response)
        if response.status_code != 200:
            status = response.status_code
            detail = _token_error_detail(body, response.content, status)
            raise FhirAuthError(
                self.redact(f"{self.kind} token request POST {url} for client id {self.client_id!r} failed with "
                            f"HTTP {status}{detail}"),
                method="POST",
                url=url,
                status=status,
                transient=status == 429 or status >= 500,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        token = body.get("access_token") if body else None
        if not isinstance(token, str) or not token:
            raise FhirAuthError(f"{self.kind} token endpoint {url} answered 200 without an access_token", url=url)
        assert body is not None
        token_type = body.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise FhirAuthError(f"{self.kind} token endpoint {url} issued a {token_type!r} token, not bearer",
                                url=url)
        expires_in = body.get("expires_in", 300)
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300.0
        skew = min(self.refresh_skew_seconds, lifetime / 2)
        self._token = SecretStr(token)
        self._renew_at = self._clock() + lifetime - skew
        self.tokens_issued += 1
        log.info("obtained %s access token #%d (expires in %.0f s)", self.kind, self.tokens_issued, lifetime)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        rejected: SecretStr | None = None
        for attempt in (1, 2):
            async with self._lock:
                if rejected is not None and self._token is rejected:
                    self._token = None  # renew once on a 401, unless a concurrent request already did
                if not self._token_is_fresh():
                    steps = self._token_steps()
                    step = next(steps)
                    while True:
                        response = yield step
                        await response.aread()
                        try:
                            step = steps.send(response)
                        except StopIteration:
                            break
                token = self._token
            assert token is not None
            request.headers["Authorization"] = f"Bearer {token.get_secret_value()}"
            response = yield request
            if response.status_code != 401 or attempt == 2:
                return
            log.info("%s %s answered 401; renewing the access token once", request.method, redact_url(request.url))
            rejected = token

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError(f"{type(self).__name__} works with httpx.AsyncClient (FhirClient) only")
        yield request  # pragma: no cover - makes this a generator


class SmartBackendServices(TokenFlow):
    """SMART Backend Services (``client_credentials`` + ``private_key_jwt``): the client authenticates with a
    signed JWT (:meth:`client_assertion`). ``private_key`` is a key object or anything :func:`load_private_key`
    accepts. The token life cycle is :class:`TokenFlow`'s.
    """

    kind = "SMART"
    token_url_variable = "FHIR_ADAPTER_SMART_TOKEN_URL"

    def __init__(
        self,
        client_id: str,
        private_key: PrivateKey | str | os.PathLike[str],
        kid: str,
        alg: Algorithm,
        scope: str,
        token_url: str | None = None,
        fhir_base_url: str | None = None,
        *,
        refresh_skew_seconds: float = 30.0,
        assertion_lifetime_seconds: int = _MAX_ASSERTION_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not client_id:
            raise ValueError("SMART client_id is empty")
        if not kid:
            raise ValueError("SMART kid is empty: the EHR picks the verification key by kid")
        if not scope.strip():
            raise ValueError("SMART scope is empty; request system/ scopes, e.g. 'system/Observation.rs'")
        if token_url is None and fhir_base_url is None:
            raise ValueError("give token_url or fhir_base_url (to discover the token endpoint)")
        key = (
            private_key
            if isinstance(private_key, RSAPrivateKey | EllipticCurvePrivateKey)
            else (load_private_key(private_key, kid=kid))
        )
        _check_key(key, alg)
        super().__init__(client_id, scope, token_url, fhir_base_url, refresh_skew_seconds=refresh_skew_seconds,
                         clock=clock)
        self.kid = kid
        self.alg: Algorithm = alg
        self.assertion_lifetime_seconds = max(1, min(int(assertion_lifetime_seconds), _MAX_ASSERTION_LIFETIME))
        self._key = key
        self._last_assertion: SecretStr | None = None

    def __repr__(self) -> str:
        return (
            f"SmartBackendServices(client_id={self.client_id!r}, kid={self.kid!r}, alg={self.alg!r}, "
            f"scope={self.scope!r}, token_url={self.token_url!r}, private_key={_REDACTED!r}, "
            f"token={_REDACTED if self._token else None!r})"
        )

    __str__ = __repr__

    def _secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self._token, self._last_assertion) if s is not None]

    def client_assertion(self, audience: str) -> str:
        """A fresh signed authentication JWT for the token endpoint ``audience``: header ``alg``, ``kid``,
        ``typ``; claims ``iss`` = ``sub`` = client_id, ``aud``, random ``jti``, ``iat``, ``exp`` ≤ iat+300."""
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + self.assertion_lifetime_seconds,
        }
        token = jwt.encode(claims, self._key, algorithm=self.alg, headers={"kid": self.kid, "typ": "JWT"})
        self._last_assertion = SecretStr(token)
        return token

    def _authenticate(self, form: dict[str, str], headers: dict[str, str], audience: str) -> None:
        form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        form["client_assertion"] = self.client_assertion(audience)

    def _check_discovery(self, url: str, doc: dict[str, Any]) -> None:
        algs = doc.get("token_endpoint_auth_signing_alg_values_supported")
        if isinstance(algs, list) and algs and self.alg not in algs:
            log.warning("server %s advertises signing algorithms %s, not %s", url, algs, self.alg)


ClientSecretMethod = Literal["client_secret_basic", "client_secret_post"]


class ClientSecret(TokenFlow):
    """OAuth 2.0 ``client_credentials`` with a client secret — the FHIR servers behind an identity provider
    (Microsoft Entra ID for Azure Health Data Services, Keycloak, Okta) rather than SMART Backend Services.
    ``token_url`` is required: a long-lived secret is sent only to the endpoint the operator names, never to one
    a discovery document (which the FHIR server serves without authentication) names.
    ``method``: ``client_secret_basic`` (RFC 6749 §2.3.1: HTTP Basic with the form-encoded id and secret, which
    every authorization server supports) or ``client_secret_post`` (the two in the form). ``scope`` may be empty
    (a server with a default scope); Entra ID wants ``<FHIR service URL>/.default``. The token life cycle is
    :class:`TokenFlow`'s.
    """

    def __init__(
        self,
        client_id: str,
        secret: str | SecretStr,
        scope: str = "",
        token_url: str = "",
        *,
        method: ClientSecretMethod = "client_secret_basic",
        refresh_skew_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        value = (secret.get_secret_value() if isinstance(secret, SecretStr) else secret).strip()
        if not value or any(c in value for c in "\r\n"):
            raise ValueError("OAuth client secret is empty or contains line breaks")
        if method not in ("client_secret_basic", "client_secret_post"):
            raise ValueError(f"OAuth client authentication must be client_secret_basic or client_secret_post, "
                             f"not {method!r}")
        if not token_url:
            raise ValueError("OAuth client secret: give the token endpoint (token_url); a secret is never sent to a "
                             "discovered one")
        super().__init__(client_id, scope, token_url, None, refresh_skew_seconds=refresh_skew_seconds, clock=clock)
        self.method: ClientSecretMethod = method
        self._secret = SecretStr(value)
        pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(value)}"
        self._basic = SecretStr(base64.b64encode(pair.encode()).decode("ascii"))

    def __repr__(self) -> str:
        return (f"ClientSecret(client_id={self.client_id!r}, method={self.method!r}, scope={self.scope!r}, "
                f"token_url={self.token_url!r}, secret={_REDACTED!r}, token={_REDACTED if self._token else None!r})")

    __str__ = __repr__

    def _secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self._token, self._secret, self._basic) if s is not None]

    def _authenticate(self, form: dict[str, str], headers: dict[str, str], audience: str) -> None:
        if self.method == "client_secret_basic":
            headers["Authorization"] = f"Basic {self._basic.get_secret_value()}"
        else:
            form["client_id"] = self.client_id
            form["client_secret"] = self._secret.get_secret_value()


# --------------------------------------------------------------------------------------------- from env

_BEARER_VARS = ("FHIR_ADAPTER_BEARER_TOKEN", "FHIR_ADAPTER_BEARER_TOKEN_FILE")
_OAUTH_VARS = (
    "FHIR_ADAPTER_OAUTH_CLIENT_ID",
    "FHIR_ADAPTER_OAUTH_CLIENT_SECRET",
    "FHIR_ADAPTER_OAUTH_CLIENT_SECRET_FILE",
    "FHIR_ADAPTER_OAUTH_SCOPE",
    "FHIR_ADAPTER_OAUTH_TOKEN_URL",
    "FHIR_ADAPTER_OAUTH_AUTH_METHOD",
)
_SMART_VARS = (
    "FHIR_ADAPTER_SMART_CLIENT_ID",
    "FHIR_ADAPTER_SMART_KEY_FILE",
    "FHIR_ADAPTER_SMART_KEY",
    "FHIR_ADAPTER_SMART_KEY_PASSWORD",
    "FHIR_ADAPTER_SMART_KID",
    "FHIR_ADAPTER_SMART_ALG",
    "FHIR_ADAPTER_SMART_SCOPE",
    "FHIR_ADAPTER_SMART_TOKEN_URL",
)
#: every variable of the three ways of authenticating
AUTH_VARS = (*_BEARER_VARS, *_SMART_VARS, *_OAUTH_VARS)


def auth_from_env(
    env: Mapping[str, str],
    *,
    fhir_base_url: str | None = None,
    clock: Callable[[], float] = time.time,
) -> BearerToken | SmartBackendServices | ClientSecret | None:
    """Build the auth flow described by the environment (see the module docstring for the variables).

    Returns None when no auth variable is set (an open server, e.g. a local HAPI). ``fhir_base_url`` is used
    for SMART discovery when ``FHIR_ADAPTER_SMART_TOKEN_URL`` is not set. Errors name the variables, never
    their values.
    """

    def get(name: str) -> str | None:
        value = env.get(name)
        return value if value and value.strip() else None

    bearer = [n for n in _BEARER_VARS if get(n)]
    smart = [n for n in _SMART_VARS if get(n)]
    oauth = [n for n in _OAUTH_VARS if get(n)]
    kinds = [(what, names) for what, names in (("bearer", bearer), ("SMART", smart), ("OAuth", oauth)) if names]
    if len(kinds) > 1:
        said = [f"{what} ({', '.join(names)})" for what, names in kinds]
        raise ValueError(("both " if len(said) == 2 else "") + ", ".join(said[:-1]) + f" and {said[-1]} variables "
                         "are set: set those of one way of authenticating only")
    if oauth:
        return _client_secret_from_env(get, fhir_base_url, clock)
    if bearer:
        if len(bearer) == 2:
            raise ValueError("set FHIR_ADAPTER_BEARER_TOKEN or FHIR_ADAPTER_BEARER_TOKEN_FILE, not both")
        token = get("FHIR_ADAPTER_BEARER_TOKEN")
        if token is None:
            path = Path(get("FHIR_ADAPTER_BEARER_TOKEN_FILE") or "")
            try:
                token = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"FHIR_ADAPTER_BEARER_TOKEN_FILE: cannot read {path}: {exc.strerror}") from None
        return BearerToken(token)
    if not smart:
        return None

    missing = [
        n for n in ("FHIR_ADAPTER_SMART_CLIENT_ID", "FHIR_ADAPTER_SMART_KID", "FHIR_ADAPTER_SMART_SCOPE") if not get(n)
    ]
    key_file, key_inline = get("FHIR_ADAPTER_SMART_KEY_FILE"), get("FHIR_ADAPTER_SMART_KEY")
    if not key_file and not key_inline:
        missing.append("FHIR_ADAPTER_SMART_KEY_FILE (or FHIR_ADAPTER_SMART_KEY)")
    if missing:
        raise ValueError(f"SMART Backend Services configuration incomplete; missing: {', '.join(missing)}")
    if key_file and key_inline:
        raise ValueError("set FHIR_ADAPTER_SMART_KEY_FILE or FHIR_ADAPTER_SMART_KEY, not both")
    alg = (get("FHIR_ADAPTER_SMART_ALG") or "RS384").upper()
    if alg not in ("RS384", "ES384"):
        raise ValueError(f"FHIR_ADAPTER_SMART_ALG must be RS384 or ES384, got {alg!r}")
    token_url = get("FHIR_ADAPTER_SMART_TOKEN_URL")
    if token_url is None and fhir_base_url is None:
        raise ValueError("FHIR_ADAPTER_SMART_TOKEN_URL is not set and no FHIR base URL was given for discovery")
    kid = get("FHIR_ADAPTER_SMART_KID") or ""
    if key_file:
        try:
            key = load_private_key(Path(key_file), kid=kid, password=get("FHIR_ADAPTER_SMART_KEY_PASSWORD"))
        except ValueError as exc:  # name the variable and the file (a path is no secret; the key never shown)
            raise ValueError(f"FHIR_ADAPTER_SMART_KEY_FILE={key_file}: {exc}") from None
    else:
        if not _looks_inline(key_inline or ""):
            raise ValueError("FHIR_ADAPTER_SMART_KEY must hold PEM or JWK JSON text (use _KEY_FILE for a path)")
        try:
            key = load_private_key(key_inline or "", kid=kid, password=get("FHIR_ADAPTER_SMART_KEY_PASSWORD"))
        except ValueError as exc:
            raise ValueError(f"FHIR_ADAPTER_SMART_KEY: {exc}") from None
    return SmartBackendServices(
        client_id=get("FHIR_ADAPTER_SMART_CLIENT_ID") or "",
        private_key=key,
        kid=kid,
        alg="ES384" if alg == "ES384" else "RS384",
        scope=get("FHIR_ADAPTER_SMART_SCOPE") or "",
        token_url=token_url,
        fhir_base_url=fhir_base_url,
        clock=clock,
    )


def _client_secret_from_env(get: Callable[[str], str | None], fhir_base_url: str | None,
                            clock: Callable[[], float]) -> ClientSecret:
    """The OAuth client-secret flow the ``FHIR_ADAPTER_OAUTH_*`` variables describe."""
    client_id = get("FHIR_ADAPTER_OAUTH_CLIENT_ID")
    inline, file = get("FHIR_ADAPTER_OAUTH_CLIENT_SECRET"), get("FHIR_ADAPTER_OAUTH_CLIENT_SECRET_FILE")
    missing = ([] if client_id else ["FHIR_ADAPTER_OAUTH_CLIENT_ID"]) + \
        ([] if inline or file else ["FHIR_ADAPTER_OAUTH_CLIENT_SECRET (or FHIR_ADAPTER_OAUTH_CLIENT_SECRET_FILE)"])
    if missing:
        raise ValueError(f"OAuth client credentials configuration incomplete; missing: {', '.join(missing)}")
    if inline and file:
        raise ValueError("set FHIR_ADAPTER_OAUTH_CLIENT_SECRET or FHIR_ADAPTER_OAUTH_CLIENT_SECRET_FILE, not both")
    if file:
        try:
            secret = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"FHIR_ADAPTER_OAUTH_CLIENT_SECRET_FILE: cannot read {file}: {exc.strerror}") from None
    else:
        secret = inline or ""
    method = get("FHIR_ADAPTER_OAUTH_AUTH_METHOD") or "client_secret_basic"
    if method not in ("client_secret_basic", "client_secret_post"):
        raise ValueError(f"FHIR_ADAPTER_OAUTH_AUTH_METHOD must be client_secret_basic or client_secret_post, got "
                         f"{method!r}")
    token_url = get("FHIR_ADAPTER_OAUTH_TOKEN_URL")
    if token_url is None:  # a long-lived secret goes only where the operator says, never where a document says
        raise ValueError("OAuth client credentials configuration incomplete; missing: FHIR_ADAPTER_OAUTH_TOKEN_URL "
                         "(the identity provider's token endpoint; a client secret is never sent to a discovered "
                         "one)")
    try:
        return ClientSecret(client_id or "", secret, get("FHIR_ADAPTER_OAUTH_SCOPE") or "", token_url,
                            method="client_secret_post" if method == "client_secret_post"
                            else "client_secret_basic", clock=clock)
    except ValueError as exc:
        raise ValueError(f"FHIR_ADAPTER_OAUTH_*: {exc}") from None


#: every environment variable :func:`auth_from_env` reads, and its meaning (docs/integrator-guide.md is
#: generated from it by fhir_adapter/cli/docgen.py)
AUTH_ENV: dict[str, str] = {
    "FHIR_ADAPTER_BEARER_TOKEN": "static bearer token (value); not with the SMART variables",
    "FHIR_ADAPTER_BEARER_TOKEN_FILE": "file holding the static bearer token (surrounding whitespace ignored)",
    "FHIR_ADAPTER_SMART_CLIENT_ID": "SMART Backend Services: client_id registered with the EHR (iss = sub of the JWT)",
    "FHIR_ADAPTER_SMART_KEY_FILE": "SMART: private key file, PEM (PKCS#1/PKCS#8/SEC1) or JWK / JWK Set JSON",
    "FHIR_ADAPTER_SMART_KEY": "SMART: the same key inline (alternative to _KEY_FILE, e.g. a mounted secret)",
    "FHIR_ADAPTER_SMART_KEY_PASSWORD": "SMART: password of an encrypted PEM key (optional)",
    "FHIR_ADAPTER_SMART_KID": "SMART: kid of the public key registered with the EHR (JWT header)",
    "FHIR_ADAPTER_SMART_ALG": "SMART: RS384 (default) or ES384",
    "FHIR_ADAPTER_SMART_SCOPE": "SMART: requested scopes, e.g. system/Patient.rs system/Observation.rs",
    "FHIR_ADAPTER_SMART_TOKEN_URL": "SMART: token endpoint; when unset it is discovered from "
                                    "[base]/.well-known/smart-configuration",
    "FHIR_ADAPTER_OAUTH_CLIENT_ID": "OAuth 2.0 client credentials with a client secret (an identity provider such "
                                    "as Entra ID, Keycloak or Okta in front of the FHIR server): the client id",
    "FHIR_ADAPTER_OAUTH_CLIENT_SECRET": "OAuth: the client secret (value); not with the bearer or SMART variables",
    "FHIR_ADAPTER_OAUTH_CLIENT_SECRET_FILE": "OAuth: file holding the client secret (surrounding whitespace ignored)",
    "FHIR_ADAPTER_OAUTH_SCOPE": "OAuth: requested scopes (optional), e.g. https://example.fhir.azurehealthcareapis.com/"
                                ".default for Entra ID",
    "FHIR_ADAPTER_OAUTH_TOKEN_URL": "OAuth: the identity provider's token endpoint (required: a client secret is "
                                    "never sent to a discovered one)",
    "FHIR_ADAPTER_OAUTH_AUTH_METHOD": "OAuth: client_secret_basic (default: HTTP Basic, RFC 6749 2.3.1) or "
                                      "client_secret_post (id and secret in the form)",
}
