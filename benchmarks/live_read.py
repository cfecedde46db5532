"""A live run (``run --source URL``, no --post) against its baseline, the plain reader + the offline pipeline, on the
same local FHIR test server (tests/fhir_server) and cohort, in one run.

Usage: python benchmarks/live_read.py [--subjects 34] [--page-size 1000] [--inflight 8] [--workdir DIR]
                                      [--code-param auto none combo-code]

Writes the synthetic feed (seed 7), runs the offline pipeline on it (``run --source FOLDER``), starts a fresh
server, loads the feed, then
* the plain reader: an async httpx client, ``--inflight`` requests in flight, one ``Type?patient=Patient/x&_count=
  PAGE`` search per enrolled patient and resource type the mapping reads, following ``next`` links — reading
  only, no mapping;
* the adapter: ``run --source URL`` in a fresh process, once per ``--code-param`` (``observation_code_param``;
  ``auto``, the default configuration, prints what the run's timing chose), with ``client.page_size`` PAGE and
  the default ``patients_per_search``.
Prints per row: requests to the server and per subject, wall seconds, client CPU seconds (the process and its
children), server CPU seconds (the Node process, /proc), and for the adapter the ratios to the baseline (plain
reader + offline pipeline: wall and client CPU added up; server CPU of the plain reader) and whether its
outputs (CRFs, study.json) equal the offline run's. Prints ``uptime`` before and after: the
machine may be shared. Numbers only; no pass/fail. Needs `make fhir-test-server`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from cli_run import timed_cli

from fhir_adapter.source.server import SUBJECT_SEARCHES
from fhir_adapter.synth import write_feed
from fhir_adapter.testing.feed_loader import load_feed
from fhir_adapter.testing.fhir_server import ServerHandle, start_fhir_server
from fhir_adapter.testing.outtree import server_read_crfs


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_cpu(server: ServerHandle) -> float:
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_adapter(*args: str) -> tuple[float, float]:
    """Wall and CPU seconds (the adapter process and its workers) of ``fhir-adapter -q ARGS``."""
    cpu0 = children_cpu()
    seconds, code = timed_cli(*args)
    if code not in (0, 2):
        raise SystemExit(f"fhir-adapter {' '.join(args)} failed ({code})")
    return seconds, children_cpu() - cpu0


async def plain_read(base: str, patients: list[str], page: int, inflight: int) -> tuple[int, int]:
    """(requests, resources) of one search per patient and type, ``inflight`` at a time."""
    requests = resources = 0
    gate = asyncio.Semaphore(inflight)
    async with httpx.AsyncClient(timeout=300, headers={"Accept": "application/fhir+json"}) as client:

        async def search(rtype: str, pid: str) -> None:
            nonlocal requests, resources
            url: str | None = f"{base}/{rtype}"
            params: dict[str, Any] | None = {SUBJECT_SEARCHES[rtype][0]: f"Patient/{pid}", "_count": page}
            while url is not None:
                async with gate:
                    bundle = (await client.get(url, params=params)).raise_for_status().json()
                requests += 1
                resources += len(bundle.get("entry") or [])
                url = next((x["url"] for x in bundle.get("link") or [] if x.get("relation") == "next"), None)
                params = None

        await asyncio.gather(*(search(t, p) for p in patients for t in SUBJECT_SEARCHES))
    return requests, resources


def enrolled_patients(feed: Path) -> list[str]:
    lines = (feed / "ResearchSubject.ndjson").read_text().splitlines()
    return sorted({json.loads(x)["individual"]["reference"].split("/")[-1] for x in lines if x.strip()})


def outputs(out: Path) -> tuple[Any, bytes]:
    """The CRFs and study.json."""
    return server_read_crfs(out), (out / "results" / "study.json").read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=34)
    ap.add_argument("--page-size", type=int, default=1000, help="_count of the plain reader and the adapter")
    ap.add_argument("--inflight", type=int, default=8, help="requests in flight (plain reader and adapter)")
    ap.add_argument("--code-param", nargs="+", default=["auto", "none", "combo-code"],
                    help="observation_code_param values to run the adapter with")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fhir-adapter-live-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    feed = work / "feed"
    write_feed(feed, subjects=args.subjects, seed=7)
    n = args.subjects
    offline_wall, offline_cpu = timed_adapter("run", "--source", str(feed), "--out", str(work / "offline"))
    expected = outputs(work / "offline")
    header = f"{'':<34} {'requests':>8} {'req/subj':>8} {'wall s':>7} {'CPU s':>7} {'server CPU s':>12}"
    with start_fhir_server(MAX_PAGE_SIZE=str(max(1000, args.page_size))) as server:
        load_feed(server.base_url, feed)
        print(f"{n} subjects, page size {args.page_size}, {args.inflight} requests in flight")
        print(header)
        server.reset("stats")
        s0, c0, t0 = server_cpu(server), time.process_time(), time.perf_counter()
        requests, read = asyncio.run(plain_read(server.base_url, enrolled_patients(feed), args.page_size,
                                                args.inflight))
        plain = (time.perf_counter() - t0, time.process_time() - c0, server_cpu(server) - s0)
        print(f"{'plain reader (' + str(read) + ' resources)':<34} {requests:>8} {requests / n:>8.2f} "
              f"{plain[0]:>7.1f} {plain[1]:>7.1f} {plain[2]:>12.1f}")
        print(f"{'offline pipeline (run FOLDER)':<34} {'':>8} {'':>8} {offline_wall:>7.1f} {offline_cpu:>7.1f}")
        base_wall, base_cpu = plain[0] + offline_wall, plain[1] + offline_cpu
        print(f"{'baseline: plain reader + offline':<34} {requests:>8} {requests / n:>8.2f} {base_wall:>7.1f} "
              f"{base_cpu:>7.1f} {plain[2]:>12.1f}")
        for param in args.code_param:
            config = work / f"adapter-{param}.yaml"
            config.write_text(f"client:\n  page_size: {args.page_size}\n  max_concurrency: {args.inflight}\n"
                              f"observation_code_param: {param}\n")
            out = work / f"live-{param}"
            server.reset("stats")
            s0 = server_cpu(server)
            wall, cpu = timed_adapter("run", "--source", server.base_url, "--out", str(out), "--config", str(config))
            scpu = server_cpu(server) - s0
            total = int(server.stats()["requests"]["total"])
            report = json.loads((out / "run-report.json").read_text())
            same = outputs(out) == expected
            how = report["server_requests"].get("observation_search") or {}
            chose = f" ({how.get('observation_code_param')})" if param == "auto" else ""
            print(f"{'adapter live, ' + param + chose:<34} {total:>8} {total / n:>8.2f} {wall:>7.1f} {cpu:>7.1f} "
                  f"{scpu:>12.1f}   wall x{wall / base_wall:.2f}, CPU x{cpu / base_cpu:.2f}, "
                  f"server CPU x{scpu / plain[2]:.2f}; outputs = offline: {same}; "
                  f"report mean_per_subject {report['server_requests']['mean_per_subject']}")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
