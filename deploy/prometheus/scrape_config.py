"""Write a Prometheus configuration that scrapes every service of a Fapiao stack.

    python deploy/prometheus/scrape_config.py [--host ADDRESS | --run-dir DIR] [--interval 15s]
                                              [--rules PATH] [--out FILE]

The targets are the metrics ports `fapiao up` gives its services (`fapiao_stack.services.local_services`,
shifted by FAPIAO_PORT_OFFSET like the stack itself), or with --run-dir those a stack recorded in
DIR/stack.json: the local stack's (.run), the multi-host cluster's, or the compose stack's (the init
step's FAPIAO_COMPOSE_DIR). Every target gets the labels Fapiao's alert rules and
dashboard group by: `job` (the service: payment_intake, invoice_minting, reimbursement, gateway, ledger)
and `process` (the process name, e.g. ledger-3). deploy/prometheus/prometheus.yml is this script's output
for the default ports of the local stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fapiao_stack.prometheus import DEFAULT_RULES, local_targets, render, stack_targets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="the address the services' metrics listen on")
    parser.add_argument("--run-dir", type=Path, help="a stack's directory: the targets its stack.json records")
    parser.add_argument("--interval", default="15s", help="scrape and rule evaluation interval")
    parser.add_argument("--rules", default=DEFAULT_RULES, help="the alert rules file (relative to the config)")
    parser.add_argument("--out", default="-", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    if args.run_dir:
        targets, source = stack_targets(args.run_dir / "stack.json"), f"the stack of {args.run_dir}"
    else:
        targets, source = local_targets(args.host), "the local stack (`fapiao up`)"
    text = render(targets, interval=args.interval, rules=args.rules, source=source)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
