"""The merchant registry as an operator meets it: a platform key pair from `payment_intake.cli platform-key
generate` signs for a merchant registered through MerchantAdminService, which emits MerchantRegistered;
a re-registration keeps the APIv3 key and only a rotation replaces it; `payment_intake.cli secrets reseal`
re-seals the stored keys after a FAPIAO_SECRETS_KEY rotation."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from pathlib import Path

import pytest
from fapiao.admin.v1 import merchant_admin_service_pb2 as mpb
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import unpack
from fapiao_runtime.topics import MERCHANTS
from fapiao_stack.devstack import Pki
from fapiao_stack.harness import StackUnderTest, read_envelopes
from payment_intake.wechatpay import generate_apiv3_key, load_private_key, send_notification

from tests.payment_intake.support import (
    PLATFORM,
    TAX_ID,
    intake_with_admin,
    new_transaction_id,
    payment_resource,
    register,
    registration,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


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


async def test_a_generated_platform_key_signs_for_a_merchant_registered_through_the_admin_api(
    stack: StackUnderTest, pki: Pki
) -> None:
    code, out, err = await _cli(stack, {}, "platform-key", "generate", "--out", str(stack.tmp_path / "platform"))
    assert code == 0, err
    generated = json.loads(out)
    serial = generated["serial"]
    platform = load_private_key(Path(generated["private_key"]).read_bytes(), serial)
    assert Path(generated["private_key"]).stat().st_mode & 0o077 == 0
    pem = Path(generated["public_key"]).read_bytes()

    async with intake_with_admin(stack, pki) as (intake, stub):
        request = registration(
            intake.merchant_id,
            tax_id=TAX_ID.lower(),
            apiv3_key_if_new=intake.apiv3_key.decode(),
            platform_keys=[mpb.PlatformKey(serial=serial, public_key_pem=pem)],
        )
        reply = await stub.RegisterMerchant(request, timeout=10)
        assert reply.apiv3_key_stored and reply.merchant.tax_id == TAX_ID
        assert list(reply.merchant.trusted_platform_serials) == [serial]
        assert reply.merchant.notify_path == f"/v1/notify/wechatpay/{intake.merchant_id}"

        events = await read_envelopes(stack.kafka_bootstrap, stack.topic(MERCHANTS.name), expected=1, timeout_s=15)
        assert len(events) == 1 and events[0].aggregate_id == intake.merchant_id
        registered = unpack(events[0], payments_pb2.MerchantRegistered)
        assert (registered.tax_id, registered.region_code, registered.default_tax_rate_bp) == (TAX_ID, "44", 600)
        # The registered APIv3 key is the one the service decrypts with; the generated key pair signs.
        url = f"http://127.0.0.1:{intake.webhook_port}{reply.merchant.notify_path}"
        resource = payment_resource(intake.merchant_id, new_transaction_id())
        assert await send_notification(url, platform, intake.apiv3_key, resource) == (
            200,
            {"code": "SUCCESS", "message": "OK"},
        )
        status, answer = await send_notification(url, PLATFORM, intake.apiv3_key, resource)
        assert (status, answer["code"]) == (401, "UNKNOWN_SERIAL")
    assert intake.apiv3_key.decode() not in intake.process.log_text()


async def test_secrets_key_rotation_reseals_apiv3_keys(stack: StackUnderTest) -> None:
    from fapiao_runtime.db import apply_migrations, create_pool
    from payment_intake.cli import MIGRATIONS
    from payment_intake.merchants import MerchantDirectory

    old_key, new_key = secrets.token_hex(32), secrets.token_hex(32)
    apiv3_key = generate_apiv3_key()
    pool = await create_pool(stack.database_url, "payment_intake", min_size=1, max_size=1)
    try:
        await apply_migrations(pool, "payment_intake", MIGRATIONS)
    finally:
        await pool.close()
    await register(stack, bytes.fromhex(old_key), "1900000301", apiv3_key)

    rotated = {"FAPIAO_SECRETS_KEY": new_key, "FAPIAO_PAYER_HASH_KEY": secrets.token_hex(32)}
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


async def test_a_rerun_keeps_the_apiv3_key_and_only_rotation_replaces_it(stack: StackUnderTest, pki: Pki) -> None:
    async with intake_with_admin(stack, pki) as (intake, stub):
        first_key = intake.apiv3_key.decode()
        first = await stub.RegisterMerchant(registration(intake.merchant_id, apiv3_key_if_new=first_key), timeout=10)
        assert first.apiv3_key_stored
        rerun = await stub.RegisterMerchant(
            registration(
                intake.merchant_id,
                legal_name="重跑测试有限公司（更名）",
                apiv3_key_if_new=generate_apiv3_key().decode(),
            ),
            timeout=10,
        )
        assert not rerun.apiv3_key_stored and rerun.merchant.legal_name == "重跑测试有限公司（更名）"

        url = f"http://127.0.0.1:{intake.webhook_port}{first.merchant.notify_path}"

        async def notify(apiv3_key: str) -> tuple[int, str]:
            resource = payment_resource(intake.merchant_id, new_transaction_id())
            status, answer = await send_notification(url, PLATFORM, apiv3_key.encode(), resource)
            return status, answer["code"]

        assert await notify(first_key) == (200, "SUCCESS")  # the kept key, now in the service's cache
        rotated_key = generate_apiv3_key().decode()
        rotated = await stub.RegisterMerchant(
            registration(intake.merchant_id, replace_apiv3_key=rotated_key), timeout=10
        )
        assert rotated.apiv3_key_stored
        # The new key works at once (a resource the cached key cannot open re-reads the merchant)...
        assert await notify(rotated_key) == (200, "SUCCESS")
        # ...and the replaced one no longer does.
        assert await notify(first_key) == (400, "UNDECRYPTABLE_RESOURCE")
