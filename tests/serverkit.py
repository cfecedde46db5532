"""Helpers of the integration tests against the real local FHIR server (tests/integration/)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner, Result

from fhir_adapter.cli.commands import main
from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.testing.feed_loader import search_all
from fhir_adapter.testing.fhir_server import ServerHandle
from fhir_adapter.testing.outtree import server_read_crfs

#: quick retries (the test server's Retry-After is 0), larger pages: requests per subject ≈ resource types
FAST_CONFIG = """\
client:
  max_concurrency: 4
  page_size: 1000
  max_attempts: 12
  max_total_seconds: 60
  backoff_initial_seconds: 0.01
  backoff_max_seconds: 0.05
  backoff_jitter_seconds: 0.01
"""


def write_config(path: Path, extra: str = "") -> Path:
    path.write_text(FAST_CONFIG + extra)
    return path


def cli_run(source: str, out: Path, *args: str) -> Result:
    """``fhir-adapter -q run --source SOURCE --out OUT ARGS`` in process; the exit code is in ``.exit_code``."""
    result = CliRunner().invoke(main, ["-q", "run", "--source", source, "--out", str(out), *args],
                                catch_exceptions=False)
    assert result.exit_code in (0, 2), result.output
    return result


def report(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "run-report.json").read_text())
    return data


def offline_results(out: Path) -> dict[str, list[str]]:
    """Subject ID -> identifier values of the result resources in OUT/writeback/ (what the server must hold)."""
    found: dict[str, list[str]] = {}
    for path in sorted((out / "writeback").glob("*.json")):
        bundle = json.loads(path.read_text())
        # the results of the transaction (not the adapter Device nor the Provenance that travel with them)
        found[path.stem] = [i["value"] for e in bundle["entry"] if e["resource"].get("status") != "entered-in-error"
                            for i in e["resource"].get("identifier") or [] if i["system"] == SID_RESULT]
    return found


def adapter_observations(base_url: str) -> list[dict[str, Any]]:
    """Every Observation on the server carrying an identifier in the adapter's system."""
    return [o for o in search_all(base_url, "Observation", {"identifier": f"{SID_RESULT}|"})
            if any(i.get("system") == SID_RESULT for i in o.get("identifier") or [])]


def identifier_counts(observations: list[dict[str, Any]]) -> Counter[str]:
    return Counter(next(i["value"] for i in o["identifier"] if i["system"] == SID_RESULT) for o in observations)




def study_results(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results" / "study.json").read_text())
    return data


def writes(server_stats: dict[str, Any]) -> int:
    total: int = server_stats["writes"]["total"]
    return total


def wipe_adapter_writes(server: ServerHandle) -> None:
    """Delete what the adapter wrote (its Observations, every Provenance and Device); faults and counters off."""
    server.clear_faults()
    written = adapter_observations(server.base_url) + search_all(server.base_url, "Provenance", {}) + \
        search_all(server.base_url, "Device", {})
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for r in written:
            client.delete(f"/{r['resourceType']}/{r['id']}").raise_for_status()
    server.reset("stats")


def assert_like_uninterrupted(base_url: str, out: Path, file_out: Path) -> None:
    """The server holds exactly the resources of an uninterrupted run (the clean file run's results, each once;
    one Provenance per subject with results, every target present; one Device) and OUT's outputs equal the
    clean run's."""
    expected = offline_results(file_out)
    observations = adapter_observations(base_url)
    counts = identifier_counts(observations)
    assert sorted(counts) == sorted(i for ids in expected.values() for i in ids)
    assert set(counts.values()) == {1}, "duplicate results"
    provenance = search_all(base_url, "Provenance", {})
    assert len(provenance) == sum(1 for ids in expected.values() if ids), "a Provenance written twice or missing"
    ids = {f"Observation/{o['id']}" for o in observations} | \
        {f"ResearchSubject/{r['id']}" for r in search_all(base_url, "ResearchSubject", {})}
    assert all(t["reference"] in ids for p in provenance for t in p["target"]), "orphan Provenance"
    assert len(search_all(base_url, "Device", {})) == 1
    assert study_results(out) == study_results(file_out)
    assert server_read_crfs(out) == server_read_crfs(file_out)
    assert not list(out.glob(".staging-*"))
