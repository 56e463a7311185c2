"""Real dependency outages for self-healing tests: a PostgreSQL server of the test's own, killed with -9
and started again; service logs read as JSON lines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fapiao_stack.harness import ServiceProcess, StackUnderTest
from fapiao_stack.postgres import LocalPostgres
from fapiao_stack.procs import free_port, pid_alive
from fapiao_stack.services import grpc_health


@dataclass
class OwnPostgres:
    """A PostgreSQL server that only this test uses (so it can be crashed), and a database on it."""

    server: LocalPostgres
    database_url: str

    def kill(self) -> None:
        """kill -9 the postmaster and its backends (they share its process group: pg_ctl starts it in
        its own session); returns once none of them is left."""
        pid = int((self.server.data_dir / "postmaster.pid").read_text().split()[0])
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (pid_alive(pid) or _group_members(pid)):
            time.sleep(0.05)
        assert not pid_alive(pid), "the postmaster survived SIGKILL"

    def start(self) -> None:
        """Start the server again (crash recovery replays its WAL)."""
        self.server.start()


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@asynccontextmanager
async def own_postgres(tmp_path: Path) -> AsyncIterator[OwnPostgres]:
    server = LocalPostgres(tmp_path / "own-pg", free_port(), tmp_path / "own-pg.log", max_connections=100)
    await asyncio.to_thread(server.start)
    try:
        yield OwnPostgres(server, await asyncio.to_thread(server.create_database, "fapiao"))
    finally:
        await asyncio.to_thread(server.stop)


def stack_on(stack: StackUnderTest, postgres: OwnPostgres) -> StackUnderTest:
    """The test's broker and topics with the database of `postgres`."""
    return StackUnderTest(stack.kafka_bootstrap, postgres.database_url, stack.topic_prefix, stack.tmp_path)


def log_lines(process: ServiceProcess | Path) -> list[dict[str, Any]]:
    """The JSON lines a service wrote (other output, e.g. a final SystemExit message, is skipped)."""
    path = process if isinstance(process, Path) else process.log_file
    lines = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}; last value {last!r}")


async def health(process: ServiceProcess) -> str:
    return await grpc_health(process.port)


async def logged(process: ServiceProcess, message: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(process) if line.get("msg") == message]
