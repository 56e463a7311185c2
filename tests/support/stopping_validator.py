"""A LedgerService process that stops with calls in flight, as a validator process does when it exits
while answering: its clients get CANCELLED.

python -m tests.support.stopping_validator PORT ENTERED_FILE
Every GetInvoiceState waits (and touches ENTERED_FILE); on SIGTERM the process ends at once, without
draining the calls it holds.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import grpc
from fapiao.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from fapiao_runtime.grpc_server import GrpcServer


class _Waiting(ledger_service_pb2_grpc.LedgerServiceServicer):
    def __init__(self, entered: Path) -> None:
        self._entered = entered

    async def GetInvoiceState(
        self, request: ledger_service_pb2.GetInvoiceStateRequest, context: grpc.aio.ServicerContext
    ) -> ledger_service_pb2.GetInvoiceStateResponse:
        self._entered.touch()
        await asyncio.sleep(3600)
        return ledger_service_pb2.GetInvoiceStateResponse()


async def main(port: int, entered: Path) -> None:
    server = GrpcServer(["fapiao.ledger.v1.LedgerService"])
    server.add_servicer(ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, _Waiting(entered))
    await server.start("127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()  # then the event loop ends with the calls still in flight


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
    # The calls were cancelled with the event loop; their streams are reset (CANCELLED) before the
    # process closes its connections (which a client would see as UNAVAILABLE instead).
    time.sleep(1.0)
