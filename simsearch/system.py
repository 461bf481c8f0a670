"""What this machine offers the process: usable CPUs, CPU features and installed package versions (base layer; the
one place that asks).

Every module that sizes a thread pool, an inference engine or a data loader calls :func:`cpu_count`, so that
the affinity mask and the container's CPU quota are respected everywhere (``os.cpu_count()`` counts the host's
cores, even inside a container limited to two).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from functools import cache, lru_cache
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_count() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers); at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period) + 0.5)))
    return max(1, n)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none). Read once per process."""
    with contextlib.suppress(OSError):
        for line in CPUINFO.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX-BF16 on x86)."""
    return bool(cpu_flags() & BF16_FLAGS)


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def lower_thread_priority(nice: int) -> bool:
    """Make the calling thread (and the threads it starts from now on) ``nice`` steps nicer than it is, so that
    the process's other threads win the CPU when it is contended; True if done. Linux only (elsewhere the call
    would change the whole process's priority: nothing is done), and never higher than 19."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(nice)))
    except OSError:
        return False
    return True


@cache
def package_version(name: str) -> str | None:
    """The installed version of the distribution ``name`` (None: not installed), as ``importlib.metadata.version``
    gives it, read from the ``<name>-<version>.dist-info`` folder name where there is one: importing
    ``importlib.metadata`` (email parser, zipfile, csv...) and parsing the metadata costs a query start-up more
    than the whole look-up."""
    wanted = _normalised(name)
    for entry in sys.path:
        with contextlib.suppress(OSError), os.scandir(entry or ".") as found:
            for d in found:
                base, dot, ext = d.name.rpartition(".")
                dist, dash, ver = base.partition("-")
                if dot and ext == "dist-info" and dash and ver and _normalised(dist) == wanted:
                    return ver
    from importlib.metadata import PackageNotFoundError, version  # an egg-info or zipped install

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _normalised(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")
