"""Bulk Data $export against REST searches, on the same server and cohort: the local FHIR test server
(tests/fhir_server, with its $export in bulk-export.mjs) loaded with the synthetic trial.

Usage: python benchmarks/bulk_vs_rest.py [--sizes 34] [--page-size 1000] [--workdir DIR]

For each size: starts a fresh server, loads the feed (seed 7), then runs ``fhir-adapter run`` (read only, no
--post) once through REST searches and once with ``--bulk``, each in a fresh process. Prints per path: wall
time, HTTP requests made by the adapter (server side: all requests the server answered), resources read, and
resources read per second; and whether both paths wrote the same results. Prints numbers only; no pass/fail.
Needs `make fhir-test-server`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from cli_run import timed_run

from fhir_adapter.synth import write_feed
from fhir_adapter.testing.feed_loader import load_feed
from fhir_adapter.testing.fhir_server import start_fhir_server

ROOT = Path(__file__).resolve().parent.parent




def adapter_run(base_url: str, out: Path, config: Path, *extra: str) -> float:
    return timed_run(base_url, out, "--config", str(config), *extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[34])
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fhir-adapter-bulk-bench-"))
    config = work / "adapter.yaml"
    work.mkdir(parents=True, exist_ok=True)
    config.write_text(f"client:\n  page_size: {args.page_size}\n  max_concurrency: 4\n")
    header = ("subjects", "path", "wall s", "requests", "server req", "resources", "res/s", "same results")
    widths = (8, 5, 7, 9, 10, 10, 8, 12)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for n in args.sizes:
        feed = work / f"feed-{n}"
        write_feed(feed, subjects=n, seed=7)
        with start_fhir_server(MAX_PAGE_SIZE=str(max(1000, args.page_size))) as server:
            load_feed(server.base_url, feed)
            results: dict[str, bytes] = {}
            for label, extra in (("rest", ()), ("bulk", ("--bulk",))):
                out = work / f"out-{n}-{label}"
                server.reset("stats")
                seconds = adapter_run(server.base_url, out, config, *extra)
                report = json.loads((out / "run-report.json").read_text())
                requests = report["server_requests"]["total"]
                read = sum(v for k, v in report["counts"].items() if k.startswith("read.") and "skipped" not in k)
                results[label] = (out / "results" / "study.json").read_bytes()
                same = "" if label == "rest" else str(results["rest"] == results["bulk"])
                row = (n, label, f"{seconds:.1f}", requests, server.stats()["requests"]["total"], read,
                       f"{read / seconds:.0f}", same)
                print(" ".join(f"{v!s:>{w}}" for v, w in zip(row, widths, strict=True)), flush=True)


if __name__ == "__main__":
    main()
