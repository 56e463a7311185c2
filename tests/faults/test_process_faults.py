"""The nemesis's process faults on real processes: a kill reaches a whole process tree, a pause stops
it until it is continued."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from fapiao_faults.system import descendants, signal_tree
from fapiao_stack.procs import pid_alive

pytestmark = pytest.mark.integration


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait(predicate: object, timeout_s: float = 10.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_kill_reaches_every_process_of_the_tree() -> None:
    parent = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    try:
        assert _wait(lambda: len(descendants(parent.pid)) == 3)
        tree = descendants(parent.pid)
        assert signal_tree(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait(lambda: not any(pid_alive(pid) and _state(pid) != "Z" for pid in tree[1:]))
        assert not signal_tree(parent.pid, signal.SIGKILL), "a process that is gone is not signalled"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_paused_tree_stops_until_continued() -> None:
    parent = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        assert _wait(lambda: len(descendants(parent.pid)) == 2)
        tree = descendants(parent.pid)
        assert signal_tree(parent.pid, signal.SIGSTOP)
        assert _wait(lambda: all(_state(pid) == "T" for pid in tree))
        assert signal_tree(parent.pid, signal.SIGCONT)
        assert _wait(lambda: all(_state(pid) != "T" for pid in tree))
    finally:
        signal_tree(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
