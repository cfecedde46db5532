"""How to reach the hospital's FHIR server: URL on the command line, settings from a config file or the
environment, secrets from the environment or files only (never from command-line arguments).

Config file (``--config adapter.yaml``)::

    client:                       # fhir_adapter.fhir.ClientSettings
      max_concurrency: 4          # requests in flight at once (a hospital server is never flooded)
      page_size: 200              # _count
      max_transaction_entries: 100
      read_timeout: 120
      verify: true                # or a CA bundle path
    read_mode: search             # search (one search per resource type) | batch (one batch Bundle per subject)
    observation_code_param: combo-code   # combo-code | code | none (see `fhir-adapter check --source URL`)

Environment (override the file): ``FHIR_ADAPTER_MAX_CONCURRENCY``, ``FHIR_ADAPTER_PAGE_SIZE``,
``FHIR_ADAPTER_MAX_TRANSACTION_ENTRIES``, ``FHIR_ADAPTER_READ_MODE``, ``FHIR_ADAPTER_CA_BUNDLE``.
Credentials: see :func:`fhir_adapter.fhir.auth_from_env` (``FHIR_ADAPTER_BEARER_TOKEN[_FILE]``,
``FHIR_ADAPTER_SMART_*``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from fhir_adapter.fhir import ClientSettings, FhirClient, auth_from_env
from fhir_adapter.study.yamlfile import read_yaml

_ENV = {
    "FHIR_ADAPTER_MAX_CONCURRENCY": ("max_concurrency", int),
    "FHIR_ADAPTER_PAGE_SIZE": ("page_size", int),
    "FHIR_ADAPTER_MAX_TRANSACTION_ENTRIES": ("max_transaction_entries", int),
    "FHIR_ADAPTER_CA_BUNDLE": ("verify", Path),
}


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client: ClientSettings = ClientSettings()
    read_mode: Literal["search", "batch"] = "search"
    observation_code_param: Literal["combo-code", "code", "none"] = "combo-code"


def load_server_config(path: Path | None, env: Mapping[str, str]) -> ServerConfig:
    data: dict[str, Any] = {}
    if path is not None:
        doc = read_yaml(Path(path))
        data = dict(doc.data or {})
    client = dict(data.get("client") or {})
    for var, (key, cast) in _ENV.items():
        if env.get(var):
            client[key] = cast(env[var])
    data["client"] = client
    if env.get("FHIR_ADAPTER_READ_MODE"):
        data["read_mode"] = env["FHIR_ADAPTER_READ_MODE"]
    return ServerConfig.model_validate(data)


def open_client(base_url: str, config: ServerConfig, env: Mapping[str, str]) -> FhirClient:
    return FhirClient(base_url, auth=auth_from_env(env, fhir_base_url=base_url), settings=config.client)


STATE_FILE = Path("state") / "last-run.json"


def last_run_started(out: Path) -> dt.datetime | None:
    """Start time of the last successful run writing to ``out`` (for ``--since last``)."""
    path = Path(out) / STATE_FILE
    if not path.exists():
        return None
    return dt.datetime.fromisoformat(json.loads(path.read_text())["started"])


def record_run(out: Path, started: dt.datetime, source: str) -> None:
    path = Path(out) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"started": started.isoformat(), "source": source}, indent=2) + "\n")
