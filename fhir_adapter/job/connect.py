"""Open the source and the sink a ``run`` asks for: a folder of files, or a FHIR server URL (read, and with
``--post`` write back; ``--dry-run`` shows the writes as a diff without making them)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fhir_adapter.fhir.server_clock import since_base
from fhir_adapter.fhir.server_config import last_run_started, load_server_config, open_client
from fhir_adapter.job.outpaths import subject_file_name, without_links
from fhir_adapter.job.pipeline import Sink
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import Source
from fhir_adapter.source.files import FileSource
from fhir_adapter.source.layout import Folder
from fhir_adapter.study.load import Study

if TYPE_CHECKING:  # the live path's modules load httpx and jwt: imported where a server run starts
    from fhir_adapter.source.bulk import BulkSource
    from fhir_adapter.source.server import ServerSource


class ConnectError(RuntimeError):
    """The run cannot start: what was asked does not fit together (the message says what to change)."""


@dataclass
class Connection:
    source: Source
    sink: Sink | None
    server: ServerSource | None = None
    bulk: BulkSource | None = None
    #: the config's ``writeback_reviewed_only``: a write-back setting, for a folder source too (OUT/writeback)
    reviewed_only: bool = False

    def next_since(self, started: dt.datetime) -> dt.datetime:
        """The time the next ``--since last`` starts from: a Bulk export's transactionTime; else ``started``
        (this run's start on this machine's clock), moved back when the server's clock is behind this machine's
        (:mod:`fhir_adapter.fhir.server_clock`)."""
        if self.bulk is not None and self.bulk.transaction_time is not None:
            return self.bulk.transaction_time
        if self.server is None:
            return started
        return since_base(started, self.server.read_clock)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    @property
    def requests_total(self) -> Callable[[], int] | None:
        """A counter of the HTTP requests made so far (None when the source is files)."""
        if self.server is None:
            return None
        client = self.server.client
        return lambda: client.stats.total.requests

    def requests_per_subject(self) -> dict[str, int]:
        if self.server is None:
            return {}
        per_subject: dict[str, int] = self.server.request_stats()["per_subject"]
        return per_subject


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def parse_since(value: str | None, out: Path) -> dt.datetime | None:
    if value is None:
        return None
    if value == "last":
        started = last_run_started(out)
        if started is None:
            raise ConnectError(f"--since last: no earlier completed run recorded in {out}/state/; run once without "
                               "--since first")
        return started
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConnectError(f"--since {value!r} is not an ISO 8601 date/time (e.g. 2026-11-01T00:00:00Z) or 'last'") \
            from exc
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def connect(source: str, study: Study, log: RunLog, out: Path, *, post: bool = False, dry_run: bool = False,
            since: str | None = None, config: Path | None = None, env: Mapping[str, str] | None = None,
            bulk: bool = False, allow_mass_retraction: bool = False, folder: Folder | None = None) -> Connection:
    """``folder``: where a non-URL ``source`` is read from when not from the local file system (the Spark
    engine's folder)."""
    env = env if env is not None else {}
    if not is_url(source) and (post or dry_run or since or bulk):
        raise ConnectError("--post, --dry-run, --since and --bulk need a FHIR server: give --source "
                           "https://host/fhir")
    # loaded for a folder too (a mistake in it is an error): writeback_reviewed_only holds for OUT/writeback
    cfg = load_server_config(config, env)
    if not is_url(source):
        if config is not None:
            msg = (f"--config {config}: its server settings are ignored, as they apply to a FHIR server source and "
                   f"{source} is a folder of files" + ("; its writeback_reviewed_only: true applies (OUT/writeback "
                                                        "holds reviewed results only)"
                                                        if cfg.writeback_reviewed_only else ""))
            logging.getLogger(__name__).warning(msg)
            log.warn(msg, rule="config-ignored")
        return Connection(source=FileSource(folder if folder is not None else Path(source), log), sink=None,
                          reviewed_only=cfg.writeback_reviewed_only)
    from fhir_adapter.source.bulk import BulkSource
    from fhir_adapter.source.server import ServerSource
    from fhir_adapter.writeback.sink import ServerSink

    client = open_client(source, cfg, env)
    loop = asyncio.new_event_loop()
    sink = ServerSink(client, loop, dry_run=dry_run, allow_mass_retraction=allow_mass_retraction,
                      max_retraction_share=cfg.max_retraction_share, study_id=study.info.id) if (post or dry_run) \
        else None
    def last_crf(subject_id: str) -> Path:
        return out / "crf" / f"{subject_file_name(subject_id)}.json"

    if bulk or cfg.read_mode == "bulk":
        rest = ServerSource(client, study, log, read_mode="search", loop=loop,
                            observation_code_param=cfg.observation_code_param,
                            patients_per_search=cfg.patients_per_search)
        # the export's files go into OUT/bulk/, never through a symbolic link (UnsafePath names it)
        exported = BulkSource(rest, cfg.bulk, without_links(out, out / "bulk"), log, since=parse_since(since, out),
                              last_crf=last_crf)
        return Connection(source=exported, sink=sink, server=rest, bulk=exported,
                          reviewed_only=cfg.writeback_reviewed_only)
    server = ServerSource(client, study, log, since=parse_since(since, out), read_mode=cfg.read_mode, loop=loop,
                          observation_code_param=cfg.observation_code_param,
                          patients_per_search=cfg.patients_per_search, last_crf=last_crf)
    return Connection(source=server, sink=sink, server=server, reviewed_only=cfg.writeback_reviewed_only)
