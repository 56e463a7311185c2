"""Entry point: python -m ledger — one validator (see docs/ledger.md for its environment)."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path

from fapiao.ledger.v1 import ledger_service_pb2_grpc
from fapiao_runtime import event_loop
from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.grpc_server import GrpcServer
from fapiao_runtime.service import ServiceContext, Task, run_service

from ledger.grpc_api import LedgerServicer
from ledger.settings import LedgerSettings
from ledger.validator import Validator

SERVICE_NAME = "fapiao.ledger.v1.LedgerService"


def main() -> None:
    settings = LedgerSettings.from_env()
    config = RuntimeConfig.from_env("ledger", 50061, db_schema=settings.validator_id.replace("-", "_"))

    async def wire(ctx: ServiceContext, server: GrpcServer) -> list[Awaitable[None] | Task]:
        validator = Validator(ctx.config, settings, ctx.pool, ctx.producer)
        ctx.ready = validator.loaded  # SERVING once its chains are loaded from the database
        server.add_servicer(ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, LedgerServicer(validator))
        # After a lost database or broker the validator starts over from its store (Validator.run).
        return [Task("validator", lambda: validator.run(ctx.stop))]

    event_loop.run(
        run_service(
            config,
            service_names=[SERVICE_NAME],
            migrations=Path(__file__).parent / "migrations",
            wire=wire,
            producer_linger_ms=0,  # markers, signatures and results are latency hops (new_producer)
        )
    )


if __name__ == "__main__":
    main()
