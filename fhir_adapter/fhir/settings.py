"""Settings of the FHIR client and of Bulk Data exports (pydantic v2): the ``client:`` and ``bulk:`` sections of
the server config (:mod:`fhir_adapter.fhir.server_config`). Nothing secret lives here: credentials come from
:func:`fhir_adapter.fhir.auth_from_env`."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fhir_adapter.version import __version__

__all__ = ["BulkSettings", "ClientSettings"]

_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class ClientSettings(BaseModel):
    """How the client talks to one FHIR server.

    Timeouts are per HTTP attempt, in seconds. ``max_attempts`` and ``max_total_seconds`` bound the retries
    of one logical request (all attempts plus the waits between them); ``max_retry_after_seconds`` caps how
    long a server's ``Retry-After`` is honoured. Backoff for errors without ``Retry-After`` is "full jitter":
    ``uniform(0, min(backoff_max_seconds, backoff_initial_seconds * 2**(n-1))) + uniform(0,
    backoff_jitter_seconds)``. The defaults ride out a server answering 20 % of requests with 503 and
    throttling with 429 (about 2 minutes per request at most).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(
        60.0, gt=0, description="Longest wait for the next bytes of an answer; a slower answer is retried like a 503.")
    write_timeout: float = Field(60.0, gt=0)
    pool_timeout: float = Field(60.0, gt=0)
    max_response_seconds: float = Field(
        300.0, gt=0,
        description="Longest time one answer may take in full (a server trickling a huge page is cut off and "
                    "retried like a timeout).")
    max_response_bytes: int = Field(
        256 * 1024 * 1024, ge=1024,
        description="Largest answer accepted (bytes after decompression); lower page_size if a page is larger.")

    max_concurrency: int = Field(4, ge=1, description="Requests in flight to the server at any time (at most).")
    adaptive_concurrency: bool = Field(
        True, description="Halve the requests in flight on a 429 and raise them again one by one as the server "
                          "answers (never above max_concurrency).")
    max_attempts: int = Field(10, ge=1, description="Attempts per logical request, the first included.")
    max_total_seconds: float = Field(120.0, gt=0, description="Budget of one request, retries and waits included.")
    max_retry_after_seconds: float = Field(60.0, ge=0, description="Cap applied to a server's Retry-After.")
    backoff_initial_seconds: float = Field(0.5, ge=0, description="First backoff window (doubles per attempt).")
    backoff_max_seconds: float = Field(30.0, ge=0, description="Largest backoff window.")
    backoff_jitter_seconds: float = Field(0.5, ge=0, description="Extra random wait added to each backoff.")
    circuit_breaker_failures: int = Field(
        4, ge=1,
        description="Consecutive requests failing for the server's reasons (after their retries; the token "
                    "endpoint's 429/5xx included) that make the client stop sending: the run ends with exit code 3 "
                    "(server unavailable).")
    circuit_breaker_subjects: int = Field(
        2, ge=1, description="Different subjects (request labels) those consecutive failures must span before the "
                             "client stops sending.")

    page_size: int | None = Field(
        1000, ge=1, description="Sent as _count unless the caller sets _count: the server's largest page (a server "
                                "with a lower maximum answers smaller pages, and its next links are followed).")
    max_get_url_length: int = Field(
        2048, ge=256,
        description="A search whose GET URL would be longer is sent as POST [type]/_search with a form body "
                    "(FHIR R4 http.html#search: servers SHALL support both); proxies and EHRs often cap URLs.",
    )
    max_transaction_entries: int = Field(
        100, ge=1,
        description="Largest batch/transaction sent (at least 3: a subject's write-back transaction holds the "
                    "adapter Device, a Provenance and its results). Only one transaction per subject is atomic: "
                    "a subject with more results than this - 2 is written in several transactions and can end "
                    "written in part when the server fails between them (recorded in state/written.json, "
                    "completed by the next run); set it to at least a subject's results + 2 if the server "
                    "accepts transactions that large.")

    max_deletion_lookups: int = Field(
        200, ge=0,
        description="An incremental run (--since last) reads the instance history (GET [type]/[id]/_history) of "
                    "at most this many deleted resources that no CRF of the last run names, to find whose they "
                    "were (an enrolled subject is read again, another patient's deletion is ignored); with more "
                    "such deletions, or 0, every enrolled subject is read again in full (warning incremental).")

    http2: bool = Field(False, description="Use HTTP/2 when the 'h2' package is installed.")
    verify: bool | Path = Field(
        True, description="TLS verification: True, or the path of a CA bundle for a server with a private CA. "
                          "Never False: see insecure_skip_tls_verify.")
    insecure_skip_tls_verify: bool = Field(
        False, description="Do not verify the server's TLS certificate. Only for a server on this machine "
                           "(localhost, 127.0.0.1, ::1): refused for any other host, which needs its CA bundle "
                           "in verify instead.")
    user_agent: str = f"fhir-adapter/{__version__}"

    @model_validator(mode="after")
    def _check_verify_path(self) -> ClientSettings:
        if isinstance(self.verify, Path) and not self.verify.is_file():
            raise ValueError(f"verify: CA bundle {self.verify} does not exist or is not a file")
        if self.verify is False:
            raise ValueError("verify: false is not accepted: give the server's CA bundle (verify: /path/ca.pem or "
                             "FHIR_ADAPTER_CA_BUNDLE); for a test server on this machine only, set "
                             "insecure_skip_tls_verify: true")
        return self


class BulkSettings(BaseModel):
    """``bulk:`` in the server config."""

    model_config = ConfigDict(extra="forbid")

    group_id: str | None = None          # the study's Group on the server (else ResearchStudy.enrollment)
    keep_files: bool = True              # keep OUT/bulk/ for audit; False: removed once read
    type_filter: bool = True             # send _typeFilter with the study's codes (dropped if refused)
    poll_limit_seconds: float = 3600.0   # give up waiting for the export after this long (rerun resumes)
    max_retry_after_seconds: float = 300.0  # cap on a server's Retry-After
    download_attempts: int = 4
    #: the largest an export file may be, in bytes, once decompressed (as written to OUT/bulk/ under a gzip
    #: Content-Encoding, or as read from a gzip file served as is): a file beyond it stops the run (a
    #: decompression bomb would fill the disk); 50 GiB by default
    max_file_bytes: int = Field(50 * 1024 ** 3, gt=0)
    #: hosts besides the FHIR server's own to which the access token may be sent (over https) when the server
    #: names them: a status URL or export files with requiresAccessToken: true on another host (a file store).
    #: "*" (the default) = any https host, as the Bulk Data IG asks (the token goes wherever
    #: requiresAccessToken: true says); a list of host names restricts it to those; [] = the FHIR server's own
    #: scheme, host and port only (a manifest naming another host for files that need the token stops the run)
    token_hosts: list[str] = ["*"]

    @field_validator("token_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if host != "*" and not _HOST_NAME.fullmatch(host):
                raise ValueError(f"bulk.token_hosts: {host!r} is not a host name; give the host alone, e.g. "
                                 "files.ehr.example.org (no scheme, port or path: the token goes over https only)")
        return [h.lower() for h in hosts]
