"""The merchant registry CLI: registers a merchant, prints what the payment system needs, emits MerchantRegistered."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from pathlib import Path

import pytest
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import unpack
from fapiao_runtime.topics import MERCHANTS
from fapiao_stack.harness import StackUnderTest, read_envelopes
from fapiao_stack.procs import free_port
from payment_intake.wechatpay import load_private_key, send_notification

from tests.payment_intake.support import PLATFORM, TAX_ID, new_transaction_id, payment_resource

pytestmark = pytest.mark.integration


async def _cli(stack: StackUnderTest, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "payment_intake.cli",
        *args,
        env=stack.env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_cli_registers_a_merchant_that_can_then_be_paid(stack: StackUnderTest) -> None:
    keys = {"FAPIAO_SECRETS_KEY": secrets.token_hex(32), "FAPIAO_PAYER_HASH_KEY": secrets.token_hex(32)}
    code, out, err = await _cli(stack, keys, "platform-key", "generate", "--out", str(stack.tmp_path / "platform"))
    assert code == 0, err
    generated = json.loads(out)
    serial, pem = generated["serial"], generated["public_key"]
    platform = load_private_key(Path(generated["private_key"]).read_bytes(), serial)
    assert Path(generated["private_key"]).stat().st_mode & 0o077 == 0
    code, _, err = await _cli(
        stack,
        keys,
        "merchant",
        "add",
        "--merchant-id",
        "1230000109",
        "--legal-name",
        "深圳市测试餐饮有限公司",
        "--tax-id",
        TAX_ID[:-1] + ("0" if TAX_ID[-1] != "0" else "1"),
        "--region-code",
        "44",
    )
    assert code == 2 and json.loads(err)["error"] == "INVALID_TAX_ID"
    code, out, err = await _cli(
        stack,
        keys,
        "merchant",
        "add",
        "--merchant-id",
        "1230000109",
        "--legal-name",
        "深圳市测试餐饮有限公司",
        "--tax-id",
        TAX_ID.lower(),
        "--region-code",
        "44",
        "--platform-key",
        f"{serial}={pem}",
    )
    assert code == 0, err
    printed = json.loads(out)
    assert printed["merchant_id"] == "1230000109" and printed["tax_id"] == TAX_ID
    assert printed["trusted_platform_serials"] == [serial]
    assert printed["notify_path"] == "/v1/notify/wechatpay/1230000109"
    apiv3_key = printed["apiv3_key"].encode()
    assert len(apiv3_key) == 32
    code, out, _ = await _cli(stack, keys, "merchant", "show", "--merchant-id", "1230000109")
    assert code == 0 and printed["apiv3_key"] not in out and json.loads(out)["region_code"] == "44"

    webhook_port = free_port()
    service = await stack.start_service("payment_intake", FAPIAO_WEBHOOK_PORT=str(webhook_port), **keys)
    try:
        events = await read_envelopes(stack.kafka_bootstrap, stack.topic(MERCHANTS.name), expected=1, timeout_s=15)
        assert len(events) == 1 and events[0].aggregate_id == "1230000109"
        registered = unpack(events[0], payments_pb2.MerchantRegistered)
        assert (registered.tax_id, registered.region_code, registered.default_tax_rate_bp) == (TAX_ID, "44", 600)
        # The printed APIv3 key is the one the service decrypts with; the generated key pair signs.
        url = f"http://127.0.0.1:{webhook_port}{printed['notify_path']}"
        resource = payment_resource("1230000109", new_transaction_id())
        assert await send_notification(url, platform, apiv3_key, resource) == (
            200,
            {"code": "SUCCESS", "message": "OK"},
        )
        status, answer = await send_notification(url, PLATFORM, apiv3_key, resource)
        assert (status, answer["code"]) == (401, "UNKNOWN_SERIAL")
    finally:
        service.kill()
    assert printed["apiv3_key"] not in service.log_text()


async def test_secrets_key_rotation_reseals_apiv3_keys(stack: StackUnderTest) -> None:
    from fapiao_runtime.db import create_pool
    from payment_intake.merchants import MerchantDirectory

    old_key, new_key = secrets.token_hex(32), secrets.token_hex(32)
    keys = {"FAPIAO_SECRETS_KEY": old_key, "FAPIAO_PAYER_HASH_KEY": secrets.token_hex(32)}
    code, out, err = await _cli(
        stack, keys, "merchant", "add", "--merchant-id", "1900000301", "--legal-name", "轮换测试有限公司",
        "--tax-id", TAX_ID, "--region-code", "44",
    )  # fmt: skip
    assert code == 0, err
    apiv3_key = json.loads(out)["apiv3_key"].encode()

    rotated = {**keys, "FAPIAO_SECRETS_KEY": new_key}
    code, out, err = await _cli(stack, rotated, "secrets", "reseal")
    # The old key is needed to open what it sealed: nothing is re-sealed without it.
    assert code == 2 and "SEALED_VALUE_DOES_NOT_OPEN" in err
    code, out, err = await _cli(stack, {**rotated, "FAPIAO_SECRETS_KEY_PREVIOUS": old_key}, "secrets", "reseal")
    assert code == 0, err
    assert json.loads(out) == {"resealed": {"merchants.apiv3_key_sealed": 1}}

    pool = await create_pool(stack.database_url, "payment_intake", min_size=1, max_size=1)
    try:
        found = await MerchantDirectory(pool, bytes.fromhex(new_key)).get("1900000301")
        assert found is not None and found.apiv3_key == apiv3_key
        # ...and the old key alone no longer opens it.
        with pytest.raises(Exception, match="MERCHANT_KEY_UNAVAILABLE"):
            await MerchantDirectory(pool, bytes.fromhex(old_key)).get("1900000301")
    finally:
        await pool.close()


async def test_a_rerun_keeps_the_apiv3_key_and_only_rotation_replaces_it(stack: StackUnderTest) -> None:
    from fapiao_runtime.db import create_pool
    from payment_intake.merchants import MerchantDirectory

    secrets_key = secrets.token_hex(32)
    keys = {"FAPIAO_SECRETS_KEY": secrets_key, "FAPIAO_PAYER_HASH_KEY": secrets.token_hex(32)}
    pem = stack.tmp_path / "platform.pem"
    pem.write_text(PLATFORM.public_key_pem())
    add = ("merchant", "add", "--merchant-id", "1900000302", "--legal-name", "重跑测试有限公司",
           "--tax-id", TAX_ID, "--region-code", "44", "--platform-key", f"{PLATFORM.serial}={pem}")  # fmt: skip

    async def stored_key() -> bytes:
        pool = await create_pool(stack.database_url, "payment_intake", min_size=1, max_size=1)
        try:
            found = await MerchantDirectory(pool, bytes.fromhex(secrets_key)).get("1900000302")
            assert found is not None
            return found.apiv3_key
        finally:
            await pool.close()

    code, out, err = await _cli(stack, keys, *add)
    assert code == 0, err
    first = json.loads(out)
    assert first["created"] is True and await stored_key() == first["apiv3_key"].encode()

    code, out, err = await _cli(stack, keys, *add, "--legal-name", "重跑测试有限公司（更名）")
    assert code == 0, err
    rerun = json.loads(out)
    assert rerun["created"] is False and "apiv3_key" not in rerun
    assert await stored_key() == first["apiv3_key"].encode()

    webhook_port = free_port()
    service = await stack.start_service("payment_intake", FAPIAO_WEBHOOK_PORT=str(webhook_port), **keys)
    try:
        url = f"http://127.0.0.1:{webhook_port}{first['notify_path']}"

        async def notify(apiv3_key: str) -> tuple[int, str]:
            resource = payment_resource("1900000302", new_transaction_id())
            status, answer = await send_notification(url, PLATFORM, apiv3_key.encode(), resource)
            return status, answer["code"]

        assert await notify(first["apiv3_key"]) == (200, "SUCCESS")  # the key is now in the service's cache
        code, out, err = await _cli(stack, keys, *add, "--rotate-apiv3-key")
        assert code == 0, err
        rotated = json.loads(out)
        assert rotated["created"] is False and len(rotated["apiv3_key"]) == 32
        assert rotated["apiv3_key"] != first["apiv3_key"] and await stored_key() == rotated["apiv3_key"].encode()
        # The new key works at once (a resource the cached key cannot open re-reads the merchant)...
        assert await notify(rotated["apiv3_key"]) == (200, "SUCCESS")
        # ...and the replaced one no longer does.
        assert await notify(first["apiv3_key"]) == (400, "UNDECRYPTABLE_RESOURCE")
    finally:
        service.kill()

    code, _, err = await _cli(stack, keys, *add, "--rotate-apiv3-key", "--apiv3-key", "k" * 32)
    assert code != 0 and "not both" in err
    assert await stored_key() == rotated["apiv3_key"].encode()
