"""Live runs against the real local FHIR server under the faults real servers produce (10 synthetic subjects):
one subject's reads failing for good, the server going down mid-run (circuit breaker, exit 3), nothing
listening at all, an access token rejected twice (exit 4), and kill -9 of ``run --post`` at several points —
each followed by a rerun that must end in exactly the state of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fhir_adapter.cli.commands import main
from fhir_adapter.job.outlock import LOCK_NAME
from fhir_adapter.synth import plan_trial, write_feed
from fhir_adapter.testing.feed_loader import load_feed, put_resources, search_all
from fhir_adapter.testing.fhir_server import ServerHandle, start_fhir_server
from tests.serverkit import (
    adapter_observations,
    assert_like_uninterrupted,
    identifier_counts,
    offline_results,
    report,
    study_results,
    wipe_adapter_writes,
    write_config,
)

pytestmark = pytest.mark.server

SUBJECTS = 10
#: quick retries for tests; the server's Retry-After is honoured up to 0.05 s
FAST = "  max_retry_after_seconds: 0.05\n  max_attempts: 4\n  circuit_breaker_failures: 3\n"


def invoke(source: str, out: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["-q", "run", "--source", source, "--out", str(out), *args],
                              catch_exceptions=False, env=env)


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(feed, OUT of the clean file run): the ground truth."""
    tmp = tmp_path_factory.mktemp("live")
    write_feed(tmp / "feed", subjects=SUBJECTS, seed=7)
    result = invoke(str(tmp / "feed"), tmp / "file-out")
    assert result.exit_code in (0, 2), result.output
    return tmp / "feed", tmp / "file-out"


@pytest.fixture(scope="module")
def server(trial: tuple[Path, Path]) -> Iterator[ServerHandle]:
    """One server for the module, loaded once; :func:`fresh` removes what the adapter wrote."""
    with start_fhir_server() as handle:
        load_feed(handle.base_url, trial[0])
        yield handle


@pytest.fixture
def fresh(server: ServerHandle) -> ServerHandle:
    """The loaded server without anything the adapter wrote, no faults, counters at zero."""
    wipe_adapter_writes(server)
    return server


def per_subject_on_server(base_url: str, expected: dict[str, list[str]]) -> dict[str, int]:
    """Subject -> how many of its expected results the server holds."""
    counts = identifier_counts(adapter_observations(base_url))
    return {s: sum(counts[i] for i in ids) for s, ids in expected.items()}


def outputs_snapshot(out: Path) -> dict[str, bytes]:
    """The outputs in OUT: neither a run's staging folder nor the lock file of the run holding OUT."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not str(p.relative_to(out)).startswith(".staging-") and p.name != LOCK_NAME}


def test_a_subject_whose_reads_keep_failing_fails_alone_and_the_next_runs_pick_it_up(
    fresh: ServerHandle, trial: tuple[Path, Path], tmp_path: Path
) -> None:
    file_out = trial[1]
    expected = offline_results(file_out)
    victim = plan_trial(SUBJECTS, 7).subjects[3]
    config = str(write_config(tmp_path / "a.yaml", FAST))
    out = tmp_path / "out"

    fresh.set_faults(fault_match=victim.patient_id)  # every read of that patient's data answers 503
    first = invoke(fresh.base_url, out, "--post", "--config", config)
    assert first.exit_code == 2
    rep = report(out)
    assert rep["summary"]["subjects_failed"] == [victim.subject_id]
    [failure] = rep["subject_failures"]
    assert failure["subject_id"] == victim.subject_id and failure["stage"] == "read"
    assert victim.patient_id in failure["request"] and failure["request"].startswith("GET ")
    assert failure["last_status"] == 503 and failure["attempts"] == 4
    assert "picks this subject up again" in failure["what_to_do"]
    on_server = per_subject_on_server(fresh.base_url, expected)
    assert on_server[victim.subject_id] == 0
    assert all(on_server[s] == len(ids) for s, ids in expected.items() if s != victim.subject_id)
    assert not (out / "crf" / f"{victim.subject_id}.json").exists()  # so no later run can reuse it as unchanged
    assert (out / "state" / "last-run.json").exists()  # a base for --since last all the same

    fresh.clear_faults()  # the next full run picks the subject up
    assert invoke(fresh.base_url, out, "--post", "--config", config).exit_code in (0, 2)
    assert report(out)["subject_failures"] == []
    assert_like_uninterrupted(fresh.base_url, out, file_out)

    fresh.set_faults(fault_match=victim.patient_id)  # fails again in a full run...
    assert invoke(fresh.base_url, out, "--post", "--config", config).exit_code == 2
    fresh.clear_faults()  # ...and an incremental run reads it in full: its last CRF is not at hand
    assert invoke(fresh.base_url, out, "--post", "--since", "last", "--config", config).exit_code in (0, 2)
    rep = report(out)
    assert rep["subject_failures"] == [] and rep["counts"]["incremental.unchanged_subjects"] == SUBJECTS - 1
    assert_like_uninterrupted(fresh.base_url, out, file_out)


def test_since_last_after_a_run_in_which_one_subject_failed_part_way_through_its_reads_reads_it_in_full(
    fresh: ServerHandle, trial: tuple[Path, Path], tmp_path: Path
) -> None:
    """Issue 12 item 1: "the next run (full or --since last) picks the subject up again" — a run with a failed
    subject is a base for --since last, and the failed subject is read in full by it, never found unchanged."""
    file_out = trial[1]
    expected = offline_results(file_out)
    victim = plan_trial(SUBJECTS, 7).subjects[3]
    config = str(write_config(tmp_path / "a.yaml", FAST + "  page_size: 50\n"))
    out = tmp_path / "out"

    fresh.set_faults(fault_match=f"{victim.patient_id}&_count=50&_offset=100")  # page 3 of its Observations
    first = invoke(fresh.base_url, out, "--post", "--config", config)
    assert first.exit_code == 2, first.stderr
    rep = report(out)
    assert rep["summary"]["subjects_failed"] == [victim.subject_id]
    [failure] = rep["subject_failures"]
    assert "_offset=100" in failure["request"] and "--since last" in failure["what_to_do"]
    assert per_subject_on_server(fresh.base_url, expected)[victim.subject_id] == 0

    fresh.clear_faults()
    again = invoke(fresh.base_url, out, "--post", "--since", "last", "--config", config)
    assert again.exit_code in (0, 2), again.stderr
    rep = report(out)
    assert rep["subject_failures"] == [] and rep["summary"]["subjects_not_written"] == []
    assert rep["counts"]["incremental.changed_subjects"] == 1
    assert rep["counts"]["incremental.unchanged_subjects"] == SUBJECTS - 1
    assert [w["subject_id"] for w in rep["writes"]] == [victim.subject_id]
    assert per_subject_on_server(fresh.base_url, expected)[victim.subject_id] == len(expected[victim.subject_id])
    assert_like_uninterrupted(fresh.base_url, out, file_out)


def test_a_server_going_down_mid_run_stops_it_with_exit_3_and_keeps_what_is_complete(
    fresh: ServerHandle, trial: tuple[Path, Path], tmp_path: Path
) -> None:
    feed, file_out = trial
    expected = offline_results(file_out)
    out = tmp_path / "out"
    assert invoke(str(feed), out).exit_code in (0, 2)  # the previous (file) run's outputs
    before = outputs_snapshot(out)
    config = str(write_config(tmp_path / "a.yaml", FAST + "  max_concurrency: 1\n"))

    # down for good from the 30th request on: after the reads (3 roster searches, one group of 10 subjects: 9
    # searches for the group and 10 Observation searches), while the subjects are written one by one (a diff
    # search and a transaction each); one worker, so some are done
    fresh.set_faults(fault_down_after=30)
    stopped = invoke(fresh.base_url, out, "--post", "--config", config, "--workers", "1")
    assert stopped.exit_code == 3
    lines = [x for x in stopped.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: server unavailable since ")
    rep = report(out)
    done, left = rep["stopped"]["subjects_done"], rep["stopped"]["subjects_left"]
    assert f"; {done} subjects done, {len(left)} left; rerun" in line
    assert 0 < done < SUBJECTS and done + len(left) == SUBJECTS and rep["exit_code"] == 3
    after = outputs_snapshot(out)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed <= {"run-report.json", "state/written.json"}  # the previous outputs are kept
    requests = fresh.stats()["requests"]["total"]
    assert requests < 30 + 2 * 8 * 4 + 8  # only the subjects in flight (2 at a time) were tried, then it stopped
    fresh.clear_faults()  # the server is back (the checks below read it)
    on_server = per_subject_on_server(fresh.base_url, expected)
    assert all(n in (0, len(expected[s])) for s, n in on_server.items()), "a subject half-written"
    state_before = json.loads(before["state/written.json"])["results"]
    state = json.loads((out / "state" / "written.json").read_text())["results"]
    assert {i: e for i, e in state.items() if e["subject_id"] in left} == \
        {i: e for i, e in state_before.items() if e["subject_id"] in left}  # only confirmed writes recorded

    assert invoke(fresh.base_url, out, "--post", "--config", config).exit_code in (0, 2)
    assert_like_uninterrupted(fresh.base_url, out, file_out)


def test_a_server_going_down_between_the_transactions_of_a_split_subject_records_the_parts_it_confirmed(
    fresh: ServerHandle, trial: tuple[Path, Path], tmp_path: Path
) -> None:
    """A subject's write split by max_transaction_entries cannot be atomic across its transactions: when the
    server goes down between them, the parts it confirmed are on the server, and state/written.json and the run
    report say exactly which ("partially written: n of N"); the next run writes the rest, nothing twice."""
    file_out = trial[1]
    expected = offline_results(file_out)
    out = tmp_path / "out"
    # 7 entries a transaction: the Device, 5 results, the Provenance; one subject written at a time
    config = str(write_config(tmp_path / "a.yaml", FAST + "  max_concurrency: 1\n  max_transaction_entries: 7\n"))
    fresh.set_faults(fault_down_after=66)  # down for good in the middle of a subject's transactions
    stopped = invoke(fresh.base_url, out, "--post", "--config", config, "--workers", "1")
    assert stopped.exit_code == 3, stopped.stderr
    fresh.clear_faults()
    on_server = per_subject_on_server(fresh.base_url, expected)
    [half] = [s for s, n in on_server.items() if 0 < n < len(expected[s])]
    n, total = on_server[half], len(expected[half])
    rep = report(out)
    [entry] = [w for w in rep["writes"] if w["subject_id"] == half]
    assert entry["written"] == n and f"partially written: {n} of {total} results" in entry["error"]
    assert "the next run completes it" in entry["error"]
    [failure] = [f for f in rep["subject_failures"] if f["subject_id"] == half]
    assert "max_transaction_entries" in failure["what_to_do"] and "one transaction" in failure["what_to_do"]
    [line] = [x for x in stopped.stderr.splitlines() if x.strip()]
    written = [s for s, k in on_server.items() if k == len(expected[s])]  # done: written in full
    assert f"; {len(written)} subjects done, {SUBJECTS - len(written)} left, 1 partly written " in line
    assert rep["stopped"]["subjects_partly_written"] == [half] and half in rep["stopped"]["subjects_left"]
    state = json.loads((out / "state" / "written.json").read_text())["results"]
    on_server_ids = set(identifier_counts(adapter_observations(fresh.base_url)))
    assert {i for i, e in state.items() if e["subject_id"] == half} == \
        {i for i in expected[half] if i in on_server_ids}  # exactly the confirmed parts

    again = invoke(fresh.base_url, out, "--post", "--config", config)
    assert again.exit_code in (0, 2), again.stderr
    rep = report(out)
    assert rep["subject_failures"] == [] and rep["summary"]["subjects_not_written"] == []
    [entry] = [w for w in rep["writes"] if w["subject_id"] == half]
    assert entry["written"] == total - n and entry["unchanged"] >= n  # the rest only
    counts = identifier_counts(adapter_observations(fresh.base_url))
    assert sorted(counts) == sorted(i for ids in expected.values() for i in ids) and set(counts.values()) == {1}
    assert study_results(out) == study_results(file_out)


def test_connection_resets_and_answers_slower_than_the_read_timeout_stay_with_their_subject(
    fresh: ServerHandle, trial: tuple[Path, Path], tmp_path: Path
) -> None:
    file_out = trial[1]
    out = tmp_path / "out"
    # every 7th request reset, every 9th slow: a run of 10 subjects makes about 45 requests (reads in groups)
    fresh.set_faults(fault_reset_every=7, fault_slow_every=9, fault_slow_ms=4000)
    # a read timeout well above what a loaded test machine needs, far below the slow answers; the breaker is
    # not what this test is about
    config = str(write_config(tmp_path / "a.yaml", "  max_retry_after_seconds: 0.05\n  read_timeout: 2\n"
                              "  circuit_breaker_failures: 1000\n"))
    first = invoke(fresh.base_url, out, "--post", "--config", config)
    faults = fresh.stats()["faults"]
    fresh.clear_faults()
    assert faults["reset"] > 3 and faults["slow"] > 3
    assert first.exit_code in (0, 2)
    rep = report(out)
    # a read is retried, and so is a transaction (every entry conditional: a replay duplicates nothing); a
    # subject whose write still fails is reported alone as not written, and the next run completes it
    assert all(f["stage"] == "write" and "picks this subject up again" in f["what_to_do"]
               for f in rep["subject_failures"])
    assert rep["summary"]["subjects_failed"] == []
    assert rep["server_requests"]["retries"] >= 3
    assert invoke(fresh.base_url, out, "--post", "--config", config).exit_code in (0, 2)
    assert report(out)["subject_failures"] == []
    assert_like_uninterrupted(fresh.base_url, out, file_out)


def test_nothing_listening_exits_3_naming_the_url_and_what_to_check(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused, and no other process can listen there
        port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}/fhir/R4"
        config = str(write_config(tmp_path / "a.yaml", "  max_attempts: 2\n"))
        out = tmp_path / "out"
        result = invoke(url, out, "--config", config)
    assert result.exit_code == 3
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: server unavailable since ") and "0 subjects done, roster not read" in line
    assert url in line and f"nothing accepts connections at 127.0.0.1:{port}" in line
    assert "check the URL and port in --source" in line and "HTTPS_PROXY" in line
    assert report(out)["stopped"]["reason"] == "server-unavailable"


def test_check_against_nothing_listening_exits_3_and_a_name_that_does_not_resolve_exits_1(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "a.yaml", "  max_attempts: 2\n"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused, and no other process can listen there
        port = s.getsockname()[1]
        refused = CliRunner().invoke(main, ["check", "--source", f"http://127.0.0.1:{port}/fhir", "--config", config])
    assert refused.exit_code == 3 and f"nothing accepts connections at 127.0.0.1:{port}" in refused.stderr
    unknown = CliRunner().invoke(main, ["check", "--source", "http://fhir.invalid/fhir", "--config", config])
    assert unknown.exit_code == 1 and "'fhir.invalid' does not resolve" in unknown.stderr
    assert "gave up" not in unknown.stderr  # not retried


@pytest.fixture(scope="module")
def smart_env(tmp_path_factory: pytest.TempPathFactory, server: ServerHandle) -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("smart") / "key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return {"FHIR_ADAPTER_SMART_CLIENT_ID": "fhir-adapter-test-client", "FHIR_ADAPTER_SMART_KEY_FILE": str(path),
            "FHIR_ADAPTER_SMART_KID": "k1", "FHIR_ADAPTER_SMART_SCOPE": "system/*.rs system/Observation.cu",
            "FHIR_ADAPTER_SMART_TOKEN_URL": f"{server.root_url}/auth/token"}


def test_an_expired_token_is_renewed_once_and_the_run_goes_on(
    fresh: ServerHandle, trial: tuple[Path, Path], tmp_path: Path, smart_env: dict[str, str]
) -> None:
    fresh.set_faults(fault_401_after=30, fault_401_count=1)
    out = tmp_path / "out"
    result = invoke(fresh.base_url, out, "--post", "--config", str(write_config(tmp_path / "a.yaml", FAST)),
                    env=smart_env)
    assert result.exit_code in (0, 2), result.stderr
    stats = fresh.stats()
    assert stats["faults"]["401"] == 1 and stats["tokens_issued"] == 2
    fresh.clear_faults()
    assert_like_uninterrupted(fresh.base_url, out, trial[1])


def test_a_second_401_ends_the_run_with_exit_4_naming_the_token_endpoint_and_client(
    fresh: ServerHandle, trial: tuple[Path, Path], tmp_path: Path, smart_env: dict[str, str]
) -> None:
    feed, file_out = trial
    expected = offline_results(file_out)
    out = tmp_path / "out"
    assert invoke(str(feed), out).exit_code in (0, 2)
    before = outputs_snapshot(out)
    fresh.set_faults(fault_401_after=30, fault_401_count=1000)  # after the reads (about 22 requests), mid-writes
    result = invoke(fresh.base_url, out, "--post", "--config", str(write_config(tmp_path / "a.yaml", FAST)),
                    env=smart_env)
    assert result.exit_code == 4
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: authentication failed: ")
    assert smart_env["FHIR_ADAPTER_SMART_TOKEN_URL"] in line and "'fhir-adapter-test-client'" in line
    key = Path(smart_env["FHIR_ADAPTER_SMART_KEY_FILE"]).read_text()
    assert "test-token-" not in line and key.splitlines()[1] not in result.output + result.stderr
    after = outputs_snapshot(out)
    assert {k for k in set(before) | set(after) if before.get(k) != after.get(k)} <= \
        {"run-report.json", "state/written.json"}
    assert report(out)["stopped"]["reason"] == "auth-failed"
    fresh.clear_faults()
    on_server = per_subject_on_server(fresh.base_url, expected)
    assert all(n in (0, len(expected[s])) for s, n in on_server.items()), "a subject half-written"


def _kill_when(server: ServerHandle, out: Path, config: Path, ready: Callable[[dict[str, Any]], bool]) -> None:
    cmd = [sys.executable, "-c", "from fhir_adapter.cli.commands import main; main()", "-q", "run",
           "--source", server.base_url, "--out", str(out), "--post", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not ready(server.stats()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def _transactions(stats: dict[str, Any]) -> int:
    """Write transactions that reached the server (counted when processed; a held one in ``faults.slow``)."""
    return int(stats["requests"]["by_interaction"].get("transaction", 0))


@pytest.mark.parametrize("point", ["before the first write", "between subjects", "during a transaction"])
def test_kill_9_anywhere_then_rerun_gives_the_state_of_an_uninterrupted_run(
    fresh: ServerHandle, trial: tuple[Path, Path], tmp_path: Path, point: str
) -> None:
    feed, file_out = trial
    out = tmp_path / "out"
    assert invoke(str(feed), out).exit_code in (0, 2)  # previous outputs
    before = outputs_snapshot(out)
    config = write_config(tmp_path / "a.yaml", "  max_concurrency: 1\n")
    if point == "before the first write":
        # mid-reads: the 3 roster searches and 7 of the group's searches (Observations go as POST)
        _kill_when(fresh, out, config, lambda st: st["requests"]["by_method"].get("GET", 0) >= 10)
        assert _transactions(fresh.stats()) == 0
    elif point == "between subjects":
        _kill_when(fresh, out, config, lambda st: _transactions(st) >= 2)
    else:  # the 2nd transaction arrives, the server holds it 1.5 s, the client dies meanwhile; the server commits it
        fresh.set_faults(fault_slow_every=1, fault_slow_ms=1500, fault_slow_only="transaction")
        _kill_when(fresh, out, config, lambda st: st["faults"]["slow"] >= 2)
        time.sleep(2)
        assert _transactions(fresh.stats()) == 2  # committed after the client was gone
        fresh.clear_faults()
    assert outputs_snapshot(out) == before  # previous outputs and state/written.json exactly as they were
    assert list(out.glob(".staging-*"))  # the killed run's partial folder, named as such
    assert (out / LOCK_NAME).exists()   # the killed run's lock file: its process is gone, so it does not block

    result = invoke(fresh.base_url, out, "--post", "--config", str(write_config(tmp_path / "b.yaml")))
    assert result.exit_code in (0, 2), result.stderr
    assert not (out / LOCK_NAME).exists()
    assert_like_uninterrupted(fresh.base_url, out, file_out)


def _run_clearing_faults(server: ServerHandle, out: Path, config: Path, ready: Callable[[dict[str, Any]], bool]
                         ) -> int:
    """``run --post`` in its own process; the server's faults are cleared as soon as ``ready(stats)``."""
    cmd = [sys.executable, "-c", "from fhir_adapter.cli.commands import main; main()", "-q", "run",
           "--source", server.base_url, "--out", str(out), "--post", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline, cleared = time.monotonic() + 300, False
    while time.monotonic() < deadline and proc.poll() is None:
        if not cleared and ready(server.stats()):
            server.clear_faults()
            cleared = True
        time.sleep(0.01)
    assert cleared, "the fault never happened"
    return proc.wait(timeout=60)


@pytest.mark.parametrize("phase", ["before", "after"])
def test_a_transaction_answered_slower_than_the_read_timeout_is_sent_again_and_written_once(
    fresh: ServerHandle, trial: tuple[Path, Path], tmp_path: Path, phase: str
) -> None:
    """The first transaction's answer comes after the read timeout: held before the server processes it, or
    (``after``) committed at once and only answered late. The client sends it again (every entry is
    conditional); the subject is written, once — also when the replay's If-Match updates answer 412 because
    the first attempt was committed."""
    file_out = trial[1]
    out = tmp_path / "out"
    config = write_config(tmp_path / "a.yaml", "  read_timeout: 2\n  max_concurrency: 1\n")
    slow: dict[str, int | str] = {"fault_slow_every": 1, "fault_slow_ms": 4000, "fault_slow_only": "transaction",
                                  "fault_slow_phase": phase}

    def first_slow(st: dict[str, Any]) -> bool:
        return bool(st["faults"]["slow"] >= 1)

    fresh.set_faults(**slow)  # the results are created
    assert _run_clearing_faults(fresh, out, config, first_slow) in (0, 2)
    rep = report(out)
    assert rep["subject_failures"] == [] and rep["summary"]["subjects_not_written"] == []
    assert rep["server_requests"]["retries"] >= 1
    time.sleep(4)  # the held attempt has been processed meanwhile (phase before: after its replay)
    assert_like_uninterrupted(fresh.base_url, out, file_out)

    # every result edited on the server: the next run updates each with If-Match on the version it reads
    edited = [{**o, "note": [{"text": "edited by hand"}]} for o in adapter_observations(fresh.base_url)]
    put_resources(fresh.base_url, edited)
    provenance = len(search_all(fresh.base_url, "Provenance", {}))
    fresh.reset("stats")  # faults.slow from 0 again
    fresh.set_faults(**slow)
    assert _run_clearing_faults(fresh, out, config, first_slow) in (0, 2)
    rep = report(out)
    assert rep["subject_failures"] == [] and rep["summary"]["subjects_not_written"] == []
    assert rep["server_requests"]["retries"] >= 1
    time.sleep(4)
    observations = adapter_observations(fresh.base_url)
    assert not any("note" in o for o in observations) and set(identifier_counts(observations).values()) == {1}
    assert len(observations) == len(edited)
    # one Provenance more per subject written, none twice
    assert len(search_all(fresh.base_url, "Provenance", {})) == provenance + len(rep["writes"])
