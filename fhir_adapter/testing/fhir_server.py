"""Start the in-memory FHIR R4 test server of a source checkout (``tests/fhir_server/server.mjs``, Node.js and
Medplum's FHIR router) on 127.0.0.1, e.g. to try a configuration or a feed against a real server::

    from fhir_adapter.testing.fhir_server import start_fhir_server

    with start_fhir_server(FAULT_429_EVERY="3") as server:
        httpx.get(f"{server.base_url}/Patient")      # base_url = http://127.0.0.1:PORT/fhir/R4
        server.stats()["writes"]["total"]
        server.reset()

The test suite and the benchmarks start it through here (the suite's ``fhir_server`` and
``clean_fhir_server`` fixtures live in ``tests/conftest.py``). The server's folder is ``server_dir``, else
``tests/fhir_server`` of the checkout this package runs from; it needs its npm packages:
``make fhir-test-server`` (= ``cd tests/fhir_server && npm ci``).
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

SERVER_DIR = Path(__file__).resolve().parents[2] / "tests" / "fhir_server"
SERVER_ENTRY = "server.mjs"
INSTALL_TARGET = "fhir-test-server"
INSTALL_HINT = f"run `make {INSTALL_TARGET}` (equivalent: `cd tests/fhir_server && npm ci`)"
LISTENING_PREFIX = "LISTENING "


class FhirServerError(RuntimeError):
    """The test FHIR server could not be started (message includes its stderr)."""


def check_installed(server_dir: Path = SERVER_DIR) -> None:
    """Raise FhirServerError with the install command if node or the npm packages are missing."""
    if shutil.which("node") is None:
        raise FhirServerError("Node.js (`node`) is not on PATH; the FHIR test server needs Node.js >= 20.19.")
    if not (server_dir / "node_modules" / "@medplum" / "fhir-router").is_dir():
        raise FhirServerError(
            f"The FHIR test server's npm packages are not installed ({server_dir / 'node_modules'} missing): "
            f"{INSTALL_HINT}."
        )


class ServerHandle:
    """A running test server process. Use as a context manager; ``stop()`` is idempotent."""

    def __init__(self, process: subprocess.Popen[str], base_url: str, stderr_lines: collections.deque[str]):
        self.process = process
        self.base_url = base_url  # FHIR base, e.g. http://127.0.0.1:43817/fhir/R4
        self.root_url = base_url.split("/fhir/", 1)[0]  # admin endpoints live at {root_url}/admin/...
        self._stderr_lines = stderr_lines
        self._admin = httpx.Client(base_url=self.root_url, timeout=30)

    # -- admin endpoints -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """GET /admin/stats: request counts (by method, resource type, interaction, status),
        bundle entry counts, writes (created/updated/deleted/unchanged, total), store sizes."""
        response = self._admin.get("/admin/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def reset(self, scope: str = "all") -> None:
        """POST /admin/reset: scope "all" empties the store and counters (and offers no type-level history
        again), "stats" only the counters. Fault counters restart too (fault settings are kept)."""
        self._admin.post("/admin/reset", params={"scope": scope}).raise_for_status()

    def set_faults(self, **faults: float | int | str) -> dict[str, Any]:
        """POST /admin/faults, e.g. set_faults(fault_503_rate=0.2, fault_seed=7, fault_429_every=5)."""
        response = self._admin.post("/admin/faults", json=faults)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def set_history(self, type_level: bool) -> None:
        """POST /admin/history: offer type-level history (``[type]/_history``, ``history-type`` in the
        CapabilityStatement, deletions as DELETE entries without a resource) or not (the default; a reset of
        everything sets it back)."""
        self._admin.post("/admin/history", json={"type_level": type_level}).raise_for_status()

    def clear_faults(self) -> None:
        self.set_faults(fault_503_rate=0, fault_429_every=0, fault_reset_every=0, fault_slow_every=0,
                        fault_slow_only="", fault_slow_phase="before", fault_down_after=0, fault_match="",
                        fault_401_after=0)

    def stderr(self) -> str:
        """The last lines the server wrote to stderr."""
        return "".join(self._stderr_lines)

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL. Returns the exit code."""
        self._admin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        if self.process.stdin:
            self.process.stdin.close()
        return self.process.returncode

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _pump(stream: Any, sink: Any, at_eof: Any = None) -> None:
    for line in stream:
        sink(line)
    if at_eof is not None:
        at_eof()


def start_fhir_server(
    *, startup_timeout: float = 60.0, server_dir: Path = SERVER_DIR, **env: str | int | float
) -> ServerHandle:
    """Start ``node server.mjs`` of the server folder on 127.0.0.1 (a free port unless PORT is given).

    Keyword arguments in UPPER_CASE are passed as environment variables, e.g.
    ``start_fhir_server(FAULT_503_RATE=0.1, FAULT_SEED=3, MAX_PAGE_SIZE=50)``; see
    tests/fhir_server/README.md. Waits for the "LISTENING <base url>" line.
    """
    check_installed(server_dir)
    child_env = {**os.environ, "PORT": "0", "EXIT_ON_STDIN_CLOSE": "1"}
    child_env.update({key: str(value) for key, value in env.items()})
    process = subprocess.Popen(
        ["node", SERVER_ENTRY],
        cwd=server_dir,
        env=child_env,
        stdin=subprocess.PIPE,  # kept open: the server exits when it closes (its parent died)
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    stderr_lines: collections.deque[str] = collections.deque(maxlen=200)
    stdout_lines: queue.Queue[str | None] = queue.Queue()  # None = stdout closed (process exited)
    stderr_thread = threading.Thread(target=_pump, args=(process.stderr, stderr_lines.append), daemon=True)
    stderr_thread.start()
    threading.Thread(
        target=_pump, args=(process.stdout, stdout_lines.put, lambda: stdout_lines.put(None)), daemon=True
    ).start()

    def fail(reason: str) -> FhirServerError:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        stderr_thread.join(timeout=5)  # collect everything the process wrote
        stderr = "".join(stderr_lines).strip() or "(empty)"
        return FhirServerError(f"FHIR test server did not start: {reason}\n--- server stderr ---\n{stderr}")

    try:
        first_line = stdout_lines.get(timeout=startup_timeout)
    except queue.Empty:
        raise fail(f"no LISTENING line within {startup_timeout:g} s (exit code {process.poll()})") from None
    if first_line is None:
        raise fail(f"the process exited (exit code {process.wait(timeout=10)})")
    if not first_line.startswith(LISTENING_PREFIX):
        raise fail(f"unexpected first stdout line {first_line!r}")
    return ServerHandle(process, first_line[len(LISTENING_PREFIX) :].strip(), stderr_lines)
