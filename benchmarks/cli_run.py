"""Time one ``fhir-adapter`` command in a fresh child process, as a user starts it (shared by the benchmarks)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_cli(*args: str) -> tuple[float, int]:
    """Wall seconds and exit code of ``fhir-adapter -q ARGS`` run from the project root."""
    cmd = [sys.executable, "-c", "from fhir_adapter.cli.commands import main; main()", "-q", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 2, 3):
        sys.stderr.write(proc.stderr[-2000:])
    return seconds, proc.returncode


def timed_run(base_url: str, out: Path, *extra: str) -> float:
    """Wall seconds of ``run --source BASE_URL --out OUT EXTRA``; a failed run (exit not 0 or 2) ends the benchmark."""
    seconds, code = timed_cli("run", "--source", base_url, "--out", str(out), *extra)
    if code not in (0, 2):
        raise SystemExit(f"fhir-adapter run failed ({code})")
    return seconds
