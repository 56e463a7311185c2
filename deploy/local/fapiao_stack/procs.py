"""Small helpers to start, find and stop background processes by pid file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and that this process has not handed out before.

    The kernel may give the port it just released back to the next bind, so two calls in a row (a
    broker's client and controller ports) could otherwise return one port, and the second server would
    fail to start.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on `port` now (as servers do, with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_bindable(ports: Sequence[int], timeout_s: float = 65.0, interval_s: float = 0.5) -> None:
    """Wait until every port can be listened on; RuntimeError naming the ports still held after `timeout_s`.

    A port of the stack may still be held by a connection in TIME_WAIT (up to 60 s), for instance one a
    previous stack's service made to it: then the port frees itself.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        held = [port for port in ports if not port_bindable(port)]
        if not held:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"ports still in use after {timeout_s:.0f}s: {', '.join(map(str, held))}")
        time.sleep(interval_s)


def listening_sockets(port: int) -> int:
    """How many sockets listen on TCP `port` (IPv4 and IPv6): one per worker of a service whose
    workers share the port with SO_REUSEPORT (fapiao_runtime.workers)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    count += 1
    return count


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None, what: str = "") -> None:
    """Wait until `port` accepts connections; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'process'} exited with code {proc.returncode} before listening on {port}")
        time.sleep(0.1)
    raise TimeoutError(f"{what or 'process'} did not listen on port {port} within {timeout_s}s")


def spawn(
    argv: Sequence[str], *, log_file: Path, env: Mapping[str, str] | None = None, pid_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group, output appended to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(str(proc.pid))
    return proc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_pid(pid: int, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to the process group of `pid`, wait, then SIGKILL whatever remains."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        for _ in range(50):
            if not pid_alive(pid):
                break
            time.sleep(0.1)


def command_line(pid: int) -> list[str]:
    """The arguments process `pid` was started with; empty when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_file_process(pid_file: Path, marker: str) -> int | None:
    """The pid in `pid_file` when that process is alive and `marker` is one of its arguments (its module
    or main class): after a crash the pid may belong to another process by now, which is not ours."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    for _ in range(50):
        if not pid_alive(pid):
            return None
        arguments = command_line(pid)
        if arguments:
            return pid if marker in arguments else None
        time.sleep(0.01)  # none yet: a process just started (its exec not done) or a zombie
    return None


def stop_pid_file(pid_file: Path, timeout_s: float = 20.0, marker: str | None = None) -> bool:
    """Stop the process named in `pid_file` (if alive, and with `marker` among its arguments when given)
    and remove the file; True if one was running. A pid reused by another process is left alone."""
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        pid_file.unlink()
        return False
    running = pid_alive(pid) if marker is None else pid_file_process(pid_file, marker) is not None
    if running:
        stop_pid(pid, timeout_s)
    pid_file.unlink(missing_ok=True)
    return running
