"""Live run under faults: the same ``fhir-adapter run --post`` of the synthetic trial against the local FHIR test
server, clean and under the faults of a bad hospital server.

Usage: python benchmarks/live_faults.py [--subjects 34] [--seeds 1 2 3] [--retry-after 1] [--workdir DIR]

Starts a fresh server, loads the feed (seed 7), then for a clean run and for each fault seed (20 % of requests
answered 503, every 7th 429 with ``Retry-After: 1``, the default retry policy honouring it) removes what the
adapter wrote, runs ``run --post`` with the default client settings and prints: wall time, exit code, requests,
retries, faults the server injected, whether the server ends with exactly the results of the clean run (each
once, one Provenance per subject with results) and whether results/study.json equals the clean run's. Prints
numbers only; no pass/fail. Needs `make fhir-test-server`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from cli_run import timed_cli

from fhir_adapter.synth import write_feed
from fhir_adapter.terminology.codes import SID_RESULT
from fhir_adapter.testing.feed_loader import load_feed, search_all
from fhir_adapter.testing.fhir_server import ServerHandle, start_fhir_server

ROOT = Path(__file__).resolve().parent.parent




def adapter_run(base_url: str, out: Path) -> tuple[float, int]:
    return timed_cli("run", "--source", base_url, "--out", str(out), "--post")


def server_results(base_url: str) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    for o in search_all(base_url, "Observation", {"identifier": f"{SID_RESULT}|"}):
        for i in o.get("identifier") or []:
            if i.get("system") == SID_RESULT:
                counts[i["value"]] += 1
    return counts, len(search_all(base_url, "Provenance", {}))


def wipe(server: ServerHandle) -> None:
    server.clear_faults()
    owned = [o for o in search_all(server.base_url, "Observation", {"identifier": f"{SID_RESULT}|"})]
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for r in owned + search_all(server.base_url, "Provenance", {}) + search_all(server.base_url, "Device", {}):
            client.delete(f"/{r['resourceType']}/{r['id']}").raise_for_status()
    server.reset("stats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=34)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--retry-after", default="1")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fhir-adapter-faults-"))
    write_feed(work / "feed", subjects=args.subjects, seed=7)
    with start_fhir_server() as server:
        load_feed(server.base_url, work / "feed")
        print(f"{args.subjects} subjects; faults: 20 % 503, every 7th 429 (Retry-After: {args.retry_after})")
        print(f"{'run':<10}{'wall s':>8}{'exit':>6}{'requests':>10}{'retries':>9}{'503':>6}{'429':>6}"
              f"{'server = clean':>16}{'study.json = clean':>20}")
        clean: tuple[Counter[str], int] | None = None
        clean_study: Any = None
        for label, seed in [("clean", None), *[(f"seed {s}", s) for s in args.seeds]]:
            wipe(server)
            if seed is not None:
                server.set_faults(fault_503_rate=0.2, fault_429_every=7, fault_seed=seed,
                                  fault_retry_after=args.retry_after)
            out = work / f"out-{label.replace(' ', '-')}"
            wall, code = adapter_run(server.base_url, out)
            stats = server.stats()
            server.clear_faults()
            state = server_results(server.base_url)
            study = json.loads((out / "results" / "study.json").read_text())
            rep = json.loads((out / "run-report.json").read_text())
            if clean is None:
                clean, clean_study = state, study
            same = state == clean and set(state[0].values()) == {1}
            print(f"{label:<10}{wall:>8.1f}{code:>6}{rep['server_requests']['total']:>10}"
                  f"{rep['server_requests']['retries']:>9}{stats['faults']['503']:>6}{stats['faults']['429']:>6}"
                  f"{'yes' if same else 'NO':>16}{'yes' if study == clean_study else 'NO':>20}")


if __name__ == "__main__":
    main()
