"""Write-back under the server's limits and faults (real local FHIR server, 10 synthetic subjects):
a 412 on a conditional update reported for its subject, a small MAX_TRANSACTION_ENTRIES forcing the split,
20 % 503 plus 429 throttling, and a run killed midway then started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fhir_adapter.synth import write_feed
from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.testing.feed_loader import load_feed, put_resources, search_all
from fhir_adapter.testing.fhir_server import ServerHandle, start_fhir_server
from fhir_adapter.testing.outtree import server_read_crfs
from tests.serverkit import (
    adapter_observations,
    cli_run,
    identifier_counts,
    offline_results,
    report,
    study_results,
    write_config,
)

pytestmark = pytest.mark.server

SUBJECTS = 10


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(feed, OUT of the clean file run): the ground truth every server run here is compared with."""
    tmp = tmp_path_factory.mktemp("trial")
    write_feed(tmp / "feed", subjects=SUBJECTS, seed=7)
    cli_run(str(tmp / "feed"), tmp / "file-out")
    return tmp / "feed", tmp / "file-out"


@pytest.fixture
def own_server(request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    with start_fhir_server(**getattr(request, "param", {})) as server:
        yield server


def assert_final_state(base_url: str, out: Path, file_out: Path) -> None:
    expected = offline_results(file_out)
    counts = identifier_counts(adapter_observations(base_url))
    assert sorted(counts) == sorted(i for ids in expected.values() for i in ids)
    assert set(counts.values()) == {1}
    assert study_results(out) == study_results(file_out)
    assert server_read_crfs(out) == server_read_crfs(file_out)


def test_412_on_write_back_is_reported_for_that_subject_only(clean_fhir_server: ServerHandle,
                                                             trial: tuple[Path, Path], tmp_path: Path) -> None:
    feed, file_out = trial
    load_feed(clean_fhir_server.base_url, feed)
    expected = offline_results(file_out)
    victim = sorted(s for s, ids in expected.items() if ids)[0]
    ident = expected[victim][0]
    bundle = json.loads((file_out / "writeback" / f"{victim}.json").read_text())
    [result] = [e["resource"] for e in bundle["entry"]
                if (e["resource"].get("identifier") or [{}])[0].get("value") == ident]
    # someone copied one of the adapter's results: two resources on the server carry its identifier
    copies = [{**result, "id": f"copy-{n}", "note": [{"text": f"copy {n}"}]} for n in (1, 2)]
    put_resources(clean_fhir_server.base_url, copies)

    out = tmp_path / "out"
    run = cli_run(clean_fhir_server.base_url, out, "--post", "--config", str(write_config(tmp_path / "a.yaml")))
    assert run.exit_code == 2
    rep = report(out)
    assert rep["summary"]["subjects_not_written"] == [victim]
    error = next(w["error"] for w in rep["writes"] if w["subject_id"] == victim)
    assert "Observation/copy-1" in error and "Observation/copy-2" in error  # refused before any request
    counts = identifier_counts(adapter_observations(clean_fhir_server.base_url))
    others = [i for s, ids in expected.items() if s != victim for i in ids]
    assert sorted(i for i in counts if i not in expected[victim]) == sorted(others)  # the others were written
    assert counts[ident] == 2 and all(counts[i] == 0 for i in expected[victim][1:])  # nothing of the victim's
    state = json.loads((out / "state" / "written.json").read_text())["results"]
    assert not any(e["subject_id"] == victim for e in state.values())  # only confirmed writes are recorded

    # the copies removed, the next --since last writes the victim: the run above is its base (issue 12 item 1),
    # and the victim, not written by it, is read in full again (subjects_to_recheck) although its data did not
    # change: its results are new to state/written.json
    with httpx.Client(base_url=clean_fhir_server.base_url, timeout=60) as client:
        for copy in copies:
            client.delete(f"/Observation/{copy['id']}").raise_for_status()
    again = cli_run(clean_fhir_server.base_url, out, "--post", "--since", "last",
                    "--config", str(write_config(tmp_path / "a.yaml")))
    rep = report(out)
    assert rep["summary"]["subjects_not_written"] == [] and rep["counts"]["incremental.rechecked_subjects"] == 1
    assert list(rep["server_requests"]["per_subject"]) == [victim]  # the others are not read
    assert [w["subject_id"] for w in rep["writes"]] == [victim] and again.exit_code in (0, 2)
    counts = identifier_counts(adapter_observations(clean_fhir_server.base_url))
    assert all(counts[i] == 1 for i in expected[victim])


@pytest.mark.parametrize("own_server", [{"MAX_TRANSACTION_ENTRIES": "12"}], indirect=True)
def test_a_server_with_small_transactions_gets_them_split_per_subject(own_server: ServerHandle,
                                                                      trial: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    feed, file_out = trial
    load_feed(own_server.base_url, feed, chunk=12)
    own_server.reset("stats")
    # the default (100 entries) is refused by this server with 413 for every subject with more results
    refused = cli_run(own_server.base_url, tmp_path / "refused", "--post",
                      "--config", str(write_config(tmp_path / "big.yaml")))
    assert refused.exit_code == 2
    assert own_server.stats()["requests"]["by_status"].get("413", 0) > 0
    assert adapter_observations(own_server.base_url) == []
    # each subject not written says which setting to lower
    failures = report(tmp_path / "refused")["subject_failures"]
    assert failures and all(f["last_status"] == 413 and "lower client.max_transaction_entries" in f["what_to_do"]
                            for f in failures)

    out = tmp_path / "out"
    config = write_config(tmp_path / "small.yaml", "  max_transaction_entries: 12\n")
    own_server.reset("stats")
    cli_run(own_server.base_url, out, "--post", "--config", str(config))
    rep = report(out)
    assert rep["summary"]["subjects_not_written"] == []
    assert_final_state(own_server.base_url, out, file_out)
    stats = own_server.stats()
    assert "413" not in stats["requests"]["by_status"]
    n_results = sum(len(v) for v in offline_results(file_out).values())
    # each transaction: Device + at most 10 results + Provenance
    transactions = stats["requests"]["by_interaction"]["transaction"]
    assert transactions == sum(-(-len(v) // 10) for v in offline_results(file_out).values()) > SUBJECTS
    assert len(search_all(own_server.base_url, "Provenance", {})) == transactions
    assert stats["writes"]["by_resource_type"]["Observation"]["created"] == n_results


def test_503_and_429_faults_give_the_results_of_a_clean_run(own_server: ServerHandle, trial: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    feed, file_out = trial
    load_feed(own_server.base_url, feed)
    # FAULT_503_RATE=0.2, FAULT_429_EVERY=7 (Retry-After: 0) from now on
    own_server.set_faults(fault_503_rate=0.2, fault_429_every=7, fault_seed=3, fault_retry_after=0)
    own_server.reset("stats")
    out = tmp_path / "out"
    cli_run(own_server.base_url, out, "--post", "--config", str(write_config(tmp_path / "a.yaml")))
    rep = report(out)
    faults = own_server.stats()["faults"]
    own_server.clear_faults()  # the checks below read without faults
    assert faults["503"] > 5 and faults["429"] > 4  # of about 55 requests (reads in groups), retries included
    assert rep["server_requests"]["retries"] >= faults["503"] + faults["429"]
    assert rep["summary"]["subjects_not_written"] == [] and rep["summary"]["subjects_failed"] == []
    assert_final_state(own_server.base_url, out, file_out)
    assert len(search_all(own_server.base_url, "Provenance", {})) == SUBJECTS  # one transaction each, no replay


def test_a_run_killed_midway_and_started_again_converges(clean_fhir_server: ServerHandle, trial: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    feed, file_out = trial
    load_feed(clean_fhir_server.base_url, feed)
    clean_fhir_server.reset("stats")
    out = tmp_path / "out"
    config = write_config(tmp_path / "a.yaml").read_text().replace("max_concurrency: 4", "max_concurrency: 1")
    (tmp_path / "slow.yaml").write_text(config)
    total = sum(len(v) for v in offline_results(file_out).values())
    cmd = [sys.executable, "-c", "from fhir_adapter.cli.commands import main; main()", "-q", "run",
           "--source", clean_fhir_server.base_url, "--out", str(out), "--post", "--config", str(tmp_path / "slow.yaml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    created = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        created = clean_fhir_server.stats()["writes"]["by_resource_type"].get("Observation", {}).get("created", 0)
        if created > 0:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = len(adapter_observations(clean_fhir_server.base_url))
    assert 0 < partial < total
    assert not (out / "state" / "last-run.json").exists()

    cli_run(clean_fhir_server.base_url, out, "--post", "--config", str(tmp_path / "a.yaml"))
    assert_final_state(clean_fhir_server.base_url, out, file_out)
    assert len(search_all(clean_fhir_server.base_url, "Provenance", {})) == SUBJECTS  # none written twice
    assert all(i["system"] == SID_RESULT for o in adapter_observations(clean_fhir_server.base_url)
               for i in o["identifier"])
