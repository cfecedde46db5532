"""How to reach the hospital's FHIR server: URL on the command line, settings from a config file or the
environment, secrets from the environment or files only (never from command-line arguments).

Config file (``--config adapter.yaml``)::

    client:                       # fhir_adapter.fhir.ClientSettings
      max_concurrency: 4          # requests in flight at once (a hospital server is never flooded)
      page_size: 1000             # _count (the server may cap it; its next links are followed)
      max_transaction_entries: 100
      read_timeout: 120
      verify: true                # or a CA bundle path
    read_mode: search             # search (one search per resource type) | batch (one batch Bundle per subject)
                                  # | bulk (a Bulk Data $export, as `run --bulk`)
    bulk:                         # fhir_adapter.fhir.settings.BulkSettings (read_mode: bulk / --bulk)
      group_id: null              # the study's Group (else ResearchStudy.enrollment, else Patient/$export)
      keep_files: true            # keep the export under OUT/bulk/ for audit (false: removed once read)
      type_filter: true           # _typeFilter with the study's codes (dropped when the server refuses it)
      poll_limit_seconds: 3600    # stop waiting for the export after this long (a rerun resumes the job)
      max_retry_after_seconds: 300
      token_hosts: ["*"]          # hosts besides the server's own that may get the access token (https) when
                                  # the server names them (files with requiresAccessToken: true): "*" (the
                                  # default) any https host, as the Bulk Data IG asks; a list of host names
                                  # only those; [] the server's own scheme, host and port only
    observation_code_param: auto  # auto | combo-code | code | none (auto: timed once per run, the faster of
                                  # combo-code and none; `fhir-adapter check --source URL` prints the timing)
    patients_per_search: 50       # patients per multi-patient search (1: one search per patient and type)
    writeback_reviewed_only: false       # true: only results derived from reviewed values (docs/review.md)
    max_retraction_share: 0.5     # more of a subject's results retracted in one run needs --allow-mass-retraction

Environment (override the file): ``FHIR_ADAPTER_MAX_CONCURRENCY``, ``FHIR_ADAPTER_PAGE_SIZE``,
``FHIR_ADAPTER_MAX_TRANSACTION_ENTRIES``, ``FHIR_ADAPTER_READ_MODE``, ``FHIR_ADAPTER_CA_BUNDLE``.
Credentials: see :func:`fhir_adapter.fhir.auth_from_env` (``FHIR_ADAPTER_BEARER_TOKEN[_FILE]``,
``FHIR_ADAPTER_SMART_*``).
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fhir_adapter.fhir.settings import BulkSettings, ClientSettings
from fhir_adapter.safe_paths import replaced_output
from fhir_adapter.study.yamlfile import read_yaml

if TYPE_CHECKING:
    from fhir_adapter.fhir.client import FhirClient

#: environment variable -> key under ``client:`` it sets (the environment overrides the file)
ENV_CLIENT = {
    "FHIR_ADAPTER_MAX_CONCURRENCY": "max_concurrency",
    "FHIR_ADAPTER_PAGE_SIZE": "page_size",
    "FHIR_ADAPTER_MAX_TRANSACTION_ENTRIES": "max_transaction_entries",
    "FHIR_ADAPTER_CA_BUNDLE": "verify",
}
#: environment variable -> top-level key it sets
ENV_TOP = {"FHIR_ADAPTER_READ_MODE": "read_mode"}


#: the smallest max_transaction_entries a write-back can use: the Device, one result, the Provenance
MIN_TRANSACTION_ENTRIES = 3


class ServerConfigError(ValueError):
    """The server settings (``--config`` file or ``FHIR_ADAPTER_*`` environment) are wrong; the message names
    the file and key, or the variable, and what to write instead."""


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client: ClientSettings = ClientSettings()
    read_mode: Literal["search", "batch", "bulk"] = Field(
        "search", description="search: one search per resource type and group of patients_per_search patients; "
                              "batch: one batch Bundle of those searches per group; bulk: a Bulk Data $export "
                              "(as `run --bulk`)")
    bulk: BulkSettings = Field(BulkSettings(), description="Bulk Data $export settings (read_mode: bulk)")
    observation_code_param: Literal["auto", "combo-code", "code", "none"] = Field(
        "auto", description="how Observations are filtered by the mapping's codes: combo-code (on the server, "
                            "also component codes), code (on the server, own code only), none (all of the "
                            "patient's, filtered on the client like combo-code), or auto (each run times a "
                            "combo-code and an unfiltered search once and reads with the faster); "
                            "`fhir-adapter check --source URL` prints that timing and what the server supports")
    patients_per_search: int = Field(
        50, ge=1, description="patients one search asks for (patient=Patient/a,Patient/b,...; fewer when the URL "
                              "would exceed client.max_get_url_length, and for Observations as many as fill about "
                              "one page of client.page_size); 1: one search per patient and resource type")
    writeback_reviewed_only: bool = False  # write back only results a reviewer has looked at (docs/review.md)
    #: largest share of a subject's results on the server one run may retract without --allow-mass-retraction
    max_retraction_share: float = Field(
        0.5, ge=0, le=1, description="Largest share of a subject's results on the server one run may retract "
                                     "(set to entered-in-error); more needs --allow-mass-retraction.")

    @field_validator("client")
    @classmethod
    def _room_for_a_result(cls, client: ClientSettings) -> ClientSettings:
        """A write-back transaction holds the adapter Device and a Provenance besides the results."""
        n = client.max_transaction_entries
        if n < MIN_TRANSACTION_ENTRIES:
            raise ValueError(
                f"max_transaction_entries: {n} leaves no room for a result — each write-back transaction holds "
                "the adapter Device and a Provenance besides a subject's results, so it must be at least "
                f"{MIN_TRANSACTION_ENTRIES}; set it to a subject's results + 2 or more (default 100) so that each "
                "subject is written in one atomic transaction, or to the largest the server accepts")
        return client


def load_server_config(path: Path | None, env: Mapping[str, str]) -> ServerConfig:
    """The settings of ``path`` (YAML) overridden by the environment; every mistake is a
    :class:`ServerConfigError` naming the file and key (with its line) or the environment variable."""
    data: dict[str, Any] = {}
    doc = None
    if path is not None:
        doc = read_yaml(Path(path), unique_keys=False)  # a setting appended to the file overrides, as YAML reads it
        if not isinstance(doc.data, dict):
            raise ServerConfigError(f"{path}: the server config must be a YAML mapping (keys: "
                                    f"{', '.join(ServerConfig.model_fields)}) — see docs/adapter.example.yaml")
        data = dict(doc.data)
    client = data.get("client") or {}
    if not isinstance(client, dict):
        raise ServerConfigError(_where(path, doc, ("client",)) + "`client` must be a mapping of client settings "
                                f"({', '.join(ClientSettings.model_fields)})")
    client = dict(client)
    from_env: dict[tuple[str, ...], str] = {}
    for var, key in ENV_CLIENT.items():
        if env.get(var):
            client[key] = Path(env[var]) if key == "verify" else env[var]
            from_env[("client", key)] = var
    data["client"] = client
    for var, key in ENV_TOP.items():
        if env.get(var):
            data[key] = env[var]
            from_env[(key,)] = var
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, path, doc, from_env, env) from None


def _where(path: Path | None, doc: Any, loc: tuple[str | int, ...]) -> str:
    if path is None:
        return ""
    line = doc.line_of(loc) if doc is not None else None
    return f"{path}:{line}: " if line else f"{path}: "


def _config_error(exc: ValidationError, path: Path | None, doc: Any, from_env: dict[tuple[str, ...], str],
                  env: Mapping[str, str]) -> ServerConfigError:
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "(top level)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    client_keys = list(ClientSettings.model_fields)
    top_keys = list(ServerConfig.model_fields)
    var = (from_env.get(loc[:2]) or from_env.get(loc[:1])) if loc else None
    if len(loc) == 1 and loc[0] == "client":  # a check across client keys: its message names the key
        var = next((v for (sec, *k), v in from_env.items() if sec == "client" and k and msg.startswith(k[0])), None)
    if var is not None:
        return ServerConfigError(f"environment variable {var}={env.get(var)!r}: {msg} — set it to a valid value "
                                 f"(key {key} of the server config; see docs/integrator-guide.md) or unset it")
    where = _where(path, doc, loc)
    if len(loc) == 1 and loc[0] == "client" and (name := msg.split(":", 1)[0]) in client_keys:
        # a check of a client key made where the keys are seen together: the message starts with the key
        return ServerConfigError(f"{_where(path, doc, ('client', name))}client.{msg}")
    if err["type"] == "extra_forbidden":
        name = loc[-1]
        if len(loc) == 1 and name in client_keys:
            fix = f"move it under `client:` (`client: {{{name}: ...}}`)"
        elif len(loc) == 2 and loc[0] == "client" and name in top_keys:
            fix = "move it to the top level, out of `client:`"
        else:
            known = client_keys if loc[0] == "client" else top_keys
            close = difflib.get_close_matches(name, known, n=1)
            fix = (f"did you mean '{close[0]}'? " if close else "") + f"known keys here: {', '.join(known)}"
        return ServerConfigError(f"{where}unknown key '{key}' — {fix}")
    return ServerConfigError(f"{where}{key}: {msg} (got {err.get('input')!r}) — "
                             "see docs/adapter.example.yaml for what this key takes")


def open_client(base_url: str, config: ServerConfig, env: Mapping[str, str]) -> FhirClient:
    """The client for ``base_url``; incomplete or conflicting credentials in the environment and a malformed
    URL are :class:`ServerConfigError` (the message names the variables, never their secret values)."""
    from fhir_adapter.fhir.auth import auth_from_env  # the HTTP stack, imported by live runs only
    from fhir_adapter.fhir.client import FhirClient
    from fhir_adapter.fhir.urls import normalise_base_url, redact_url

    try:
        normalise_base_url(base_url)
    except ValueError as exc:
        raise ServerConfigError(f"--source {redact_url(base_url)}: {exc} — give the server's base URL, e.g. "
                                "https://ehr.example.org/fhir/R4") from None
    try:
        auth = auth_from_env(env, fhir_base_url=base_url)
    except ValueError as exc:
        raise ServerConfigError(f"credentials in the environment: {exc} — see docs/integrator-guide.md "
                                "(environment variables)") from None
    try:
        return FhirClient(base_url, auth=auth, settings=config.client)
    except ValueError as exc:
        raise ServerConfigError(f"--source {redact_url(base_url)}: {exc} — give the server's base URL, e.g. "
                                "https://ehr.example.org/fhir/R4") from None


STATE_FILE = Path("state") / "last-run.json"


def last_run(out: Path) -> dict[str, Any] | None:
    """What ``OUT/state/last-run.json`` records of the last completed run (exit 0 or 2) writing to ``out``; None
    when there is none, or it is unreadable or a link (what a crash or a hand left): as after no recorded run."""
    path = Path(out) / STATE_FILE
    try:
        if path.is_symlink():
            return None
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def last_run_started(out: Path) -> dt.datetime | None:
    """Start time of the last completed run (exit 0 or 2) writing to ``out`` (for ``--since last``)."""
    record = last_run(out)
    try:
        return dt.datetime.fromisoformat(record["started"]) if record is not None else None
    except (KeyError, TypeError, ValueError):
        return None


def record_run(out: Path, started: dt.datetime, source: str, roster_csv_sha256: str | None = None,
               recheck: Collection[str] = (), mapping_fingerprint: str | None = None,
               day1: Mapping[str, str | None] | None = None) -> None:
    """Write ``OUT/state/last-run.json``; a symbolic link there is replaced, never written through (a link in
    place of ``state/`` is refused: :class:`~fhir_adapter.job.outpaths.UnsafePath`). ``roster_csv_sha256``: the
    content of the roster CSV the run read (an incremental run compares it with the CSV it reads);
    ``recheck``: the subject IDs the run failed or did not write (``subjects_to_recheck``: the next incremental
    run reads them in full and compares their results with the server, whatever its state file says);
    ``mapping_fingerprint``: what the run's CRFs were mapped by (another one makes the next incremental run read
    every subject in full); ``day1``: each subject's Day 1 in the run (the next one says which moved)."""
    path = replaced_output(Path(out), Path(out) / STATE_FILE)
    record: dict[str, Any] = {"started": started.isoformat(), "source": source}
    if roster_csv_sha256 is not None:
        record["roster_csv_sha256"] = roster_csv_sha256
    record["subjects_to_recheck"] = sorted(set(recheck))
    if mapping_fingerprint is not None:
        record["mapping_fingerprint"] = mapping_fingerprint
    if day1 is not None:
        record["day1"] = dict(sorted(day1.items()))
    path.write_text(json.dumps(record, indent=2) + "\n")
