"""fapiao up | down | restart | status: the local stack."""

from __future__ import annotations

import argparse
import asyncio
import json

from fapiao_cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, command_epilog


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = subparsers.add_parser("up", help="start Kafka, PostgreSQL and every service; wait for SERVING")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for SERVING (default 180)")
    up.set_defaults(handler=_up)
    down = subparsers.add_parser("down", help="stop everything `fapiao up` started")
    down.set_defaults(handler=_down)
    restart = subparsers.add_parser(
        "restart",
        help="stop and start one process of the running stack (a service, kafka or postgres); wait until it serves",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=command_epilog("fapiao restart ledger-2", "fapiao restart postgres", "fapiao restart kafka"),
    )
    restart.add_argument("process", metavar="PROCESS", help="e.g. ledger-2, gateway, kafka, postgres")
    restart.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for SERVING (default 120)")
    restart.set_defaults(handler=_restart)
    status = subparsers.add_parser(
        "status",
        help="the brokers and PostgreSQL servers, and the health and consumer lag of every service",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=command_epilog("fapiao status", "fapiao status --json"),
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)
    demo = subparsers.add_parser("demo", help="start the stack, walk the end-to-end story, stop the stack")
    demo.add_argument("--keep-running", action="store_true", help="leave the stack running afterwards")
    demo.set_defaults(handler=_demo)
    for command, text in ((up, "each process on a host of its own (network namespaces; root)"),
                          (down, "the multi-host cluster, its namespaces included"),
                          (restart, "one of its processes: kraft-N, kafka-N, pg-services, pg-ledger-N, a service"),
                          (status, "the multi-host cluster, seen from its ops host")):  # fmt: skip
        command.add_argument("--hosts", action="store_true", help=f"the multi-host cluster: {text}")


def _demo(args: argparse.Namespace) -> int:
    from fapiao_cli.demo import run_demo

    return run_demo(keep_running=args.keep_running)


def _up(args: argparse.Namespace) -> int:
    from fapiao_stack import stack

    if args.hosts:
        return _cluster_up(args)
    try:
        endpoints = stack.up(timeout_s=args.timeout)
    except stack.ClusterRunning as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    print(f"Kafka       {endpoints.kafka_bootstrap}")
    print(f"PostgreSQL  {endpoints.database_url}")
    for name, address in endpoints.services.items():
        print(f"{name:<16} {address}")
    return EXIT_OK


def _down(args: argparse.Namespace) -> int:
    from fapiao_stack import cluster, stack

    try:
        stopped = cluster.down() if args.hosts else stack.down()
    except stack.ClusterRunning as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return EXIT_OK


def _restart(args: argparse.Namespace) -> int:
    from fapiao_stack import cluster, stack

    try:
        if args.hosts:
            address = cluster.restart(args.process, timeout_s=max(args.timeout, 300.0))
        else:
            address = stack.restart(args.process, timeout_s=args.timeout)
    except KeyError as exc:  # no such process in the cluster
        raise CliError(str(exc.args[0]), EXIT_USAGE) from None
    except stack.UnknownProcess as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except stack.StackNotRunning as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    except (RuntimeError, TimeoutError) as exc:
        raise CliError(f"{args.process} did not come back: {exc}", EXIT_FAILED) from None
    print(f"{args.process:<16} SERVING on {address}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from fapiao_stack import stack

    if args.hosts:
        from fapiao_stack import cluster

        report: dict[str, dict[str, object]] = dict(cluster.status())
    else:
        report = asyncio.run(stack.detailed_status())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, entry in report.items():
            lag = entry.get("consumer_lag")
            backlog = entry.get("outbox_backlog")
            extra = ""
            if isinstance(lag, float):
                extra += f"  lag {int(lag)}"
            if isinstance(backlog, float):
                extra += f"  outbox {int(backlog)}"
            if isinstance(entry.get("brokers_in_cluster"), int):
                extra += f"  brokers {entry['brokers_in_cluster']}"
            print(f"{name:<16} {entry['kind']:<9} {entry['health']:<12} {entry['address']:<22}{extra}")
    return EXIT_OK if all(e["health"] == "SERVING" for e in report.values()) else EXIT_FAILED


def _cluster_up(args: argparse.Namespace) -> int:
    from fapiao_stack import cluster

    state = cluster.up(timeout_s=max(args.timeout, 600.0))
    print(f"Kafka       {state['kafka_bootstrap']}")
    print(f"PostgreSQL  {state['database_url']}")
    services = state["services"]
    assert isinstance(services, dict)
    for name, address in services.items():
        print(f"{name:<16} {address}")
    hosts = state["hosts"]
    assert isinstance(hosts, dict)
    print(f"operator    ip netns exec {hosts[cluster.OPS]['namespace']} COMMAND")
    return EXIT_OK
