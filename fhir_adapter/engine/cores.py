"""How many CPUs a run may use, for the default of ``run --workers``: the CPUs of this process's affinity mask,
fewer when its control group has a CPU quota.

A container started with ``docker run --cpus 2``, or a Kubernetes pod with ``limits: {cpu: "2"}``, sees every
core of its host (``os.sched_getaffinity`` lists them all) but may use two: the kernel enforces the limit as
a CFS quota of the process's control group, not as affinity. Starting one worker per host core there would
start dozens of processes (about 100 MB each) that the quota then throttles. The quota is read as the kernel
publishes it: cgroup v2 ``cpu.max`` (``"200000 100000"``: 2 CPUs; ``"max 100000"``: none), cgroup v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: none), in the process's own group and each group above it
(a limit anywhere above applies too); a fractional limit is rounded up (1.5 CPUs: 2 workers, as the JVM and
.NET count such a limit). Only this module's own reads of ``/proc`` and ``/sys``; importing it imports nothing
of the engine.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

#: where cgroup v1 may mount the cpu controller (alone, or with cpuacct)
_V1_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def default_workers(root: Path = Path("/")) -> int:
    """The number of CPUs this process may use (at least 1); ``root``: where ``/proc`` and ``/sys`` are (tests)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The CPUs the CPU quota of this process's control groups allows (the lowest along the hierarchy), or
    None when there is none (or nothing can be read)."""
    try:
        lines = (root / "proc" / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2 (unified)
            for folder in _groups(root / "sys" / "fs" / "cgroup", path):
                limits += _v2_limit(folder / "cpu.max")
        elif "cpu" in controllers.split(","):
            for mount in _V1_MOUNTS:
                for folder in _groups(root / "sys" / "fs" / "cgroup" / mount, path):
                    limits += _v1_limit(folder)
    return min(limits) if limits else None


def _groups(mount: Path, path: str) -> list[Path]:
    """The folders of the group ``path`` and of each group above it under ``mount``, the mount itself last (in a
    container without a cgroup namespace ``path`` names the host's group, and the container's own group is
    mounted at the mount's root)."""
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", "", ".", "..")]
    return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_limit(cpu_max: Path) -> list[float]:
    try:
        quota, _, period = cpu_max.read_text().strip().partition(" ")
        if quota == "max":
            return []
        return [int(quota) / int(period or "100000")]
    except (OSError, ValueError, ZeroDivisionError):
        return []


def _v1_limit(folder: Path) -> list[float]:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []
