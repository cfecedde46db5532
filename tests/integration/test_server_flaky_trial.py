"""The 34-subject trial against a server answering 20 % of requests with 503 and every 7th with 429
(Retry-After: 1): in every one of several seeded runs, results and server state identical to a clean run.
Retry waits are kept short by the client config (Retry-After honoured up to 0.05 s) so the suite stays quick."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fhir_adapter.synth import write_feed
from fhir_adapter.testing.feed_loader import load_feed
from fhir_adapter.testing.fhir_server import ServerHandle, start_fhir_server
from tests.serverkit import assert_like_uninterrupted, cli_run, report, wipe_adapter_writes, write_config

pytestmark = pytest.mark.server

SUBJECTS = 34


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, Path, Path]]:
    tmp = tmp_path_factory.mktemp("flaky")
    write_feed(tmp / "feed", subjects=SUBJECTS, seed=7)
    cli_run(str(tmp / "feed"), tmp / "file-out")  # the clean run: file and server sources agree (e2e tests)
    with start_fhir_server() as server:
        load_feed(server.base_url, tmp / "feed")
        yield server, tmp / "feed", tmp / "file-out"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_trial_under_503_and_429_gives_the_results_and_server_state_of_a_clean_run(
    trial: tuple[ServerHandle, Path, Path], tmp_path: Path, seed: int
) -> None:
    server, _, file_out = trial
    wipe_adapter_writes(server)
    server.set_faults(fault_503_rate=0.2, fault_429_every=7, fault_seed=seed, fault_retry_after=1)
    out = tmp_path / "out"
    config = write_config(tmp_path / "a.yaml", "  max_retry_after_seconds: 0.05\n")
    cli_run(server.base_url, out, "--post", "--config", str(config))
    faults = server.stats()["faults"]
    server.clear_faults()
    rep = report(out)
    assert faults["503"] > 15 and faults["429"] > 15  # of about 160 requests (reads in groups), retries included
    assert rep["subject_failures"] == [] and rep["summary"]["subjects_not_written"] == []
    assert rep["server_requests"]["retries"] >= faults["503"] + faults["429"]
    assert_like_uninterrupted(server.base_url, out, file_out)
