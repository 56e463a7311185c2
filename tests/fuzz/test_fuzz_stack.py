"""The short fuzz run of `make test`: 5,000 mutated and random inputs against a private local stack.

It fails, like `make fuzz`, on any UNKNOWN, INTERNAL, HTTP 5xx, hang past 10 s, unescaped reflection,
dead or unhealthy process, traceback in a service log or method left without inputs; the output
names each finding with its input number (`python -m tests.fuzz --seed 1 --replay N` resends it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SHORT_RUN_INPUTS = 5000


def test_short_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    options = ["--inputs", str(SHORT_RUN_INPUTS), "--seed", "1", "--run-dir", str(tmp_path / "run")]
    run = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", *options, "--out", str(summary_file)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    table_at = run.stdout.find("| surface")
    report = run.stdout[table_at if table_at >= 0 else -20000 :][:20000] + run.stderr[-3000:]
    assert summary_file.exists(), f"the fuzzer did not finish: {run.stdout[-3000:]}{run.stderr[-5000:]}"
    summary = json.loads(summary_file.read_text())
    assert summary["inputs"] == SHORT_RUN_INPUTS, report
    assert len(summary["by_surface"]) >= 10, "every surface got inputs"
    assert not summary["uncovered_methods"], report
    assert summary["failures"] == {}, report
    assert not summary["tracebacks"], report
    assert all(p["alive"] and p["health"] == "SERVING" for p in summary["processes"].values()), report
    assert run.returncode == 0 and summary["passed"], report
