"""A live run (``run --source URL``, no --post) against its baseline, the plain reader + the offline pipeline, on the
same local FHIR test server (tests/fhir_server) and cohort, in one run.

Usage: python benchmarks/live_read.py [--subjects 34] [--page-size 1000] [--inflight 8] [--workdir DIR]
                                      [--code-param auto none combo-code] [--repeat N]

Writes the synthetic feed (seed 7), runs the offline pipeline on it (``run --source FOLDER``), starts a fresh
server, loads the feed, then
* the plain reader: an async httpx client, ``--inflight`` requests in flight, reading the resource types the
  adapter reads, each the plainest way — the roster (``ResearchStudy?identifier=`` of the study and
  ``?partof=`` its site studies, ``ResearchSubject?study=``), then per patient the offline run enrolled (a CRF
  in its OUT): ``GET Patient/x`` and one ``Type?patient=Patient/x&_count=PAGE`` search per resource type the
  mapping reads (AdverseEvent by ``subject=``) and for its Specimens, and one type search
  (``Type?_count=PAGE``) for each of Medication, Organization and Location (shared by the patients, not
  searchable by patient); following ``next`` links — reading only, no mapping;
* the adapter: ``run --source URL`` in a fresh process, once per ``--code-param`` (``observation_code_param``;
  ``auto``, the default configuration, prints what the run's timing chose), with ``client.page_size`` PAGE,
  ``client.max_concurrency`` ``--inflight`` and the default ``patients_per_search``.
Prints per row: requests to the server and per subject, wall seconds, client CPU seconds (the process and every
process it starts: the benchmark is their child subreaper, so workers are counted too), server CPU seconds (the
Node process, /proc), and for the adapter the ratios to the baseline (plain reader + offline pipeline: wall and
client CPU added up; server CPU of the plain reader) and whether its outputs (CRFs, study.json) equal the
offline run's. With ``--repeat N`` the plain reader and the adapter runs alternate N times on the same server
and the median ratios (each against the plain reader of its own round) are printed last: one pair of runs can
differ by several per cent in server CPU. Prints ``uptime`` before and after: the machine may be shared (CPU
seconds and requests hold under load; wall ratios only within one run). Numbers only; no pass/fail. Needs
`make fhir-test-server`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from cli_run import timed_cli

from fhir_adapter.source.base import SHARED_TYPES
from fhir_adapter.source.server import SUBJECT_SEARCHES
from fhir_adapter.synth import write_feed
from fhir_adapter.testing.feed_loader import load_feed
from fhir_adapter.testing.fhir_server import ServerHandle, start_fhir_server
from fhir_adapter.testing.outtree import server_read_crfs

PR_SET_CHILD_SUBREAPER = 36
#: per patient, besides Patient/x: the adapter's searches, and its Specimens (searched by patient)
PLAIN_SEARCHES = {**{t: p for t, (p, _) in SUBJECT_SEARCHES.items()}, "Specimen": "patient"}
#: shared types the plain reader reads with a type search
PLAIN_SHARED = tuple(t for t in SHARED_TYPES if t not in PLAIN_SEARCHES)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def adopt_orphans() -> None:
    """Become the child subreaper of the processes started from here: a process whose parent ends before it
    (the worker pool's forkserver) is reaped here, its CPU and its workers' counted in RUSAGE_CHILDREN."""
    if ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed: Linux needed")


def child_pids() -> set[int]:
    me = os.getpid()
    return {int(c) for task in Path(f"/proc/{me}/task").iterdir()
            for c in (task / "children").read_text().split()}


def reap_orphans(keep: set[int], timeout: float = 60.0) -> None:
    """Wait for (and reap) every child process but ``keep`` (the server): the adapter's leftovers."""
    deadline = time.monotonic() + timeout
    while (left := child_pids() - keep) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def server_cpu(server: ServerHandle) -> float:
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_adapter(*args: str, keep: frozenset[int] | set[int] = frozenset()) -> tuple[float, float]:
    """Wall and CPU seconds (the adapter process and every process it started) of ``fhir-adapter -q ARGS``."""
    cpu0 = children_cpu()
    seconds, code = timed_cli(*args)
    if code not in (0, 2):
        raise SystemExit(f"fhir-adapter {' '.join(args)} failed ({code})")
    reap_orphans(set(keep))
    return seconds, children_cpu() - cpu0


async def plain_read(base: str, study: str, subject_ids: set[str], page: int,
                     inflight: int) -> tuple[int, int, int]:
    """(requests, resources, patients) of the plain reader, ``inflight`` requests at a time."""
    requests = resources = 0
    gate = asyncio.Semaphore(inflight)
    async with httpx.AsyncClient(timeout=300, headers={"Accept": "application/fhir+json"}) as client:

        async def get(url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
            nonlocal requests, resources
            async with gate:
                answer: dict[str, Any] = (await client.get(url, params=params)).raise_for_status().json()
            requests += 1
            resources += len(answer.get("entry") or []) if answer.get("resourceType") == "Bundle" else 1
            return answer

        async def search(rtype: str, params: dict[str, Any]) -> list[dict[str, Any]]:
            url: str | None = f"{base}/{rtype}"
            query: dict[str, Any] | None = {**params, "_count": page}
            found: list[dict[str, Any]] = []
            while url is not None:
                bundle = await get(url, query)
                found += [e["resource"] for e in bundle.get("entry") or []]
                url = next((x["url"] for x in bundle.get("link") or [] if x.get("relation") == "next"), None)
                query = None
            return found

        studies = await search("ResearchStudy", {"identifier": study})
        studies += await search("ResearchStudy", {"partof": ",".join(f"ResearchStudy/{s['id']}" for s in studies)})
        subjects = await search("ResearchSubject", {"study": ",".join(f"ResearchStudy/{s['id']}" for s in studies)})
        pids = sorted({rs["individual"]["reference"].split("/")[-1] for rs in subjects
                       if any(i.get("value") in subject_ids for i in rs.get("identifier") or [])})
        await asyncio.gather(*(get(f"{base}/Patient/{p}") for p in pids),
                             *(search(t, {param: f"Patient/{p}"}) for p in pids for t, param in PLAIN_SEARCHES.items()),
                             *(search(t, {}) for t in PLAIN_SHARED))
    return requests, resources, len(pids)


def study_token(feed: Path) -> str:
    """``system|value`` of the feed's ResearchStudy identifier."""
    ident = json.loads((feed / "ResearchStudy.ndjson").read_text().splitlines()[0])["identifier"][0]
    return f"{ident['system']}|{ident['value']}"


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
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of (plain reader, then the adapter per --code-param) on the same server; with more "
                         "than one, the median ratios are printed last")
    args = ap.parse_args()
    adopt_orphans()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fhir-adapter-live-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    feed = work / "feed"
    write_feed(feed, subjects=args.subjects, seed=7)
    n = args.subjects
    offline_wall, offline_cpu = timed_adapter("run", "--source", str(feed), "--out", str(work / "offline"))
    expected = outputs(work / "offline")
    enrolled = {json.loads(f.read_bytes())["subject_id"] for f in (work / "offline" / "crf").glob("*.json")}
    header = f"{'':<34} {'requests':>8} {'req/subj':>8} {'wall s':>7} {'CPU s':>7} {'server CPU s':>12}"
    with start_fhir_server(MAX_PAGE_SIZE=str(max(1000, args.page_size))) as server:
        load_feed(server.base_url, feed)
        print(f"{n} subjects, page size {args.page_size}, {args.inflight} requests in flight, {args.repeat} round(s)")
        print(header)
        ratios: dict[str, list[tuple[float, float, float]]] = {}
        for _ in range(args.repeat):  # a round: the plain reader, then the adapter once per --code-param
            server.reset("stats")
            s0, c0, t0 = server_cpu(server), time.process_time(), time.perf_counter()
            requests, read, patients = asyncio.run(plain_read(server.base_url, study_token(feed), enrolled,
                                                              args.page_size, args.inflight))
            plain = (time.perf_counter() - t0, time.process_time() - c0, server_cpu(server) - s0)
            print(f"{'plain reader (' + str(read) + ' resources)':<34} {requests:>8} {requests / n:>8.2f} "
                  f"{plain[0]:>7.1f} {plain[1]:>7.1f} {plain[2]:>12.1f}   {patients} patients")
            print(f"{'offline pipeline (run FOLDER)':<34} {'':>8} {'':>8} {offline_wall:>7.1f} {offline_cpu:>7.1f}")
            base_wall, base_cpu = plain[0] + offline_wall, plain[1] + offline_cpu
            print(f"{'baseline: plain reader + offline':<34} {requests:>8} {requests / n:>8.2f} {base_wall:>7.1f} "
                  f"{base_cpu:>7.1f} {plain[2]:>12.1f}")
            for param in args.code_param:
                config = work / f"adapter-{param}.yaml"
                config.write_text(f"client:\n  page_size: {args.page_size}\n  max_concurrency: {args.inflight}\n"
                                  f"observation_code_param: {param}\n")
                out = work / f"live-{param}"
                shutil.rmtree(out, ignore_errors=True)
                server.reset("stats")
                s0 = server_cpu(server)
                wall, cpu = timed_adapter("run", "--source", server.base_url, "--out", str(out), "--config",
                                          str(config), keep={server.process.pid})
                scpu = server_cpu(server) - s0
                total = int(server.stats()["requests"]["total"])
                report = json.loads((out / "run-report.json").read_text())
                same = outputs(out) == expected
                how = report["server_requests"].get("observation_search") or {}
                chose = f" ({how.get('observation_code_param')})" if param == "auto" else ""
                ratios.setdefault(param, []).append((wall / base_wall, cpu / base_cpu, scpu / plain[2]))
                print(f"{'adapter live, ' + param + chose:<34} {total:>8} {total / n:>8.2f} {wall:>7.1f} {cpu:>7.1f} "
                      f"{scpu:>12.1f}   wall x{wall / base_wall:.2f}, CPU x{cpu / base_cpu:.2f}, "
                      f"server CPU x{scpu / plain[2]:.2f}; outputs = offline: {same}; "
                      f"report mean_per_subject {report['server_requests']['mean_per_subject']}")
        if args.repeat > 1:
            print(f"median of {args.repeat} rounds (each ratio against the plain reader of its own round):")
            for param, rows in ratios.items():
                wall_r, cpu_r, server_r = (statistics.median(col) for col in zip(*rows, strict=True))
                print(f"  adapter live, {param:<20} wall x{wall_r:.2f}, CPU x{cpu_r:.2f}, server CPU x{server_r:.2f}"
                      f"  (server CPU ratios: {', '.join(f'{r[2]:.2f}' for r in rows)})")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
