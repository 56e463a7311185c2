"""Gateway benchmark: webhook forwarding through a real gateway process.

`async def run(env) -> dict[str, float]` follows the fapiao_bench contract. The upstream is a minimal
in-process HTTP endpoint answering like payment_intake, so the figures are the gateway's own cost:

- gateway_webhook_forwards_per_s: sustained forwards with 64 concurrent senders for DURATION_S;
- gateway_webhook_p99_ms: p99 latency of those forwards (sender to upstream and back);
- gateway_cpu_ms_per_forward: the gateway process's CPU time per forward (1000 / this = forwards per
  second one core could sustain, whatever else the machine is doing).

    python -m fapiao_bench.gateway   # prints the figures (needs no broker or database)
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from fapiao_runtime import event_loop
from fapiao_stack.harness import StackUnderTest

from fapiao_bench.cpu import cpu_seconds
from fapiao_bench.stats import percentile

DURATION_S = 15.0
SENDERS = 64
BODY = json.dumps({"id": "bench", "resource": {"ciphertext": "A" * 600, "nonce": "n" * 12}}).encode()


async def _upstream() -> tuple[web.AppRunner, int]:
    async def notify(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"code": "SUCCESS", "message": "ok"})

    app = web.Application()
    app.router.add_post("/v1/notify/wechatpay/{merchant_id}", notify)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def run(env: StackUnderTest) -> dict[str, float]:
    runner, upstream_port = await _upstream()
    gateway = await env.start_service(
        "gateway",
        health="http",
        FAPIAO_INTAKE_WEBHOOK_URL=f"http://127.0.0.1:{upstream_port}",
        FAPIAO_GATEWAY_SECRET=os.urandom(32).hex(),
        FAPIAO_LOG_LEVEL="WARNING",
    )
    url = f"http://127.0.0.1:{gateway.port}/v1/notify/wechatpay/1900000109"
    headers = {"Content-Type": "application/json", "Wechatpay-Nonce": "bench", "Wechatpay-Timestamp": "0"}
    latencies: list[float] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=SENDERS)) as http:
            pid = int(gateway.proc.pid)  # type: ignore[attr-defined]
            cpu_before = cpu_seconds(pid)
            stop_at = time.monotonic() + DURATION_S
            started = time.monotonic()

            async def sender() -> None:
                while time.monotonic() < stop_at:
                    sent = time.perf_counter()
                    async with http.post(url, data=BODY, headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"gateway answered {response.status}")
                    latencies.append(time.perf_counter() - sent)

            await asyncio.gather(*(sender() for _ in range(SENDERS)))
            elapsed = time.monotonic() - started
            cpu_used = cpu_seconds(pid) - cpu_before
    finally:
        gateway.terminate()
        await runner.cleanup()
    return {
        "gateway_webhook_forwards_per_s": len(latencies) / elapsed,
        "gateway_webhook_p99_ms": percentile(latencies, 0.99) * 1000,
        "gateway_cpu_ms_per_forward": cpu_used * 1000 / len(latencies),
    }


async def _main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = StackUnderTest("", "", "", Path(tmp))
        figures = await run(env)
    for name, value in figures.items():
        print(f"{name:36s} {value:10.2f}")


if __name__ == "__main__":
    event_loop.run(_main())
