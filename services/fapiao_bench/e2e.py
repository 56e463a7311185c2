"""End-to-end benchmark: webhook -> payment -> claim offer -> claim -> ISSUE committed by quorum.

Runs a whole private local stack (its own run directory and shifted ports) in a child process, so the
figures include every hop: the gateway, payment_intake, Kafka, invoice_minting, 4 validators.

- e2e_invoices_per_s: invoices committed on the ledger per second while a closed-loop load generator
  keeps CONCURRENCY invoices in flight for SUSTAIN_S seconds (at least 60).
- e2e_p99_ms: p99 from posting the payment to the webhook until the ISSUE result is final, at half that
  rate, open loop.
- e2e_cpu_ms_per_invoice_<component> (and _total): CPU time of every process of the stack (services,
  validators, Kafka, PostgreSQL, the load generator) during the closed loop, per committed invoice.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys

from fapiao_stack.harness import StackUnderTest

SUSTAIN_S = int(os.environ.get("FAPIAO_BENCH_E2E_SECONDS", "60"))


async def run(env: StackUnderTest) -> dict[str, float]:
    child_env = dict(os.environ)
    child_env.pop("DATABASE_URL", None)
    child_env.update(
        {
            "FAPIAO_RUN_DIR": str(env.tmp_path / "run"),
            "FAPIAO_PORT_OFFSET": str(random.randrange(1000, 9000, 100)),
            "FAPIAO_BENCH_E2E_SECONDS": str(SUSTAIN_S),
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The driver runs its own event loop and stack; wait for it from a worker thread.
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "fapiao_bench.e2e_driver"],
        env=child_env,
        stdout=subprocess.PIPE,
        text=True,
        timeout=SUSTAIN_S * 4 + 600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"e2e driver failed ({done.returncode}): {done.stdout[-2000:]}")
    figures: dict[str, float] = json.loads(lines[-1])
    return figures
