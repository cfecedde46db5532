"""FHIR R4: the REST client of fhir-adapter (the only place that talks HTTP to a hospital's FHIR server), the
R4 checks of every resource read or written (``r4.py``, ``r4_types.py``) and the server settings (``server_config.py``).

Public surface of the client (its other modules are private)::

    async with FhirClient(base_url, auth=auth_from_env(os.environ, fhir_base_url=base_url),
                          settings=ClientSettings(max_concurrency=4)) as client:
        patient = await client.read("Patient", "123", label="S-001")
        async for obs in client.search("Observation", {"patient": "123", "code": "http://loinc.org|718-7"}):
            ...
        for part in split_transaction(bundle, client.settings.max_transaction_entries):
            await client.transaction(part)
        print(client.stats.as_dict())

Retries happen here and nowhere else (:mod:`fhir_adapter.fhir.retry` documents the policy); auth flows are
pluggable :class:`httpx.Auth` objects; the transport is swappable for tests. The names below are imported
when first used, so importing a submodule (the R4 checks) does not load the HTTP client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhir_adapter.fhir.auth import BearerToken, ClientSecret, SmartBackendServices, auth_from_env, load_private_key
    from fhir_adapter.fhir.bundles import split_transaction
    from fhir_adapter.fhir.client import FhirClient, SearchParams
    from fhir_adapter.fhir.errors import (
        FhirAuthError,
        FhirError,
        FhirHttpError,
        FhirPagingError,
        FhirResponseError,
        FhirTransportError,
    )
    from fhir_adapter.fhir.retry import parse_retry_after
    from fhir_adapter.fhir.settings import ClientSettings
    from fhir_adapter.fhir.stats import ClientStats, RequestCounts

#: each public name → the module that defines it, imported on first use (PEP 562): an offline run, which only
#: needs the R4 checks (``fhir_adapter.fhir.r4``), never loads httpx, jwt and cryptography
_HOME = {
    "BearerToken": "auth", "ClientSecret": "auth", "SmartBackendServices": "auth", "auth_from_env": "auth",
    "load_private_key": "auth",
    "split_transaction": "bundles",
    "FhirClient": "client", "SearchParams": "client",
    "FhirAuthError": "errors", "FhirError": "errors", "FhirHttpError": "errors", "FhirPagingError": "errors",
    "FhirResponseError": "errors", "FhirTransportError": "errors",
    "parse_retry_after": "retry",
    "ClientSettings": "settings",
    "ClientStats": "stats", "RequestCounts": "stats",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BearerToken",
    "ClientSecret",
    "ClientSettings",
    "ClientStats",
    "FhirAuthError",
    "FhirClient",
    "FhirError",
    "FhirHttpError",
    "FhirPagingError",
    "FhirResponseError",
    "FhirTransportError",
    "RequestCounts",
    "SearchParams",
    "SmartBackendServices",
    "auth_from_env",
    "load_private_key",
    "parse_retry_after",
    "split_transaction",
]
