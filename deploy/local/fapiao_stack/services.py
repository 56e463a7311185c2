"""The service processes of the local stack: what to run, on which port, with which environment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field

import grpc
from fapiao_runtime.grpc_client import internal_channel
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fapiao_stack.paths import port_offset
from fapiao_stack.procs import listening_sockets

# FAPIAO_PORT_OFFSET shifts every port of the local stack, so a second stack (a test run of the CLI,
# say) can run beside `make up` on the same machine; later commands use the offset the stack recorded.
PORT_OFFSET = port_offset()
KAFKA_PORT = 19092 + PORT_OFFSET
KAFKA_CONTROLLER_PORT = 19093 + PORT_OFFSET
POSTGRES_PORT = 15432 + PORT_OFFSET
LEDGER_VALIDATORS = 4
INTAKE_WEBHOOK_PORT = 8081 + PORT_OFFSET
# The gRPC ports sit below Linux's ephemeral range (32768-60999, offsets included): there, an outgoing
# connection of any process, one of the stack's own services started a moment earlier included, may
# hold the port a later service must listen on (the services' own defaults, 50051..., are for
# deployments where each has its host or container to itself).
GRPC_BASE = 17000
REIMBURSEMENT_TLS_PORT = GRPC_BASE + 54 + PORT_OFFSET
# payment_intake's MerchantAdminService (mutual TLS, operator certificates only).
INTAKE_ADMIN_PORT = GRPC_BASE + 55 + PORT_OFFSET
GATEWAY_PORT = 8080 + PORT_OFFSET


@dataclass(frozen=True)
class ServiceSpec:
    """One service process. `health` is "grpc" (standard health service) or "http" (GET /healthz)."""

    name: str
    module: str
    port: int
    health: str = "grpc"
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = 0
    processes: int = 1  # worker processes sharing the port (fapiao_runtime.workers)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    def ports(self) -> list[int]:
        """Every port the process listens on: gRPC (or HTTP), metrics, and any *_PORT in its environment."""
        extra = [int(v) for k, v in self.env.items() if k.endswith("_PORT") and v.isdigit()]
        return [p for p in (self.port, self.metrics_port, *extra) if p]


def local_services() -> list[ServiceSpec]:
    """Every process `make up` starts, in start order (validators before their clients)."""
    # One worker process per core, up to two (docs/payment_intake.md, "Worker processes").
    intake_processes = min(2, os.cpu_count() or 1)
    specs = [
        ServiceSpec(
            "payment_intake",
            "payment_intake",
            GRPC_BASE + 51 + PORT_OFFSET,
            env={
                "FAPIAO_WEBHOOK_PORT": str(INTAKE_WEBHOOK_PORT),
                "FAPIAO_INTAKE_PROCESSES": str(intake_processes),
                "FAPIAO_INTAKE_ADMIN_PORT": str(INTAKE_ADMIN_PORT),
            },
            metrics_port=9101 + PORT_OFFSET,
            processes=intake_processes,
        )
    ]
    for index in range(1, LEDGER_VALIDATORS + 1):
        specs.append(
            ServiceSpec(
                f"ledger-{index}",
                "ledger",
                GRPC_BASE + 60 + index + PORT_OFFSET,
                metrics_port=9110 + index + PORT_OFFSET,
            )
        )
    specs += [
        ServiceSpec(
            "invoice_minting", "invoice_minting", GRPC_BASE + 52 + PORT_OFFSET, metrics_port=9102 + PORT_OFFSET
        ),
        ServiceSpec("reimbursement", "reimbursement", GRPC_BASE + 53 + PORT_OFFSET, metrics_port=9103 + PORT_OFFSET),
        ServiceSpec("gateway", "gateway", GATEWAY_PORT, health="http", metrics_port=9104 + PORT_OFFSET),
    ]
    return specs


async def grpc_health(port: int, timeout_s: float = 1.0, host: str = "127.0.0.1") -> str:
    """The overall status reported by the standard health service on `port` ("SERVING", ... or "DOWN").

    Over TLS when FAPIAO_GRPC_CA_FILE is set (fapiao_runtime.grpc_client), as every internal client."""
    try:
        async with internal_channel(f"{host}:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.aio.AioRpcError:
        return "DOWN"


async def http_health(port: int, timeout_s: float = 1.0, host: str = "127.0.0.1") -> str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        writer.write(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout_s)
        writer.close()
        return "SERVING" if b" 200 " in status_line else "NOT_SERVING"
    except (OSError, TimeoutError):
        return "DOWN"


async def service_health(port: int, health: str = "grpc", processes: int = 1, host: str = "127.0.0.1") -> str:
    """A service's health ("grpc" or "http" check); STARTING while it is SERVING but fewer than
    `processes` sockets listen on its port (a service run as several workers: not all of them yet; counted
    on this host's loopback only)."""
    status = await (grpc_health(port, host=host) if health == "grpc" else http_health(port, host=host))
    if status == "SERVING" and host == "127.0.0.1" and listening_sockets(port) < processes:
        return "STARTING"
    return status


async def health_of(spec: ServiceSpec, host: str = "127.0.0.1") -> str:
    return await service_health(spec.port, spec.health, spec.processes, host)


async def kafka_health(address: str, timeout_s: float = 3.0) -> tuple[str, int]:
    """("SERVING", brokers in the cluster's metadata) when the broker at `address` answers a metadata
    request, else ("DOWN", 0)."""
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    client = AIOKafkaClient(bootstrap_servers=address, request_timeout_ms=int(timeout_s * 1000))
    # A broker that is down is the answer here, not an error for the client's log.
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        return "SERVING", len(client.cluster.brokers())
    except (KafkaError, OSError, TimeoutError):
        return "DOWN", 0
    finally:
        await client.close()
        client_log.setLevel(level)


async def postgres_health(url: str, timeout_s: float = 3.0) -> str:
    """SERVING when the PostgreSQL server of `url` accepts a connection and answers a query, else DOWN."""
    import asyncpg

    try:
        connection = await asyncpg.connect(url, timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return "DOWN"
    try:
        await asyncio.wait_for(connection.fetchval("SELECT 1"), timeout_s)
        return "SERVING"
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return "DOWN"
    finally:
        with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await connection.close(timeout=timeout_s)
