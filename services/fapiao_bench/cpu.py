"""CPU accounting for benchmarks (Linux /proc): figures that read apart from contention on a shared machine."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far; 0.0 once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(parent: int) -> list[int]:
    """Direct children of `parent` (PostgreSQL's backends are children of the postmaster)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds spent by named groups of processes between `start()` and `stop()`.

    A process that exits before `stop()` is not counted (its CPU time is gone with it), so list
    long-lived processes: services, the broker, the postmaster and its pooled backends.
    """

    def __init__(self, groups: Mapping[str, Iterable[int] | None]) -> None:
        self._groups = {name: list(pids or []) for name, pids in groups.items()}
        self._before: dict[int, float] = {}

    def start(self) -> None:
        self._before = {pid: cpu_seconds(pid) for pids in self._groups.values() for pid in pids}

    def stop(self) -> dict[str, float]:
        return {
            name: sum(max(0.0, cpu_seconds(pid) - self._before.get(pid, 0.0)) for pid in pids)
            for name, pids in self._groups.items()
        }
