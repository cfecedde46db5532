"""Live-server sync: the adapter against the local FHIR test server (tests/fhir_server) loaded with the synthetic
trial.

Usage: python benchmarks/server_sync.py [--sizes 34 340] [--page-size 1000] [--workdir DIR]

For each size: starts a fresh server, loads the feed (seed 7), then runs ``fhir-adapter run --post`` twice:
a first run (reads everything, writes every result) and a second run with ``--since last`` and no change in
between. Prints, per run: requests per subject (the adapter's client: each subject's own requests plus an even
share of the multi-patient searches; the roster and the incremental probes are shared and shown separately),
wall time, resources read per second, server writes per subject. Targets to compare with: at most 3 requests
per subject for reading plus the diff search and the transaction, and a second run that reads only changes and
writes nothing. Prints numbers only; no pass/fail.
Needs `make fhir-test-server`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cli_run import timed_run

from fhir_adapter.source.server import SUBJECT_SEARCHES
from fhir_adapter.synth import write_feed
from fhir_adapter.testing.feed_loader import load_feed
from fhir_adapter.testing.fhir_server import start_fhir_server

ROOT = Path(__file__).resolve().parent.parent




def adapter_run(base_url: str, out: Path, config: Path, *extra: str) -> float:
    return timed_run(base_url, out, "--post", "--config", str(config), *extra)


def row(label: str, subjects: int, seconds: float, report: dict[str, object], writes: int) -> str:
    req = report["server_requests"]
    assert isinstance(req, dict)
    counts = report["counts"]
    assert isinstance(counts, dict)
    read = sum(int(v) for k, v in counts.items() if k.startswith("read.") and k != "read.skipped-adapter-results")
    per_subject = (sum(req["per_subject"].values()) + req["shared"].get("subjects", 0)) / subjects
    shared = sum(req["shared"].values())
    return (f"{label:<22} {per_subject:>8.2f} {shared:>7} {req['total']:>9} {seconds:>8.1f} {read:>10} "
            f"{read / seconds:>10.0f} {writes / subjects:>10.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[34, 340])
    ap.add_argument("--page-size", type=int, default=1000, help="_count of the adapter's searches")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fhir-adapter-server-bench-"))
    config = work / "adapter.yaml"
    work.mkdir(parents=True, exist_ok=True)
    config.write_text(f"client:\n  max_concurrency: 4\n  page_size: {args.page_size}\n")
    print(f"resource types read per subject: {len(SUBJECT_SEARCHES)}; page size {args.page_size}; "
          f"requests/subject = a share of the group searches + 1 diff of the adapter's results + transactions")
    header = (f"{'run':<22} {'req/subj':>8} {'shared':>7} {'requests':>9} {'wall s':>8} {'resources':>10} "
              f"{'res/s':>10} {'writes/subj':>10}")
    for n in args.sizes:
        feed, out = work / f"feed-{n}", work / f"out-{n}"
        write_feed(feed, subjects=n, seed=7)
        with start_fhir_server(NODE_OPTIONS="--max-old-space-size=4096") as server:
            t0 = time.perf_counter()
            loaded = load_feed(server.base_url, feed)
            print(f"\n{n} subjects: loaded {loaded} resources in {time.perf_counter() - t0:.1f} s")
            print(header)
            for label, extra in (("first run", ()), ("second, --since last", ("--since", "last"))):
                server.reset("stats")
                seconds = adapter_run(server.base_url, out, config, *extra)
                rep = json.loads((out / "run-report.json").read_text())
                print(row(label, n, seconds, rep, int(server.stats()["writes"]["total"])))


if __name__ == "__main__":
    main()
