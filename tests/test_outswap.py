"""Readers of OUT see one run's outputs (fhir_adapter/job/outswap.py): a run's outputs move in only when no
report or review request is reading OUT, and a reader waits while a run moves its outputs in."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhir_adapter.job.outswap import reading
from fhir_adapter.job.staging import Staging
from fhir_adapter.report.data import load
from fhir_adapter.review.app import ReviewConfig, create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

#: another process holding one side of OUT's swap lock until its stdin closes
HOLDER = (
    "import sys\n"
    "from pathlib import Path\n"
    "from fhir_adapter.job.outswap import reading, swapping\n"
    "side = reading if sys.argv[2] == 'reading' else swapping\n"
    "with side(Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    sys.stdin.read()\n"
)


@pytest.fixture
def holder() -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def hold(out: Path, side: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), side], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        if proc.poll() is None:
            proc.communicate("", timeout=30)


def outputs(out: Path, run: str, subjects: tuple[str, ...] = ("101-001", "101-002")) -> None:
    """What a run leaves in OUT, every file naming ``run``."""
    (out / "results").mkdir(parents=True)
    (out / "results" / "study.json").write_text(
        f'{{"study": "LCAR-AIO", "run": "{run}", "subjects": ['
        + ", ".join(f'{{"subject_id": "{s}", "arm": "DL1"}}' for s in subjects) + "]}")
    (out / "crf").mkdir()
    for s in subjects:
        (out / "crf" / f"{s}.json").write_text(f'{{"subject_id": "{s}", "run": "{run}", "findings": []}}')
    (out / "run-report.json").write_text(f'{{"run": "{run}"}}')


def in_thread(fn: object) -> tuple[threading.Thread, list[object]]:
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(fn()), daemon=True)  # type: ignore[operator]
    t.start()
    return t, done


def test_a_run_moves_its_outputs_in_only_when_the_reader_has_finished(tmp_path: Path, holder: object) -> None:
    out = tmp_path / "out"
    outputs(out, "old")
    staging = Staging(out)
    outputs(staging.open(), "new")
    reader = holder(out, "reading")  # type: ignore[operator]
    t, done = in_thread(staging.commit)
    time.sleep(0.5)
    assert not done
    assert '"old"' in (out / "results" / "study.json").read_text()   # nothing moved while the reader reads
    reader.communicate("", timeout=30)
    t.join(timeout=30)
    assert done and '"new"' in (out / "results" / "study.json").read_text()
    assert '"new"' in (out / "crf" / "101-001.json").read_text()


def test_a_report_waits_while_a_run_moves_its_outputs_in(tmp_path: Path, holder: object) -> None:
    out = tmp_path / "out"
    outputs(out, "old")
    mover = holder(out, "swapping")  # type: ignore[operator]
    t, done = in_thread(lambda: load(out))
    time.sleep(0.5)
    assert not done
    mover.communicate("", timeout=30)
    t.join(timeout=30)
    data = done[0]
    assert data.study["run"] == "old" and {c["run"] for c in data.crfs.values()} == {"old"}  # type: ignore[attr-defined]


def test_the_review_app_waits_while_a_run_moves_its_outputs_in(tmp_path: Path, holder: object) -> None:
    out = tmp_path / "out"
    outputs(out, "old")
    (out / "review" / "candidates").mkdir(parents=True)
    (out / "review" / "candidates" / "101-001.json").write_text(
        '{"subject_id": "101-001", "arm": "DL1", "day1": "2024-03-01", "items": []}')
    cfg = ReviewConfig(results=out, reviewer="Reviewer A", token="t")
    client = TestClient(create_app(cfg), base_url="http://127.0.0.1")
    mover = holder(out, "swapping")  # type: ignore[operator]
    t, done = in_thread(lambda: client.get("/"))
    time.sleep(0.5)
    assert not done
    mover.communicate("", timeout=30)
    t.join(timeout=30)
    assert done and done[0].status_code == 200 and "101-001" in done[0].text  # type: ignore[attr-defined]


def test_reading_creates_nothing_in_out_and_a_missing_out_is_no_lock(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outputs(out, "old")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with reading(out), reading(out):   # readers share the lock
        pass
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    with reading(tmp_path / "missing"):
        pass
    assert not (tmp_path / "missing").exists()
