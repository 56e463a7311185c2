"""`make faults` / `python -m fapiao_faults`: start a stack, run the workload under the nemesis, heal,
check, and write build/faults/{history.jsonl,summary.json,timeline.png}. Exit 1 when the checker finds
anything, 2 on a usage error."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import importlib.util
import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from fapiao_stack.paths import REPO_ROOT, RUN_DIR

from fapiao_faults import checker, nemesis, observe, report
from fapiao_faults.history import PAY_GRPC, PAY_WEBHOOK, HistoryWriter
from fapiao_faults.nemesis import Nemesis, say
from fapiao_faults.system import LocalSystem, System
from fapiao_faults.workload import Clients, Organisation, Workload, WorkloadSettings, register_participants

OUT_DIR = REPO_ROOT / "build" / "faults"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fapiao_faults",
        description="Run a workload of real clients against a Fapiao stack while a seeded nemesis kills, "
        "pauses and partitions its processes; heal; check the recorded history.",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule (default: random)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of workload (default 600)")
    parser.add_argument("--faults", type=int, default=24, help="faults to inject (at least one of every kind)")
    parser.add_argument("--rate", type=float, default=1.0, help="stories started per second (default 1)")
    parser.add_argument("--concurrency", type=int, default=24, help="stories in flight at most")
    parser.add_argument(
        "--hosts",
        choices=("auto", "yes", "no"),
        default="auto",
        help="the multi-host cluster: when available and root (auto), required (yes) or not (no)",
    )
    parser.add_argument("--settle", type=float, default=180.0, help="seconds the system gets to settle after the heal")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default build/faults)")
    parser.add_argument("--keep-running", action="store_true", help="leave the stack running afterwards")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.faults < 0 or args.rate <= 0 or args.concurrency < 1:
        parser.error("--duration, --rate and --concurrency must be positive, --faults not negative")
    return args


def multi_host_unavailable() -> str:
    """Why the multi-host cluster cannot run here ("" when it can)."""
    if any(importlib.util.find_spec(f"fapiao_stack.{name}") is None for name in ("cluster", "hosts")):
        return "the multi-host cluster (fapiao_stack.cluster, fapiao_stack.hosts) is not part of this checkout"
    if os.geteuid() != 0:
        return "the multi-host cluster needs root (network namespaces)"
    available, why = importlib.import_module("fapiao_stack.hosts").netns_available()
    return "" if available else f"the multi-host cluster cannot run here: {why}"


def start_system(args: argparse.Namespace) -> tuple[System, str, str, bool]:
    """The system under test: (system, its name, why it is the local one, whether we started it)."""
    why = multi_host_unavailable() if args.hosts != "no" else "--hosts no"
    if args.hosts == "yes" and why:
        raise SystemExit(f"fapiao_faults: {why}")
    if not why:
        from fapiao_faults.cluster_system import start_cluster_system

        if (RUN_DIR / "stack.json").exists() and '"mode": "hosts"' not in (RUN_DIR / "stack.json").read_text():
            from fapiao_stack import stack

            say("stopped the single-host stack of an earlier run: " + ", ".join(stack.down()))
        say(f"starting the multi-host cluster in {RUN_DIR} ...")
        try:
            cluster_system, started = start_cluster_system()
        except BaseException:
            from fapiao_faults.cluster_system import stop_cluster_system

            say("the cluster did not come up; stopped: " + ", ".join(stop_cluster_system()))
            raise
        return cluster_system, "multi-host", "", started
    from fapiao_stack import stack

    started = not (RUN_DIR / "stack.json").exists()
    if started and RUN_DIR.is_relative_to(OUT_DIR):
        shutil.rmtree(RUN_DIR, ignore_errors=True)  # the suite's own state: every run starts afresh
    say(f"starting the local stack in {RUN_DIR} ..." if started else f"using the local stack in {RUN_DIR}")
    try:
        stack.up(timeout_s=240)  # starts whatever is not running
    except BaseException:
        if started:
            say("the stack did not come up; stopped: " + ", ".join(stack.down()))
        raise
    if args.hosts != "no":
        say(f"network faults skipped: {why}; running on the single-host stack")
    return LocalSystem(RUN_DIR), "single-host", why, started


def stop_system(system: System, started: bool) -> None:
    if not started:
        return
    if isinstance(system, LocalSystem):
        from fapiao_stack import stack

        say("stopped: " + ", ".join(stack.down()))
    else:
        from fapiao_faults.cluster_system import stop_cluster_system

        say("stopped: " + ", ".join(stop_cluster_system()))


async def run_faults(
    args: argparse.Namespace, system: System, seed: int, merchant_id: str, orgs: list[Organisation]
) -> int:
    out: Path = args.out
    endpoints = system.endpoints()
    history = HistoryWriter(out / "history.jsonl")
    settings = WorkloadSettings(rate=args.rate, duration_s=args.duration, concurrency=args.concurrency, seed=seed)
    processes = system.processes()
    schedule = nemesis.plan(
        seed, args.duration, args.faults, processes, network=system.supports_network, hosts=system.hosts()
    )
    if not system.supports_network:
        say("network partitions need the multi-host cluster: the schedule holds process faults only")
    say(f"seed {seed}: {len(schedule)} faults over {args.duration:.0f} s; workload {args.rate}/s")
    for fault in schedule:
        say(f"  at {fault.at_s:7.1f} s for {fault.duration_s:5.1f} s  {fault.kind:<22} {fault.target}")
    clients = Clients(endpoints, merchant_id, orgs)
    workload = Workload(clients, history, settings)
    chaos = Nemesis(system, schedule, endpoints.kafka_bootstrap)
    started = time.time()
    try:
        await asyncio.gather(workload.run(), chaos.run(started))
    finally:
        await chaos.heal_all()
        history.close()
        await clients.close()
    say(f"workload done: {len(history.ops)} operations; everything healed; letting the system settle ...")
    seen = checker.Observations()
    acked = [op for op in history.ops if op.kind in (PAY_GRPC, PAY_WEBHOOK) and op.outcome == "ok"]
    payment_ids = {str(op.result["payment_id"]) for op in acked if op.result.get("payment_id")}
    steps = (
        ("health", observe.health_facts(system, seen, timeout_s=args.settle)),
        ("offers", observe.wait_for_offers(endpoints.database_url, merchant_id, payment_ids, args.settle / 2)),
        ("database", observe.database_facts(endpoints.database_url, merchant_id, seen)),
        ("ledger", observe.ledger_facts(endpoints.ledgers, seen, catch_up_s=args.settle / 2)),
        ("health", observe.health_facts(system, seen, timeout_s=10)),
    )
    for name, step in steps:
        try:
            await step
        except Exception as exc:  # what cannot be read fails the run, with its reason
            seen.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            say(f"could not read the {name}: {type(exc).__name__}: {exc}")
    verdict = checker.check(history.ops, seen)
    ended = time.time()
    data = report.summary(
        seed=seed,
        system=system.name,
        system_note=system.note,
        settings=dataclasses.asdict(settings),
        started=started,
        ended=ended,
        faults=schedule,
        history=history.ops,
        verdict=verdict,
    )
    report.write_summary(out / "summary.json", data)
    report.timeline(out / "timeline.png", history.ops, schedule, started)
    print(report.table(data), flush=True)
    say(f"written: {out / 'history.jsonl'}, {out / 'summary.json'}, {out / 'timeline.png'}")
    return 0 if verdict.passed else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    system, name, why, started = start_system(args)
    system.name, system.note = name, why
    try:
        merchant_id, orgs = register_participants(system.endpoints(), secrets.token_hex(3), 3)
        return asyncio.run(run_faults(args, system, seed, merchant_id, orgs))
    finally:
        if not args.keep_running:
            stop_system(system, started)
