"""Run one service as several worker processes that share its listening ports.

A Python process computes on one core at a time (the GIL), so a service that must use a machine's cores
runs one worker per core. The supervisor (the process that was started) runs `python -m <module>` once
per worker with FAPIAO_WORKER_INDEX set; every worker is a complete service process (its own pool,
producer and event loop) that binds the same gRPC and HTTP ports with SO_REUSEPORT, so the kernel spreads
incoming connections over them and clients keep one address. What must happen once is already safe with
several processes on one schema: migrations run under an advisory lock, one outbox relay is elected by
another. Each worker writes its metrics to PROMETHEUS_MULTIPROC_DIR and the supervisor serves their sum
on FAPIAO_METRICS_PORT.

Lifecycle: SIGTERM / SIGINT to the supervisor is passed to every worker, which drains and stops. If a
worker exits on its own, the supervisor stops the others and exits non-zero, so the orchestrator (the
local stack, systemd, Kubernetes) restarts the whole service. If the supervisor dies, the kernel sends its
workers SIGTERM (PR_SET_PDEATHSIG), so no worker outlives it on the shared ports.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType

WORKER_INDEX_ENV = "FAPIAO_WORKER_INDEX"
MAX_PROCESSES = 16
_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


def worker_index() -> int | None:
    """This process's index when it is one of several workers of a service, else None."""
    value = os.environ.get(WORKER_INDEX_ENV, "")
    return int(value) if value.isdigit() else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _serve_summed_metrics(port: int, directory: str) -> None:
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    from fapiao_runtime.config import metrics_host

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=metrics_host(), registry=registry)


def _forget_metrics_of(pid: int, directory: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def supervise(module: str, processes: int, *, metrics_port: int, grace_s: float = 20.0) -> int:
    """Run `processes` workers of `python -m module` until a signal or a worker's exit; the exit status."""
    if not 2 <= processes <= MAX_PROCESSES:
        raise ValueError(f"processes must be 2..{MAX_PROCESSES}, got {processes}")
    metrics_dir = tempfile.mkdtemp(prefix=f"fapiao-{module}-metrics-")
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    children: list[subprocess.Popen[bytes]] = []
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(processes):
            env = dict(os.environ)
            env.update(
                {WORKER_INDEX_ENV: str(index), "PROMETHEUS_MULTIPROC_DIR": metrics_dir, "FAPIAO_METRICS_PORT": "0"}
            )
            children.append(subprocess.Popen([sys.executable, "-m", module], env=env, preexec_fn=_die_with_parent))
        if metrics_port:
            _serve_summed_metrics(metrics_port, metrics_dir)
        status, kill_at = 0, None
        reaped: set[int] = set()
        while len(reaped) < len(children):
            for child in children:
                if child.pid in reaped or child.poll() is None:
                    continue
                reaped.add(child.pid)
                _forget_metrics_of(child.pid, metrics_dir)
                code = child.returncode if child.returncode >= 0 else 128 - child.returncode
                status = status or code
                if not stopping:
                    status = status or 1
                    log.error("a worker exited; stopping the others", extra={"pid": child.pid, "status": code})
                    on_signal(signal.SIGTERM, None)
            if stopping and kill_at is None:
                kill_at = time.monotonic() + grace_s
            if kill_at is not None and time.monotonic() > kill_at:
                for child in children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.05)
        return status
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
