"""Claims under real concurrency: one invoice per token, gapless unique numbers per region and year."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import asyncpg
import grpc
import pytest
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as api_grpc
from fapiao_runtime.errors import reason_of
from fapiao_stack.harness import StackUnderTest

from tests.invoice_minting.support import MintingUnderTest, minting_service, person, uscc

pytestmark = pytest.mark.integration


async def _claim(stub: api_grpc.InvoiceMintingServiceStub, token: str, key: str) -> str:
    try:
        response = await stub.ClaimInvoice(
            api.ClaimInvoiceRequest(claim_token=token, buyer=person("李四"), idempotency_key=key), timeout=60
        )
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}:{reason_of(exc)}"
    return response.invoice.body.invoice_number


def _stubs(minting: MintingUnderTest, count: int) -> list[tuple[grpc.aio.Channel, api_grpc.InvoiceMintingServiceStub]]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{minting.service.port}") for _ in range(count)]
    return [(c, api_grpc.InvoiceMintingServiceStub(c)) for c in channels]


async def test_twenty_concurrent_claims_of_one_token_give_one_invoice(stack: StackUnderTest) -> None:
    async with minting_service(stack) as minting:
        await minting.register_merchant("m1", uscc(1))
        await minting.pay("m1", "p1", 1000)
        await minting.pay("m1", "p2", 2000)
        token = await minting.token("m1", "p1")
        clients = _stubs(minting, 20)
        try:
            outcomes = await asyncio.gather(*(_claim(stub, token, f"key-{i}") for i, (_, stub) in enumerate(clients)))
            numbers = [o for o in outcomes if o.isdigit()]
            assert len(numbers) == 1, outcomes
            assert sorted(o for o in outcomes if not o.isdigit()) == ["FAILED_PRECONDITION:ALREADY_CLAIMED"] * 19
            # Concurrent retries with ONE idempotency key all get the same invoice.
            token2 = await minting.token("m1", "p2")
            same = await asyncio.gather(*(_claim(stub, token2, "shared-key") for _, stub in clients))
            assert len(set(same)) == 1 and same[0].isdigit(), same
            assert {numbers[0], same[0]} == {f"{numbers[0][:5]}{n:015d}" for n in (1, 2)}
        finally:
            for channel, _ in clients:
                await channel.close()


async def test_thousand_concurrent_claims_across_hundred_merchants_are_gapless_per_region(
    stack: StackUnderTest,
) -> None:
    regions = ["44", "11", "31"]
    async with minting_service(stack) as minting:
        for m in range(100):
            await minting.register_merchant(f"m{m}", uscc(m + 1), region=regions[m % 3], wait=False)
        sends = [minting.pay(f"m{m}", f"m{m}-p{p}", 100 + m * 10 + p) for m in range(100) for p in range(10)]
        await asyncio.gather(*sends)
        conn = await asyncpg.connect(stack.database_url)
        try:
            deadline = time.monotonic() + 60
            while await conn.fetchval("SELECT count(*) FROM invoice_minting.claim_offers") < 1000:
                assert time.monotonic() < deadline, "offers not created in time"
                await asyncio.sleep(0.2)
            while await conn.fetchval("SELECT count(*) FROM invoice_minting.issuer_keys") < 100:
                assert time.monotonic() < deadline, "merchants not registered in time"
                await asyncio.sleep(0.2)
            tokens = await asyncio.gather(
                *(minting.token(f"m{m}", f"m{m}-p{p}") for m in range(100) for p in range(10))
            )
            clients = _stubs(minting, 10)
            try:
                outcomes = await asyncio.gather(
                    *(_claim(clients[i % 10][1], token, f"k{i}") for i, token in enumerate(tokens))
                )
            finally:
                for channel, _ in clients:
                    await channel.close()
            assert all(o.isdigit() for o in outcomes), [o for o in outcomes if not o.isdigit()][:5]
            assert len(set(outcomes)) == 1000
            by_region: dict[str, list[int]] = defaultdict(list)
            for number in outcomes:
                by_region[number[:4]].append(int(number[5:]))
            assert {key[2:] for key in by_region} == set(regions)
            for sequences in by_region.values():
                assert sorted(sequences) == list(range(1, len(sequences) + 1))
            counters = await conn.fetch("SELECT region_code, last_sequence FROM invoice_minting.invoice_counters")
            assert sorted((r["region_code"], r["last_sequence"]) for r in counters) == sorted(
                (key[2:], len(v)) for key, v in by_region.items()
            )
        finally:
            await conn.close()


async def test_two_replicas_share_one_token_and_one_sequence(stack: StackUnderTest) -> None:
    """Two service processes on one database: claims racing across them still give one invoice per token
    and gapless numbers (the database locks decide, not any in-process state)."""
    async with minting_service(stack) as first:
        second = await stack.start_service(
            "invoice_minting",
            **{k: v for k, v in first.service.env.items() if k.startswith("FAPIAO_") and k != "FAPIAO_GRPC_PORT"},
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{second.port}")
        try:
            stubs = [first.stub, api_grpc.InvoiceMintingServiceStub(channel)]
            await first.register_merchant("m1", uscc(1))
            await asyncio.gather(*(first.pay("m1", f"p{p}", 100 + p) for p in range(100)))
            tokens = await asyncio.gather(*(first.token("m1", f"p{p}") for p in range(100)))
            racing = await asyncio.gather(*(_claim(stubs[i % 2], tokens[0], f"key-{i}") for i in range(20)))
            assert sum(o.isdigit() for o in racing) == 1, racing
            rest = await asyncio.gather(*(_claim(stubs[i % 2], t, f"k{i}") for i, t in enumerate(tokens[1:])))
            numbers = [o for o in [*racing, *rest] if o.isdigit()]
            assert sorted(int(n[5:]) for n in numbers) == list(range(1, 101))
        finally:
            await channel.close()
            second.terminate()
