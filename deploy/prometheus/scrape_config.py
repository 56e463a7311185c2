"""Write a Prometheus configuration that scrapes every service of the local stack.

    python deploy/prometheus/scrape_config.py [--host ADDRESS] [--interval 15s] [--rules PATH] [--out FILE]

The targets are the metrics ports `fapiao up` gives its services (`fapiao_stack.services.local_services`,
shifted by FAPIAO_PORT_OFFSET like the stack itself). Every target gets the labels Fapiao's alert rules
and dashboard group by: `job` (the service: payment_intake, invoice_minting, reimbursement, gateway,
ledger) and `process` (the process name, e.g. ledger-3). deploy/prometheus/prometheus.yml is this
script's output for the default ports; a deployment elsewhere keeps the labels and lists its own targets.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fapiao_stack.services import ServiceSpec, local_services

HERE = Path(__file__).resolve().parent
DEFAULT_RULES = "rules/fapiao.rules.yml"


def render(
    specs: Sequence[ServiceSpec], *, host: str = "127.0.0.1", interval: str = "15s", rules: str = DEFAULT_RULES
) -> str:
    """The prometheus.yml text: one job per service module, one target per process with a metrics port."""
    jobs: dict[str, list[ServiceSpec]] = {}
    for spec in specs:
        if spec.metrics_port:
            jobs.setdefault(spec.module, []).append(spec)
    lines = [
        "# Written by deploy/prometheus/scrape_config.py for the local stack (`fapiao up`).",
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
        "rule_files:",
        f"  - {rules}",
        "scrape_configs:",
    ]
    for job, members in jobs.items():
        lines += [f"  - job_name: {job}", "    static_configs:"]
        for spec in members:
            lines += [
                f"      - targets: ['{host}:{spec.metrics_port}']",
                "        labels:",
                f"          process: {spec.name}",
            ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="the address the services' metrics listen on")
    parser.add_argument("--interval", default="15s", help="scrape and rule evaluation interval")
    parser.add_argument("--rules", default=DEFAULT_RULES, help="the alert rules file (relative to the config)")
    parser.add_argument("--out", default="-", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    text = render(local_services(), host=args.host, interval=args.interval, rules=args.rules)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
