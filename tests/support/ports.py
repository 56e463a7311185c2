"""Ports for private local stacks that run beside `make up` and beside each other."""

from __future__ import annotations

import random

from fapiao_stack.procs import port_open

# The local stack's ports at offset 0 (fapiao_stack.services): Kafka, its controller, PostgreSQL, the
# gateway, the webhook, the gRPC services (and reimbursement's TLS port) and the metrics endpoints.
_BASE_PORTS = (19092, 19093, 15432, 8080, 8081, *range(17051, 17055), *range(17061, 17065), *range(9101, 9115))


def free_port_offset() -> int:
    """A FAPIAO_PORT_OFFSET at which none of the stack's ports is taken right now."""
    for _ in range(50):
        offset = random.randrange(1000, 9000, 100)
        if not any(port_open(base + offset) for base in _BASE_PORTS):
            return offset
    raise RuntimeError("no free port offset for a private stack")
