"""URL helpers: the FHIR base, resource paths, same-server checks and redaction for messages."""

from __future__ import annotations

import re

import httpx

__all__ = [
    "check_id",
    "check_type",
    "normalise_base_url",
    "redact_url",
    "resolve_link",
    "resource_path",
    "same_origin",
]

_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR R4 id datatype
_SECRET_PARAM_RE = re.compile(
    r"(token|secret|password|passwd|assertion|api[-_]?key|apikey|signature|sig|code_verifier|session)", re.I
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_base_url(base_url: str | httpx.URL) -> httpx.URL:
    """Return the FHIR base as an absolute http(s) URL without query, fragment, user info or trailing slash."""
    url = httpx.URL(str(base_url))
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"FHIR base URL must be an absolute http(s) URL, got {redact_url(url)!r}")
    if url.userinfo:  # httpx would send it as Basic auth, to any host, and it would stay in shell history
        raise ValueError(f"FHIR base URL {redact_url(url)!r} carries a user name or password (user:…@): credentials "
                         "are never taken from a URL or an argument; remove them and give the server's credentials "
                         "in the environment (FHIR_ADAPTER_BEARER_TOKEN_FILE, FHIR_ADAPTER_OAUTH_*: "
                         "docs/integrator-guide.md)")
    if url.query or url.fragment:
        raise ValueError(f"FHIR base URL must not carry a query or fragment: {redact_url(url)!r}")
    return url.copy_with(path=url.path.rstrip("/") or "/")


def resource_path(base: httpx.URL, *segments: str) -> httpx.URL:
    """``base/segment/...``; each segment must already be validated."""
    path = base.path.rstrip("/")
    return base.copy_with(path=path + "/" + "/".join(segments))


def check_type(resource_type: str) -> str:
    if not _TYPE_RE.match(resource_type):
        raise ValueError(f"not a FHIR resource type name: {resource_type!r}")
    return resource_type


def check_id(resource_id: str) -> str:
    if not _ID_RE.match(resource_id):
        raise ValueError(f"not a FHIR resource id ([A-Za-z0-9-.]{{1,64}}): {resource_id!r}")
    return resource_id


def _port(url: httpx.URL) -> int | None:
    return url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme)


def same_origin(url: httpx.URL, base: httpx.URL) -> bool:
    """True when ``url`` has the scheme, host and port of ``base``."""
    return url.scheme == base.scheme and url.host == base.host and _port(url) == _port(base)


def redact_url(url: httpx.URL | str) -> str:
    """The URL as text with user info removed and the values of secret-looking query parameters replaced
    by ``***`` (e.g. ``access_token``, ``client_secret``, ``sig``). Other parameters are kept: they are what a
    user needs to see to understand a 400 on a search."""
    try:
        parsed = httpx.URL(str(url))
    except httpx.InvalidURL:
        return "<invalid URL>"
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    if not parsed.query:
        return str(parsed)
    items = [(key, "REDACTED" if _SECRET_PARAM_RE.search(key) else value) for key, value in parsed.params.multi_items()]
    return str(parsed.copy_with(params=httpx.QueryParams(tuple(items))))


def resolve_link(base: httpx.URL, link: str) -> httpx.URL:
    """Resolve a Bundle link against the FHIR base: absolute links are kept, relative ones (``Observation?x``
    or ``?_getpages=...``) are taken relative to the base *including its path* (``https://h/fhir/``)."""
    return base.copy_with(path=base.path.rstrip("/") + "/").join(link)
