"""The webhook with its real directory, handlers and batcher over a real PostgreSQL server that is stopped
under it: a notification is then 503 with Retry-After (the platform retries), the webhook logs one
warning line and no traceback, and once the server is back the platform's retry is recorded."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_stack.postgres import LocalPostgres
from fapiao_stack.procs import free_port
from payment_intake.batcher import PaymentBatcher
from payment_intake.handlers import IntakeHandlers
from payment_intake.merchants import MerchantDirectory
from payment_intake.webhook import NotificationReceiver, start_webhook
from payment_intake.wechatpay import Delivery, generate_apiv3_key

from tests.payment_intake.support import PLATFORM, SCHEMA, new_transaction_id, payment_resource, register

pytestmark = pytest.mark.integration

MERCHANT = "1230000109"
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "payment_intake" / "migrations"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A PostgreSQL server of this test's own, so it can be stopped."""
    postgres = LocalPostgres(tmp_path / "pg", free_port(), tmp_path / "pg.log")
    postgres.start()
    try:
        yield postgres
    finally:
        postgres.stop()


async def _post(http: aiohttp.ClientSession, url: str, delivery: Delivery) -> tuple[int, str, dict[str, Any]]:
    async with http.post(url, data=delivery.body, headers=delivery.headers) as response:
        return response.status, response.headers.get("Retry-After", ""), await response.json()


async def test_a_stopped_database_is_503_with_retry_after_and_the_retry_is_recorded(
    server: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    secrets_key, apiv3_key = secrets.token_bytes(32), generate_apiv3_key()
    pool = await create_pool(server.url, SCHEMA, min_size=1, max_size=4)
    await apply_migrations(pool, SCHEMA, MIGRATIONS)
    await register(SimpleNamespace(database_url=server.url), secrets_key, MERCHANT, apiv3_key)  # type: ignore[arg-type]
    directory = MerchantDirectory(pool, secrets_key)
    batcher = PaymentBatcher(pool)
    stop = asyncio.Event()
    batching = asyncio.ensure_future(batcher.run(stop))
    receiver = NotificationReceiver(IntakeHandlers(pool, directory, batcher), directory, secrets.token_bytes(32))
    runner, port = await start_webhook(receiver, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/v1/notify/wechatpay/{MERCHANT}"
    try:
        async with aiohttp.ClientSession() as http:
            warm = PLATFORM.notification_body(apiv3_key, payment_resource(MERCHANT, new_transaction_id()))
            assert (await _post(http, url, PLATFORM.deliver(warm)))[0] == 200
            body = PLATFORM.notification_body(apiv3_key, payment_resource(MERCHANT, new_transaction_id()))
            server.stop()
            status, retry_after, answer = await _post(http, url, PLATFORM.deliver(body))
            assert status == 503 and int(retry_after) >= 1, answer
            assert answer["code"].endswith("_UNAVAILABLE") or answer["code"] == "DEADLINE_EXCEEDED", answer
            webhook_lines = [
                r for r in caplog.records if r.name == "payment_intake.webhook" and r.levelno > logging.INFO
            ]
            assert [r.levelno for r in webhook_lines] == [logging.WARNING]
            assert webhook_lines[0].exc_info is None
            server.start()
            # The platform retries the same notification (a new delivery: new nonce and signature).
            for _ in range(60):
                status, _, answer = await _post(http, url, PLATFORM.deliver(body))
                if status == 200:
                    break
                assert status == 503, answer
                await asyncio.sleep(0.5)
            assert status == 200, answer
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM payments") == 2
    finally:
        await runner.cleanup()
        stop.set()
        await asyncio.wait_for(batching, 10)
        await pool.close()
