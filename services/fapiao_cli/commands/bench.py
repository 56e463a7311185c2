"""fapiao bench: run the benchmarks (same as `make bench`)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = subparsers.add_parser("bench", help="run the benchmarks; writes build/bench/results.json")
    bench.add_argument("--only", default="", help="comma-separated areas (baselines, intake, minting, ...)")
    bench.add_argument("--out", default="", help="where to write the JSON figures")
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from fapiao_bench.__main__ import main as bench_main

    argv = ["fapiao_bench"]
    if args.only:
        argv += ["--only", args.only]
    if args.out:
        argv += ["--out", args.out]
    sys.argv = argv
    return bench_main()
