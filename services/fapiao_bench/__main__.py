"""`make bench`: run every benchmark against a real Kafka broker and PostgreSQL started for the run.

Prints a table and writes build/bench/results.json, a flat JSON object of named figures (units last in
the names). Areas run in order; an area whose module is absent is skipped, one that fails is reported
and the run exits non-zero after writing what was measured.

    python -m fapiao_bench [--only baselines,ledger] [--out build/bench/results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import asyncpg
from fapiao_runtime import event_loop
from fapiao_runtime.kafka import ensure_topics
from fapiao_stack.harness import StackUnderTest, create_database
from fapiao_stack.kafka import KafkaBroker
from fapiao_stack.paths import REPO_ROOT
from fapiao_stack.postgres import LocalPostgres
from fapiao_stack.procs import free_port

from fapiao_bench.broker_warmup import warm_up

AREAS = ("baselines", "intake", "minting", "ledger", "reimbursement", "gateway", "e2e")


async def _fresh_env(kafka_bootstrap: str, admin_url: str, work: Path, area: str) -> StackUnderTest:
    database_url = await create_database(admin_url, f"bench_{area}_")
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    await ensure_topics(kafka_bootstrap, prefix)
    area_dir = work / area
    area_dir.mkdir(parents=True, exist_ok=True)
    return StackUnderTest(kafka_bootstrap, database_url, prefix, area_dir)


async def _settle(admin_url: str, max_wait_s: float = 20.0) -> None:
    """Let the previous area's background work finish before measuring the next one.

    A checkpoint flushes PostgreSQL's dirty pages now rather than during the next area, and the wait
    (bounded) lets Kafka's and PostgreSQL's background threads go quiet: each area is measured on an
    otherwise idle machine, as its figures claim.
    """
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute("CHECKPOINT")
    finally:
        await admin.close()
    deadline = time.monotonic() + max_wait_s
    await asyncio.sleep(2.0)
    while time.monotonic() < deadline and await asyncio.to_thread(_busy_cpu_fraction) > 0.15:
        await asyncio.sleep(1.0)


def _busy_cpu_fraction(interval_s: float = 0.5) -> float:
    """Share of all cores busy over `interval_s` (Linux /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total_a, idle_a = sample()
    time.sleep(interval_s)
    total_b, idle_b = sample()
    total = max(1, total_b - total_a)
    return 1.0 - (idle_b - idle_a) / total


async def run_areas(
    areas: list[str], kafka_bootstrap: str, admin_url: str, work: Path, broker_pid: int | None = None
) -> tuple[dict[str, float], list[str]]:
    figures: dict[str, float] = {}
    failed: list[str] = []
    if broker_pid is not None:
        print("[warm-up] compiling the broker's request paths ...", flush=True)
        warm = await warm_up(broker_pid, kafka_bootstrap)
        figures.update({key: round(value, 3) for key, value in warm.items()})
        print(f"[warm-up] broker JIT quiet after {warm['kafka_warmup_s']:.0f}s", flush=True)
    for area in areas:
        try:
            module = importlib.import_module(f"fapiao_bench.{area}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fapiao_bench.{area}":
                print(f"[{area}] not present, skipped", flush=True)
                continue
            raise
        await _settle(admin_url)
        print(f"[{area}] running ...", flush=True)
        started = time.monotonic()
        try:
            env = await _fresh_env(kafka_bootstrap, admin_url, work, area)
            result = await module.run(env)
            for key, value in result.items():
                figures[key] = round(float(value), 3)
            print(f"[{area}] done in {time.monotonic() - started:.0f}s", flush=True)
        except Exception:
            traceback.print_exc()
            failed.append(area)
    return figures, failed


def main() -> int:
    parser = argparse.ArgumentParser(prog="fapiao_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(AREAS), help="comma-separated areas to run")
    parser.add_argument("--out", default=str(REPO_ROOT / "build" / "bench" / "results.json"))
    args = parser.parse_args()
    areas = [a for a in args.only.split(",") if a]
    unknown = set(areas) - set(AREAS)
    if unknown:
        parser.error(f"unknown areas: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="fapiao-bench-") as tmp:
        work = Path(tmp)
        broker = KafkaBroker(work / "kafka", free_port(), free_port(), work / "kafka.log", heap="1g")
        postgres = LocalPostgres(work / "postgres", free_port(), work / "postgres.log")
        broker.start()
        postgres.start()
        try:
            broker_pid = broker.proc.pid if broker.proc is not None else None
            figures, failed = event_loop.run(run_areas(areas, broker.bootstrap, postgres.url, work, broker_pid))
        finally:
            broker.stop()
            postgres.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    width = max((len(k) for k in figures), default=10)
    print()
    print(f"{'figure':<{width}}  value")
    for key in sorted(figures):
        print(f"{key:<{width}}  {figures[key]:,.3f}")
    print(f"\nwritten to {out}")
    if failed:
        print(f"FAILED areas: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
