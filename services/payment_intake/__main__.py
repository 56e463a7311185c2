"""Entry point: python -m payment_intake (skeleton: health and migrations only until the service lands)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.grpc_server import GrpcServer
from fapiao_runtime.service import ServiceContext, run_service


async def _wire(ctx: ServiceContext, server: GrpcServer) -> list:  # type: ignore[type-arg]
    return []


def main() -> None:
    config = RuntimeConfig.from_env("payment_intake", 50051)
    asyncio.run(
        run_service(
            config,
            service_names=["fapiao.payments.v1.PaymentIntakeService"],
            migrations=Path(__file__).parent / "migrations",
            wire=_wire,
        )
    )


if __name__ == "__main__":
    main()
