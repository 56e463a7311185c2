"""Four validator processes over the real broker and database: results, receipts, agreement."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import asyncpg
import grpc
import pytest
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2, ledger_service_pb2_grpc
from fapiao_runtime import tracing
from fapiao_runtime.errors import DeadlineExceeded, reason_of
from fapiao_runtime.invoice_ids import invoice_id_for_number
from fapiao_runtime.ledger_client import LedgerResultWaiter
from fapiao_runtime.ledger_trust import ReceiptInvalid, validator_keys_from_env, verify_receipt
from fapiao_stack.devnet import BUYER_TAX_ID, LedgerNetwork, T, cancel, count_final, issue, partial, reimburse, wait_for
from fapiao_stack.harness import StackUnderTest, read_envelopes
from fapiao_stack.procs import free_port
from google.protobuf.message import DecodeError
from ledger.publishing import result_publishers

pytestmark = pytest.mark.integration

S = ledger_pb2.InvoiceLedgerStatus


async def audit_chain(net: LedgerNetwork, validator: int, chain: int) -> ledger_service_pb2.AuditChainResponse:
    """AuditChain of `chain` as validator `validator` sees its own database."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{net.processes[validator].port}") as channel:
        response: ledger_service_pb2.AuditChainResponse = await ledger_service_pb2_grpc.LedgerServiceStub(
            channel
        ).AuditChain(ledger_service_pb2.AuditChainRequest(chain_id=chain))
        return response


async def _metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        return (await reader.read()).decode()
    finally:
        writer.close()


async def test_lifecycle_results_and_offline_receipts(stack: StackUnderTest) -> None:
    metrics_port = free_port()
    net = LedgerNetwork(
        stack,
        extra_env={"FAPIAO_LEDGER_CUT_MS": "20"},
        validator_overrides={1: {"FAPIAO_METRICS_PORT": str(metrics_port)}},
    )
    await net.start()
    waiter = LedgerResultWaiter(stack.kafka_bootstrap, stack.topic_prefix, client_id="test-waiter")
    await waiter.start()
    try:
        assert net.producer is not None
        inv = invoice_id_for_number("26440000000000000001")
        tx = issue(net.issuer, inv, "26440000000000000001", 10_000, buyer=BUYER_TAX_ID)
        result = await waiter.submit_and_wait(net.producer, tx, inv, timeout_s=30)
        assert result.accepted, result
        assert result.state.status == S.INVOICE_LEDGER_STATUS_ISSUED

        steps = [
            (reimburse(net.reimburser, T.TRANSACTION_TYPE_LOCK, inv, "91440300MAOTHER001"), "ORGANISATION_NOT_ALLOWED"),
            (reimburse(net.reimburser, T.TRANSACTION_TYPE_CLOSE, inv, BUYER_TAX_ID), "NOT_LOCKED"),
            (reimburse(net.reimburser, T.TRANSACTION_TYPE_LOCK, inv, BUYER_TAX_ID), ""),
            (reimburse(net.reimburser, T.TRANSACTION_TYPE_LOCK, inv, BUYER_TAX_ID), "ALREADY_LOCKED"),
            (partial(net.issuer, inv, 3_000), ""),
            (partial(net.issuer, inv, 8_000), "AMOUNT_EXCEEDED"),
            (reimburse(net.issuer, T.TRANSACTION_TYPE_CLOSE, inv, BUYER_TAX_ID), "SUBMITTER_NOT_AUTHORIZED"),
            (reimburse(net.reimburser, T.TRANSACTION_TYPE_CLOSE, inv, BUYER_TAX_ID), ""),
            (cancel(net.issuer, inv), "ALREADY_CLOSED"),
        ]
        for signed, reason in steps:
            got = await waiter.submit_and_wait(net.producer, signed, inv, timeout_s=30)
            assert got.rejection_reason == reason, (reason, got)
            assert (
                ledger_pb2.RejectionReason.Name(got.rejection_reason_code)
                == f"REJECTION_REASON_{reason or 'UNSPECIFIED'}"
            )
            assert got.accepted == (reason == "")

        # Both of the validator's own consumers report their lag (transactions and signatures).
        async def lag_reported() -> bool:
            text = await _metrics(metrics_port)
            return all(f'group="validator-1-{what}"' in text for what in ("tx", "sig"))

        await wait_for(lag_reported, 30, what="the validator's consumer lag on /metrics")
        with pytest.raises(DeadlineExceeded) as late:
            await waiter.wait(str(uuid.uuid4()), timeout_s=0.2)
        assert late.value.reason == "LEDGER_RESULT_TIMEOUT"
        # A retried submission gets the original outcome, not a new decision.
        again = await waiter.submit_and_wait(net.producer, steps[2][0], inv, timeout_s=30)
        assert again.accepted and again.height > 0

        # A transaction submitted in a request's trace: its result continues the trace, and the validators
        # log its rejection with the trace id.
        trace_id = uuid.uuid4().hex
        with tracing.continued_from(f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"):
            traced = await waiter.submit_and_wait(
                net.producer, reimburse(net.reimburser, T.TRANSACTION_TYPE_LOCK, inv, BUYER_TAX_ID), inv, timeout_s=30
            )
        assert traced.rejection_reason == "ALREADY_CLOSED"
        results = await read_envelopes(stack.kafka_bootstrap, stack.topic("ledger.results.v1"))
        copies = [e for e in results if e.aggregate_id == traced.transaction_id]
        assert copies and {tracing.trace_id_of(e.traceparent) for e in copies} == {trace_id}

        async def rejection_logged() -> bool:
            return all(
                any(trace_id in line and "transaction rejected" in line for line in p.log_text().splitlines())
                for p in net.processes.values()
            )

        await wait_for(rejection_logged, 30, what="every validator's log line of the traced rejection")

        keys = validator_keys_from_env(net.env)

        # Results come from the first validators to finalize; let every validator catch up.
        async def all_final() -> bool:
            return all([await count_final(stack.database_url, net.schema(i)) >= 11 for i in net.processes])

        await wait_for(all_final, 30, what="11 final transactions on every validator")
        for index in net.processes:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{net.processes[index].port}") as channel:
                stub = ledger_service_pb2_grpc.LedgerServiceStub(channel)
                reply = await stub.GetInvoiceState(ledger_service_pb2.GetInvoiceStateRequest(invoice_id=inv))
                assert reply.state.status == S.INVOICE_LEDGER_STATUS_CLOSED
                assert reply.state.reimbursable_fen == 7_000
                assert reply.state.lock_holder_tax_id == BUYER_TAX_ID
                final = verify_receipt(reply.receipt, keys)
                assert final.accepted and final.type == T.TRANSACTION_TYPE_CLOSE
                assert verify_receipt(reply.issue_receipt, keys).type == T.TRANSACTION_TYPE_ISSUE
                bare = await stub.GetInvoiceState(
                    ledger_service_pb2.GetInvoiceStateRequest(invoice_id=inv, state_only=True)
                )
                assert bare.state == reply.state
                assert not bare.HasField("receipt") and not bare.HasField("issue_receipt")
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.GetInvoiceState(ledger_service_pb2.GetInvoiceStateRequest(invoice_id="nope"))
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
                assert reason_of(missing.value) == "UNKNOWN_INVOICE"
                got = await stub.GetTransactionResult(
                    ledger_service_pb2.GetTransactionResultRequest(transaction_id=result.transaction_id)
                )
                assert verify_receipt(got.receipt, keys).transaction_id == result.transaction_id
                audit = await stub.AuditChain(ledger_service_pb2.AuditChainRequest(chain_id=result.chain_id))
                assert audit.ok and audit.blocks_checked >= 1, audit
                block = (
                    await stub.GetBlock(ledger_service_pb2.GetBlockRequest(chain_id=result.chain_id, height=1))
                ).block
                assert block.final and len(block.signatures) >= 3
                stream = stub.StreamBlocks(
                    ledger_service_pb2.StreamBlocksRequest(chain_id=result.chain_id, from_height=1)
                )
                streamed = [(await stream.read()).block for _ in range(2)]
                stream.cancel()
                assert [ledger_pb2.BlockHeader.FromString(b.header).height for b in streamed] == [1, 2]
                assert streamed[0].header == block.header and streamed[0].transactions == block.transactions

        # Any single changed byte of a receipt fails offline verification.
        receipt_bytes = reply.receipt.SerializeToString()
        for position in range(0, len(receipt_bytes), max(1, len(receipt_bytes) // 97)):
            tampered = bytearray(receipt_bytes)
            tampered[position] ^= 0x01
            try:
                broken = ledger_pb2.Receipt.FromString(bytes(tampered))
            except DecodeError:
                continue  # no longer a receipt at all: nothing to verify
            with pytest.raises(ReceiptInvalid):
                verify_receipt(broken, keys)
        # Fewer than quorum signatures is not enough.
        short = ledger_pb2.Receipt()
        short.CopyFrom(reply.receipt)
        del short.signatures[2:]
        with pytest.raises(ReceiptInvalid) as no_quorum:
            verify_receipt(short, keys)
        assert no_quorum.value.reason == "RECEIPT_NO_QUORUM"

        # All validators computed the same blocks.
        conn = await asyncpg.connect(stack.database_url)
        try:
            hashes = [
                await conn.fetch(f"SELECT chain_id, height, header_hash FROM {net.schema(i)}.blocks ORDER BY 1, 2")
                for i in net.processes
            ]
        finally:
            await conn.close()
        assert hashes[0] and all(h == hashes[0] for h in hashes)

        # The offline CLI verifies the receipt with only the validators' public keys.
        receipt_file = stack.tmp_path / "receipt.bin"
        receipt_file.write_bytes(receipt_bytes)
        env = {"PATH": "/usr/bin:/bin", "FAPIAO_LEDGER_VALIDATOR_KEYS": net.env["FAPIAO_LEDGER_VALIDATOR_KEYS"]}
        ok = subprocess.run([sys.executable, "-m", "ledger.verify", str(receipt_file)], env=env, capture_output=True)
        assert ok.returncode == 0, ok.stderr
        assert b'"verified": true' in ok.stdout
        receipt_file.write_bytes(receipt_bytes[:-1] + bytes([receipt_bytes[-1] ^ 0x01]))
        bad = subprocess.run([sys.executable, "-m", "ledger.verify", str(receipt_file)], env=env, capture_output=True)
        assert bad.returncode == 1 and b'"verified": false' in bad.stdout

        # Editing a stored transaction or header in one validator's database is named by AuditChain.
        chain = result.chain_id
        conn = await asyncpg.connect(stack.database_url)
        try:
            heights = [
                r["height"]
                for r in await conn.fetch(
                    "SELECT height FROM ledger_4.blocks WHERE chain_id = $1 ORDER BY height", chain
                )
            ]
            assert len(heights) >= 2
            edited_tx, edited_header = heights[0], heights[-1]
            await conn.execute(
                "UPDATE ledger_4.transactions SET tx_bytes = tx_bytes || '\\x00'::bytea"
                " WHERE chain_id = $1 AND height = $2 AND idx = 0",
                chain,
                edited_tx,
            )
            header = ledger_pb2.BlockHeader.FromString(
                await conn.fetchval(
                    "SELECT header FROM ledger_4.blocks WHERE chain_id = $1 AND height = $2", chain, edited_header
                )
            )
            header.cut_time.seconds += 1
            await conn.execute(
                "UPDATE ledger_4.blocks SET header = $3 WHERE chain_id = $1 AND height = $2",
                chain,
                edited_header,
                header.SerializeToString(),
            )
        finally:
            await conn.close()
        audit = await audit_chain(net, 4, chain)
        assert not audit.ok
        assert {f.height for f in audit.findings} == {edited_tx, edited_header}, audit.findings
        untouched = await audit_chain(net, 1, chain)
        assert untouched.ok

        # So is a key registration swapped for another in one validator's database: the registrations
        # the chain relied on are under the quorum-signed headers too.
        conn = await asyncpg.connect(stack.database_url)
        try:
            registered_at = await conn.fetchval(
                "SELECT min(height) FROM ledger_3.key_registrations WHERE chain_id = $1", chain
            )
            await conn.execute(
                "UPDATE ledger_3.key_registrations SET signed_bytes = signed_bytes || '\\x00'::bytea"
                " WHERE chain_id = $1 AND height = $2",
                chain,
                registered_at,
            )
        finally:
            await conn.close()
        swapped = await audit_chain(net, 3, chain)
        assert not swapped.ok
        assert any(f.height == registered_at and "registrations root" in f.problem for f in swapped.findings), (
            swapped.findings
        )
    finally:
        await waiter.stop()
        await net.stop()


async def test_a_clean_stop_marks_every_published_block(stack: StackUnderTest) -> None:
    # Marks wait for a batch (here up to ten minutes), so only the stop itself can write these.
    net = LedgerNetwork(stack, extra_env={"FAPIAO_LEDGER_CUT_MS": "20", "FAPIAO_LEDGER_MARK_PUBLISHED_MS": "600000"})
    await net.start()
    waiter = LedgerResultWaiter(stack.kafka_bootstrap, stack.topic_prefix, client_id="test-waiter")
    await waiter.start()
    try:
        assert net.producer is not None
        numbers = [f"2644000000000000{i:04d}" for i in range(8)]
        invoices = [(invoice_id_for_number(n), n) for n in numbers]
        results = await asyncio.gather(
            *(waiter.submit_and_wait(net.producer, issue(net.issuer, i, n), i, timeout_s=30) for i, n in invoices)
        )
        assert all(r.accepted for r in results)
        ids = {r.transaction_id for r in results}
        # Both publishers of each chain have published every result (two copies each).
        envelopes = await read_envelopes(stack.kafka_bootstrap, stack.topic("ledger.results.v1"), expected=2 * len(ids))
        assert sum(e.aggregate_id in ids for e in envelopes) == 2 * len(ids)
        union = " UNION ALL ".join(
            f"SELECT {i} AS v, chain_id, height, results_published FROM {net.schema(i)}.blocks WHERE final"
            for i in range(1, 5)
        )
        conn = await asyncpg.connect(stack.database_url)
        try:
            assert await conn.fetchval(f"SELECT count(*) FROM ({union}) AS b WHERE results_published") == 0
            for process in net.processes.values():
                process.terminate()  # SIGTERM: a clean stop
            rows = await conn.fetch(union)
        finally:
            await conn.close()
        ids_of = sorted(validator_keys_from_env(net.env))
        publishers = {c: result_publishers(ids_of, c) for c in {r["chain_id"] for r in rows}}
        for row in rows:
            publishes = f"validator-{row['v']}" in publishers[row["chain_id"]]
            assert row["results_published"] == publishes, dict(row)
    finally:
        await waiter.stop()
        await net.stop()
