"""payment_intake benchmarks against a real service process, Kafka and PostgreSQL.

intake_grpc_payments_per_s: distinct RecordPayment calls committed per second (each with its outbox
event), PAYMENTS calls with CONCURRENCY in flight over WORKER_CONNECTIONS connections, client in this process,
against the service run as WORKERS processes sharing its ports (FAPIAO_INTAKE_PROCESSES: one per core
of this 2-core machine; the kernel spreads the connections over them).
intake_grpc_payments_per_s_1_process: the same against the service run as one process, over CHANNELS
channels sharing one connection.
intake_grpc_busiest_worker_share: the share of the WORKERS' CPU spent by the busiest one (0.5 = even).
intake_outbox_drain_s: time from the last commit until the relay has published every event.
intake_webhook_p50_ms / _p99_ms: latency of signed, encrypted notifications sent at a steady
WEBHOOK_RATE_PER_S for WEBHOOK_SECONDS (pre-signed: RSA signing would otherwise load the client;
the run is far shorter than the 300 s timestamp window).
intake_grpc_noop_baseline_per_s: the same client against a no-op PaymentIntakeService on the runtime's
GrpcServer (same interceptor) in its own process: the ceiling the gRPC stack alone allows here.
intake_grpc_server_cpu_ms_per_payment / intake_webhook_server_cpu_ms_per_request: CPU time (user + system)
the service process spent per request, from /proc; unlike the rates it barely depends on what else
runs on the machine, so it tells the capacity of one core (1000 / figure requests per second).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime

import aiohttp
import asyncpg
import grpc
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as service_grpc
from fapiao_runtime import event_loop
from fapiao_runtime.grpc_server import GrpcServer
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_stack.harness import ServiceProcess, StackUnderTest
from fapiao_stack.procs import free_port, spawn, stop_pid
from fapiao_stack.services import grpc_health
from google.protobuf.timestamp_pb2 import Timestamp
from payment_intake import merchants
from payment_intake.wechatpay import Delivery, PlatformSigner, generate_apiv3_key, transaction_resource

from fapiao_bench.cpu import children_of, cpu_seconds
from fapiao_bench.stats import percentile

PAYMENTS = 20_000
WARMUP = 1_000
CONCURRENCY = 256
CHANNELS = 4  # channels to one address share one TCP connection (gRPC's default)
# Against workers, each channel has a TCP connection of its own: the kernel hands connections, not
# calls, to the workers, and a few connections could all land on one.
WORKER_CONNECTIONS = 16
WORKERS = 2
WEBHOOK_RATE_PER_S = 200
WEBHOOK_SECONDS = 10
MERCHANT_ID = "1230000109"


def _request(transaction_id: str, success: Timestamp) -> service_pb2.RecordPaymentRequest:
    return service_pb2.RecordPaymentRequest(
        merchant_id=MERCHANT_ID,
        transaction_id=transaction_id,
        out_trade_no=f"o{transaction_id}",
        amount_fen=2_599,
        payer_total_fen=2_599,
        currency="CNY",
        success_time=success,
        payer_openid=f"openid-{transaction_id[-6:]}",
        trade_type="JSAPI",
    )


async def _grpc_throughput(
    port: int, run_id: str, payments: int = PAYMENTS, warmup: int = WARMUP, connections: int = 0
) -> float:
    """Payments per second over CHANNELS channels sharing one connection, or over `connections` channels
    with a connection each."""
    success = Timestamp()
    success.FromDatetime(datetime.now(UTC))
    options = [("grpc.use_local_subchannel_pool", 1)] if connections else []
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(connections or CHANNELS)]
    stubs = [service_grpc.PaymentIntakeServiceStub(c) for c in channels]
    try:

        async def drive(prefix: str, count: int) -> None:
            next_index = 0

            async def worker(slot: int) -> None:
                nonlocal next_index
                stub = stubs[slot % len(stubs)]
                while next_index < count:
                    index = next_index
                    next_index += 1
                    reply = await stub.RecordPayment(_request(f"{prefix}{index:08d}", success), timeout=30)
                    assert not reply.duplicate

            await asyncio.gather(*(worker(slot) for slot in range(CONCURRENCY)))

        await drive(f"w{run_id}", warmup)
        started = time.perf_counter()
        await drive(f"b{run_id}", payments)
        return payments / (time.perf_counter() - started)
    finally:
        for channel in channels:
            await channel.close()


async def _outbox_drain_s(database_url: str, timeout_s: float = 60.0) -> float:
    conn = await asyncpg.connect(database_url)
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout_s:
            if await conn.fetchval("SELECT count(*) FROM payment_intake.outbox WHERE sent_at IS NULL") == 0:
                return time.perf_counter() - started
            await asyncio.sleep(0.05)
        raise TimeoutError("outbox not drained")
    finally:
        await conn.close()


async def _webhook_latency(url: str, signer: PlatformSigner, apiv3_key: bytes) -> tuple[float, float, float]:
    total = WEBHOOK_RATE_PER_S * WEBHOOK_SECONDS
    deliveries = [
        signer.deliver(
            signer.notification_body(
                apiv3_key,
                transaction_resource(
                    mchid=MERCHANT_ID,
                    transaction_id=f"wh{i:08d}",
                    out_trade_no=f"wh-o{i}",
                    total_fen=1_000 + i,
                    openid="o",
                ),
            )
        )
        for i in range(total)
    ]
    latencies: list[float] = []
    failures: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(delivery: Delivery) -> None:
            started = time.perf_counter()
            async with session.post(url, data=delivery.body, headers=delivery.headers) as response:
                answer = await response.json()
                if response.status != 200:
                    code = str(answer.get("code", response.status))
                    failures[code] = failures.get(code, 0) + 1
            latencies.append((time.perf_counter() - started) * 1000)

        origin = time.perf_counter()
        tasks = []
        for i, delivery in enumerate(deliveries):
            delay = origin + i / WEBHOOK_RATE_PER_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(send(delivery)))
        await asyncio.gather(*tasks)
    if failures:
        raise RuntimeError(f"{failures} webhook deliveries failed")
    return percentile(latencies, 0.5), percentile(latencies, 0.99), float(len(latencies))


class _NoopIntake(service_grpc.PaymentIntakeServiceServicer):
    async def RecordPayment(
        self, request: service_pb2.RecordPaymentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordPaymentResponse:
        return service_pb2.RecordPaymentResponse()


async def _serve_noop(port: int) -> None:
    server = GrpcServer(["fapiao.payments.v1.PaymentIntakeService"])
    server.add_servicer(service_grpc.add_PaymentIntakeServiceServicer_to_server, _NoopIntake())  # type: ignore[abstract]
    await server.start("127.0.0.1", port)
    await asyncio.sleep(600)  # killed by the benchmark long before


async def _noop_baseline(env: StackUnderTest) -> float:
    port = free_port()
    proc = spawn([sys.executable, "-m", "fapiao_bench.intake", str(port)], log_file=env.tmp_path / "noop.log")
    try:
        deadline = time.monotonic() + 30
        while await grpc_health(port) != "SERVING":
            if time.monotonic() > deadline:
                raise TimeoutError("no-op gRPC server did not start")
            await asyncio.sleep(0.1)
        return await _grpc_throughput(port, "noop", payments=PAYMENTS // 2)
    finally:
        stop_pid(proc.pid, timeout_s=5)


async def run(env: StackUnderTest) -> dict[str, float]:
    secrets_key = secrets.token_bytes(32)

    async def start_intake(processes: int) -> tuple[ServiceProcess, int]:
        webhook_port = free_port()
        service = await env.start_service(
            "payment_intake",
            port=free_port(),
            processes=processes,
            FAPIAO_INTAKE_PROCESSES=str(processes),
            FAPIAO_WEBHOOK_PORT=str(webhook_port),
            FAPIAO_SECRETS_KEY=secrets_key.hex(),
            FAPIAO_PAYER_HASH_KEY=secrets.token_hex(32),
            FAPIAO_LOG_LEVEL="WARNING",
        )
        return service, webhook_port

    service, webhook_port = await start_intake(1)
    try:
        signer, apiv3_key = PlatformSigner.generate(), generate_apiv3_key()
        await merchants.register_merchant_at(
            env.database_url,
            secrets_key,
            merchants.MerchantProfile(
                MERCHANT_ID,
                "深圳市基准测试有限公司",
                "9144030071526726X" + uscc_check_char("9144030071526726X"),
                "44",
                "3070401000000000000",
                "餐饮服务",
                600,
            ),
            apiv3_key=apiv3_key,
            platform_keys={signer.serial: signer.public_key_pem()},
        )
        pid = service.proc.pid  # type: ignore[attr-defined]
        cpu_before = cpu_seconds(pid)
        per_s = await _grpc_throughput(service.port, uuid.uuid4().hex[:6])
        drain_s = await _outbox_drain_s(env.database_url)
        grpc_cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000 / (PAYMENTS + WARMUP)
        url = f"http://127.0.0.1:{webhook_port}/v1/notify/wechatpay/{MERCHANT_ID}"
        cpu_before = cpu_seconds(pid)
        p50, p99, count = await _webhook_latency(url, signer, apiv3_key)
        await _outbox_drain_s(env.database_url)
        webhook_cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000 / count
    finally:
        service.terminate()
    # One worker per core, on one pair of ports (idempotency and nonces are decided by PostgreSQL, the
    # relay elects a leader: workers, like replicas, need no other coordination).
    service, _ = await start_intake(WORKERS)
    try:
        workers = children_of(service.proc.pid)  # type: ignore[attr-defined]
        before = [cpu_seconds(pid) for pid in workers]
        workers_per_s = await _grpc_throughput(service.port, uuid.uuid4().hex[:6], connections=WORKER_CONNECTIONS)
        spent = [cpu_seconds(pid) - b for pid, b in zip(workers, before, strict=True)]
        workers_cpu_ms = sum(spent) * 1000 / (PAYMENTS + WARMUP)
        busiest_share = max(spent) / sum(spent)
        await _outbox_drain_s(env.database_url)
    finally:
        service.terminate()
    baseline = await _noop_baseline(env)
    return {
        "intake_grpc_noop_baseline_per_s": baseline,
        "intake_grpc_payments_per_s": workers_per_s,
        "intake_grpc_payments_per_s_1_process": per_s,
        "intake_grpc_busiest_worker_share": busiest_share,
        "intake_grpc_workers_cpu_ms_per_payment": workers_cpu_ms,
        "intake_outbox_drain_s": drain_s,
        "intake_webhook_p50_ms": p50,
        "intake_webhook_p99_ms": p99,
        "intake_webhook_requests": count,
        "intake_grpc_server_cpu_ms_per_payment": grpc_cpu_ms,
        "intake_webhook_server_cpu_ms_per_request": webhook_cpu_ms,
        "intake_load_average_1m": os.getloadavg()[0],
    }


if __name__ == "__main__":  # the no-op baseline server: python -m fapiao_bench.intake PORT
    event_loop.run(_serve_noop(int(sys.argv[1])))
