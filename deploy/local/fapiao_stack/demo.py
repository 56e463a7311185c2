"""`make demo`: start the stack, show every service healthy, stop it again."""

from __future__ import annotations

import asyncio

from fapiao_stack import stack


def run_demo() -> int:
    """Bring the stack up, report each process's health, and always stop it. Exit code 0 on success."""
    try:
        endpoints = stack.up()
        print(f"Kafka {endpoints.kafka_bootstrap}, PostgreSQL {endpoints.database_url}")
        states = asyncio.run(stack.status())
        for name, state in states.items():
            print(f"  {name:<16} {state}")
        return 0 if all(s == "SERVING" for s in states.values()) else 1
    finally:
        print("stopped: " + ", ".join(stack.down()))
