"""The local PostgreSQL server starts again after kill -9: its leftover lock files are no running server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from fapiao_stack.postgres import LocalPostgres
from fapiao_stack.procs import free_port, pid_alive, port_open, spawn, stop_pid

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalPostgres]:
    pg = LocalPostgres(tmp_path / "data", free_port(), tmp_path / "postgres.log")
    try:
        yield pg
    finally:
        pg.stop()


def _kill_postmaster(pg: LocalPostgres) -> int:
    """SIGKILL the postmaster and wait until the kernel has taken it down (the signal is asynchronous)."""
    pid = pg.server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pg.server_pid() == pid:
        assert time.monotonic() < deadline, f"postmaster {pid} outlived SIGKILL by 10 s"
        time.sleep(0.02)
    return pid


async def _count(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM kept"))
    finally:
        await connection.close()


async def test_a_server_killed_with_minus_9_starts_again_with_its_data(server: LocalPostgres, tmp_path: Path) -> None:
    server.start()
    connection = await asyncpg.connect(server.url)
    try:
        await connection.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (1), (2)")
    finally:
        await connection.close()
    first = _kill_postmaster(server)
    assert server.pid_file.exists(), "a killed postmaster leaves its postmaster.pid behind"
    assert not server.running()

    server.start()
    assert server.running() and server.server_pid() not in (None, first)
    assert await _count(server.url) == 2

    # Killed again, and its pid now belongs to another, live process: not a server either.
    _kill_postmaster(server)
    other = spawn(["sleep", "120"], log_file=tmp_path / "sleep.log")
    try:
        server.pid_file.write_text(f"{other.pid}\n{server.data_dir}\n")
        assert server.server_pid() is None
        server.start()
        assert server.running() and server.server_pid() != other.pid
        assert await _count(server.url) == 2

        assert server.stop() is True
        assert not port_open(server.port)
        # A stale file naming a live process: stopping acts on no one, and only removes the file.
        server.pid_file.write_text(f"{other.pid}\n{server.data_dir}\n")
        assert server.stop() is False
        assert pid_alive(other.pid) and not server.pid_file.exists()
    finally:
        stop_pid(other.pid, timeout_s=1, sig=signal.SIGKILL)
        other.wait()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and ip")
async def test_a_launcher_runs_the_server_inside_a_network_namespace(tmp_path: Path) -> None:
    namespace = f"fapiao-t{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    pg = LocalPostgres(
        tmp_path / "data", free_port(), tmp_path / "postgres.log", launcher=["ip", "netns", "exec", namespace]
    )
    try:
        subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"], check=True)
        pg.start()
        assert pg.running()
        assert not port_open(pg.port, pg.host), "the namespace's loopback is not ours"
        pid = pg.server_pid()
        assert pid is not None
        assert Path(f"/proc/{pid}/ns/net").readlink() != Path("/proc/self/ns/net").readlink()
        assert Path(f"/proc/{pid}").stat().st_uid != 0, "the server runs as its own user, not root"
        _kill_postmaster(pg)
        pg.start()
        assert pg.running() and pg.server_pid() != pid
    finally:
        pg.stop()
        subprocess.run(["ip", "netns", "del", namespace], check=False)
