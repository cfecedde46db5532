"""One run at a time per output folder (fhir_adapter/job/outlock.py): a second run on the same OUT exits 1
naming the folder, the other run and the fix; a lock file left by a dead process does not block."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import fhir_adapter
from fhir_adapter.cli.commands import main
from fhir_adapter.job.outlock import LOCK_NAME, OutInUse, hold_out

HOLDER = (
    "import sys\n"
    "from pathlib import Path\n"
    "from fhir_adapter.job.outlock import hold_out\n"
    "with hold_out(Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    sys.stdin.read()\n"
)


@pytest.fixture
def other_run(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """Another process holding the lock of ``tmp_path/out`` until the test ends."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield out, proc
    if proc.poll() is None:
        proc.communicate("", timeout=30)


def test_a_second_run_on_the_same_out_exits_1_naming_the_other_run(
        other_run: tuple[Path, subprocess.Popen[str]], tmp_path: Path) -> None:
    out, proc = other_run
    res = CliRunner().invoke(main, ["run", "--source", str(tmp_path / "feed"), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert f"output folder {out.resolve()} is in use" in res.output
    assert f"pid {proc.pid}" in res.output and "started 20" in res.output
    assert "another --out folder" in res.output and "wait until that run has finished" in res.output
    with pytest.raises(OutInUse, match=f"pid {proc.pid}"):   # the Python API too
        fhir_adapter.run(tmp_path / "feed", out)
    proc.communicate("", timeout=30)
    assert not (out / LOCK_NAME).exists()   # the holder removed its lock file when it ended
    with hold_out(out):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] != proc.pid


def test_a_lock_file_of_a_dead_process_does_not_block(tmp_path: Path) -> None:
    from fhir_adapter.synth import write_feed

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": "here", "started": "2026-01-01T00:00:00Z",
                                             "command": "fhir-adapter run"}))
    write_feed(tmp_path / "feed", subjects=2, seed=3)
    res = CliRunner().invoke(main, ["-q", "run", "--source", str(tmp_path / "feed"), "--out", str(out),
                                    "--workers", "1"])
    assert res.exit_code in (0, 2), res.output
    assert (out / "results" / "study.json").exists() and not (out / LOCK_NAME).exists()


def test_the_lock_is_reentrant_in_one_process_and_leaves_no_empty_out(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with hold_out(out):
        info = json.loads((out / LOCK_NAME).read_text())
        with hold_out(out):   # the pipeline inside the command line's hold
            assert (out / LOCK_NAME).exists()
        assert (out / LOCK_NAME).exists()
    assert info["command"] == "fhir-adapter run" and isinstance(info["pid"], int)
    assert not out.exists()   # created for the run, nothing written: removed again
