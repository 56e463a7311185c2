"""A validator that stops in the middle of a call (its clients get CANCELLED) is failed over: the call
is asked of the next validator, or answered UNAVAILABLE when none is left, never INTERNAL. Both
callers of the validators share the one client (fapiao_runtime.ledger_client.ValidatorClient):
reimbursement's ledger adapter and the gateway's ledger client."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2, ledger_service_pb2_grpc
from fapiao_runtime.errors import Unavailable
from fapiao_runtime.grpc_server import GrpcServer
from fapiao_runtime.ledger_client import LedgerResultWaiter, SigningKey
from fapiao_stack.procs import free_port, spawn, stop_pid, wait_for_port
from gateway.backends import LedgerClient
from reimbursement.ledger_adapter import ValidatorLedger

pytestmark = pytest.mark.integration

NUMBER = "26440000000000000042"


class _Answering(ledger_service_pb2_grpc.LedgerServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def GetInvoiceState(
        self, request: ledger_service_pb2.GetInvoiceStateRequest, context: grpc.aio.ServicerContext
    ) -> ledger_service_pb2.GetInvoiceStateResponse:
        self.calls += 1
        return ledger_service_pb2.GetInvoiceStateResponse(
            state=ledger_pb2.InvoiceState(invoice_id="inv-42", invoice_number=request.invoice_number)
        )


@asynccontextmanager
async def _answering_validator() -> AsyncIterator[tuple[str, _Answering]]:
    servicer = _Answering()
    server = GrpcServer(["fapiao.ledger.v1.LedgerService"])
    server.add_servicer(ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, servicer)
    port = await server.start("127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(0)


@asynccontextmanager
async def _stopping_validator(tmp_path: Path) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]]]]:
    """A validator process; the callable waits until a call is in it, then stops the process (SIGTERM)."""
    port = free_port()
    entered = tmp_path / f"entered-{port}"
    proc = spawn(
        [sys.executable, "-m", "tests.support.stopping_validator", str(port), str(entered)],
        log_file=tmp_path / f"stopping-{port}.log",
    )
    await asyncio.to_thread(wait_for_port, port, 30, proc, "stopping validator")

    async def stop_mid_call() -> None:
        for _ in range(300):
            if entered.exists():
                break
            await asyncio.sleep(0.05)
        assert entered.exists(), "the call never reached the validator"
        proc.send_signal(signal.SIGTERM)

    try:
        yield f"127.0.0.1:{port}", stop_mid_call
    finally:
        stop_pid(proc.pid, timeout_s=5)
        proc.wait()


def _reimbursement_ledger(endpoints: list[str]) -> ValidatorLedger:
    return ValidatorLedger(
        endpoints,
        SigningKey.generate("reimbursement-test"),
        LedgerResultWaiter("127.0.0.1:9"),  # not started: invoice_state reads no results
        {},
        None,
        call_timeout_s=20.0,
    )


async def _during(call: Awaitable[Any], stop_mid_call: Callable[[], Awaitable[None]]) -> Any:
    pending = asyncio.ensure_future(call)
    await stop_mid_call()
    return await pending


async def test_reimbursement_asks_the_next_validator_when_one_stops_mid_call(tmp_path: Path) -> None:
    async with _stopping_validator(tmp_path) as (stopping, stop_mid_call), _answering_validator() as (answering, fake):
        ledger = _reimbursement_ledger([stopping, answering])  # the first call goes to the stopping one
        try:
            reply = await _during(ledger.invoice_state(NUMBER), stop_mid_call)
        finally:
            await ledger.close()
    assert reply is not None and reply.state.invoice_number == NUMBER
    assert fake.calls == 1


async def test_reimbursement_answers_unavailable_when_the_only_validator_stops_mid_call(tmp_path: Path) -> None:
    async with _stopping_validator(tmp_path) as (stopping, stop_mid_call):
        ledger = _reimbursement_ledger([stopping])
        try:
            with pytest.raises(Unavailable) as refused:
                await _during(ledger.invoice_state(NUMBER), stop_mid_call)
        finally:
            await ledger.close()
    assert refused.value.reason == "LEDGER_UNAVAILABLE"


async def test_the_gateway_asks_the_next_validator_when_one_stops_mid_call(tmp_path: Path) -> None:
    async with _stopping_validator(tmp_path) as (stopping, stop_mid_call), _answering_validator() as (answering, fake):
        client = LedgerClient((stopping, answering), timeout_s=20.0)
        try:
            reply = await _during(client.get_invoice_state(invoice_number=NUMBER), stop_mid_call)
        finally:
            await client.close()
    assert reply.state.invoice_number == NUMBER
    assert fake.calls == 1
