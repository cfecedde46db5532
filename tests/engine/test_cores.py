"""The default number of workers: the CPUs of the process's affinity, fewer under a control group's CPU quota
(a container's ``--cpus``, a pod's CPU limit), read from a fake ``/proc`` and ``/sys`` (engine/cores.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fhir_adapter.engine.cores import cgroup_cpu_limit, default_workers


def _root(tmp_path: Path, cgroup: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text(cgroup)
    for name, text in files.items():
        path = tmp_path / "sys" / "fs" / "cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.fixture
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))


@pytest.mark.usefixtures("eight_cores")
@pytest.mark.parametrize(("cgroup", "files", "limit", "workers"), [
    # cgroup v2, the limit on the process's own group (docker run --cpus 2)
    ("0::/\n", {"cpu.max": "200000 100000\n"}, 2.0, 2),
    # cgroup v2 without a limit
    ("0::/\n", {"cpu.max": "max 100000\n"}, None, 8),
    # cgroup v2, the limit on a group above the process's: it applies too; 1.5 CPUs -> 2 workers
    ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/cpu.max": "150000 100000\n", "kubepods/pod1/c1/cpu.max": "max 100000\n"},
     1.5, 2),
    # cgroup v1 inside a container without a cgroup namespace: the host's path, the container's group at the root
    ("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
     {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5, 1),
    # cgroup v1 without a quota
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, 8),
    # a quota above the cores the affinity gives: the cores
    ("0::/\n", {"cpu.max": "1600000 100000\n"}, 16.0, 8),
    # nothing readable
    ("0::/\n", {"cpu.max": "garbage\n"}, None, 8),
])
def test_workers_follow_the_cgroup_cpu_quota(tmp_path: Path, cgroup: str, files: dict[str, str],
                                             limit: float | None, workers: int) -> None:
    root = _root(tmp_path, cgroup, files)
    assert cgroup_cpu_limit(root) == limit
    assert default_workers(root) == workers


@pytest.mark.usefixtures("eight_cores")
def test_without_a_proc_file_system_the_affinity_decides(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None and default_workers(tmp_path) == 8


def test_this_machine_gets_at_least_one_worker_and_no_more_than_its_cores() -> None:
    assert 1 <= default_workers() <= len(os.sched_getaffinity(0))
