"""Acceptance against the real service process, real validators, real mutual TLS: security cases,
idempotency after a client-side timeout, forged and cancelled invoices through VerifyInvoice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import pytest
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.errors import reason_of
from fapiao_stack.devstack import RealStack
from fapiao_stack.harness import StackUnderTest

from tests.reimbursement.support import Pki, new_tax_id

pytestmark = pytest.mark.e2e


async def _lock(real: RealStack, tax_id: str | None, number: str, key: str, **kw: object) -> rpb.LockInvoiceResponse:
    other_ca = bool(kw.pop("other_ca", False))
    async with real.channel(tax_id, other_ca=other_ca) as channel:
        return await real.pki.stub(channel).LockInvoice(
            rpb.LockInvoiceRequest(invoice_number=number, idempotency_key=key), timeout=kw.pop("timeout", 30)
        )


async def _error(coro: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coro  # type: ignore[misc]
    return caught.value


def _cli(real: RealStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = real.stack.env(FAPIAO_DB_SCHEMA="reimbursement")
    return subprocess.run(
        [sys.executable, "-m", "reimbursement.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_security_idempotency_and_verification_end_to_end(stack: StackUnderTest, pki: Pki) -> None:
    real = RealStack(stack, pki)
    await real.start()
    try:
        buyer, other, revoked = new_tax_id(), new_tax_id(), new_tax_id()
        for org in (buyer, other, revoked):
            done = _cli(real, "org", "add", "--tax-id", org, "--name", f"Org {org[-4:]}")
            assert done.returncode == 0, done.stderr
        company, personal, slow = await real.issue([buyer, None, buyer])

        # -- security ------------------------------------------------------------------------------
        assert (await _error(_lock(real, None, personal, "k"))).code() == grpc.StatusCode.UNAVAILABLE
        assert (await _error(_lock(real, buyer, personal, "k", other_ca=True))).code() == grpc.StatusCode.UNAVAILABLE
        done = _cli(real, "org", "revoke", "--tax-id", revoked)
        assert done.returncode == 0, done.stderr
        error = await _error(_lock(real, revoked, personal, "k"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and reason_of(error) == "ORGANISATION_REVOKED"
        error = await _error(_lock(real, new_tax_id(), personal, "k"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and reason_of(error) == "UNKNOWN_ORGANISATION"
        error = await _error(_lock(real, other, company, "k"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and reason_of(error) == "NOT_INVOICE_BUYER"
        locked = await _lock(real, buyer, company, "lock-company")
        assert locked.outcome.status == rpb.REIMBURSEMENT_STATUS_LOCKED
        async with real.channel(other) as channel:
            stub = pki.stub(channel)
            for call in (
                stub.UnlockInvoice(rpb.UnlockInvoiceRequest(invoice_number=company, idempotency_key="u")),
                stub.CloseInvoice(rpb.CloseInvoiceRequest(invoice_number=company, idempotency_key="c")),
            ):
                error = await _error(call)
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED and reason_of(error) == "NOT_LOCK_HOLDER"

        # -- idempotency after a client-side timeout --------------------------------------------
        # Two of four validators stop: no quorum, so no block becomes final and no outcome is known.
        stopped = [real.net.processes[3], real.net.processes[4]]
        for process in stopped:
            os.kill(process.proc.pid, signal.SIGSTOP)  # type: ignore[attr-defined]
        try:
            error = await _error(_lock(real, buyer, slow, "lock-slow", timeout=3))
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            for process in stopped:
                os.kill(process.proc.pid, signal.SIGCONT)  # type: ignore[attr-defined]
        retried = await _lock(real, buyer, slow, "lock-slow", timeout=60)
        assert retried.outcome.status == rpb.REIMBURSEMENT_STATUS_LOCKED
        again = await _lock(real, buyer, slow, "lock-slow")
        assert again.outcome.transaction_id == retried.outcome.transaction_id
        assert real.pool is not None
        count = await real.pool.fetchval(
            "SELECT count(*) FROM reimbursement_transactions WHERE invoice_number = $1", slow
        )
        assert count == 1, "the retry reused the transaction id persisted before the timeout"

        # -- VerifyInvoice: genuine, forged, cancelled ----------------------------------------------
        (forged,) = await real.issue([buyer], forge=True)  # the ledger accepts it: it checks submitters
        (cancelled,) = await real.issue([buyer])
        await real.cancel(cancelled)
        async with real.channel(buyer) as channel:
            stub = pki.stub(channel)

            async def verify(number: str) -> rpb.VerifyInvoiceResponse:
                return await stub.VerifyInvoice(
                    rpb.VerifyInvoiceRequest(invoice_number=number, issue_date="20261124", total_fen=11_200),
                    timeout=30,
                )

            genuine = await verify(company)
            assert genuine.genuine and genuine.status == rpb.REIMBURSEMENT_STATUS_LOCKED, genuine
            bad = await verify(forged)
            assert not bad.genuine and bad.problem == "BAD_ISSUER_SIGNATURE", bad
            gone = await verify(cancelled)
            assert gone.status == rpb.REIMBURSEMENT_STATUS_CANCELLED and gone.reimbursable_fen == 0, gone
    finally:
        await real.stop()
