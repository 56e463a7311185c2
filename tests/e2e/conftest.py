"""Fixtures for end-to-end tests that run the `fapiao` command and whole local stacks as processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import free_port_offset


@dataclass
class FapiaoCommand:
    """Runs `fapiao ...` against a private stack: its own run directory and shifted ports."""

    env: dict[str, str]
    run_dir: Path

    def __call__(self, *args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fapiao_cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )


@pytest.fixture
def fapiao(tmp_path: Path) -> Iterator[FapiaoCommand]:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.update(
        {
            "FAPIAO_RUN_DIR": str(tmp_path / "run"),
            "FAPIAO_PORT_OFFSET": str(free_port_offset()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    command = FapiaoCommand(env, tmp_path / "run")
    try:
        yield command
    finally:
        command("down", timeout_s=120)
