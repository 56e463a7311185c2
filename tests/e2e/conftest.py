"""Fixtures for end-to-end tests that run the `fapiao` command and whole local stacks as processes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fapiao_stack.procs import port_open


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


def _free_offset() -> int:
    """A port offset at which none of the stack's ports is taken right now."""
    bases = [19092, 19093, 15432, 8080, 8081, *range(17051, 17055), *range(17061, 17065), *range(9101, 9115)]
    for _ in range(50):
        offset = random.randrange(1000, 9000, 100)
        if not any(port_open(base + offset) for base in bases):
            return offset
    raise RuntimeError("no free port offset for a private stack")


@pytest.fixture
def fapiao(tmp_path: Path) -> Iterator[FapiaoCommand]:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.update(
        {
            "FAPIAO_RUN_DIR": str(tmp_path / "run"),
            "FAPIAO_PORT_OFFSET": str(_free_offset()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    command = FapiaoCommand(env, tmp_path / "run")
    try:
        yield command
    finally:
        command("down", timeout_s=120)
