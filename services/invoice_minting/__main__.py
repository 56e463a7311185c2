"""Entry point: python -m invoice_minting (wires settings, store, handlers, the gRPC API and the consumers).

Environment (besides the shared FAPIAO_* runtime settings): FAPIAO_SECRETS_KEY (32 bytes, hex or
base64; FAPIAO_DEV_MODE=1 generates one into FAPIAO_DEV_STATE_DIR), FAPIAO_LEDGER_AUTHORITY_KEY_FILE
(PEM Ed25519 key that signs issuer key registrations) and FAPIAO_LEDGER_AUTHORITY_KEY_ID,
FAPIAO_CLAIM_BASE_URL, FAPIAO_CLAIM_OFFER_TTL_S, FAPIAO_INVOICE_CHANNEL; see settings.py.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from pathlib import Path

from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as api_grpc
from fapiao_runtime import event_loop
from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.consumer import EventConsumer
from fapiao_runtime.grpc_server import GrpcServer
from fapiao_runtime.kafka import BATCHED_FETCH
from fapiao_runtime.ledger_client import SigningKey
from fapiao_runtime.service import ServiceContext, Task, run_service
from fapiao_runtime.topics import LEDGER_RESULTS, MERCHANTS, PAYMENTS

from invoice_minting.claims import ClaimPipeline
from invoice_minting.deps import MintingDeps
from invoice_minting.events import on_merchant_event, on_payment_event, on_payment_events, on_result, on_results
from invoice_minting.grpc_api import SERVICE_NAME, InvoiceMintingServicer
from invoice_minting.handlers import MintingHandlers
from invoice_minting.issuer_keys import IssuerKeys
from invoice_minting.offer_waiter import OfferWaiter
from invoice_minting.secrets_box import SecretsBox, load_secrets_key, previous_keys_from_env
from invoice_minting.settings import MintingSettings
from invoice_minting.store import UnitOfWork

MIGRATIONS = Path(__file__).parent / "migrations"


def build_deps(settings: MintingSettings, producer: str) -> MintingDeps:
    """Load the secrets key and the registry authority key. Raises RuntimeError/ValueError when missing."""
    key = load_secrets_key(settings.secrets_key_text, settings.dev_mode, settings.dev_state_dir)
    box = SecretsBox(key, previous_keys_from_env())
    if not settings.authority_key_file:
        raise RuntimeError("FAPIAO_LEDGER_AUTHORITY_KEY_FILE is required (issuer keys must be registered)")
    authority = SigningKey.from_pem(settings.authority_key_id, Path(settings.authority_key_file).read_bytes())
    keys = IssuerKeys(box, authority, settings.ledger_partitions, producer)
    return MintingDeps(settings=settings, keys=keys, box=box, producer=producer)


def make_wiring(settings: MintingSettings):  # type: ignore[no-untyped-def]
    async def wire(ctx: ServiceContext, server: GrpcServer) -> list[Awaitable[None] | Task]:
        cfg = ctx.config
        deps = build_deps(settings, cfg.service_name)
        uow = UnitOfWork(ctx.pool)
        claims = ClaimPipeline(uow, deps)
        offers = OfferWaiter(cfg.database_url)
        handlers = MintingHandlers(uow, deps, claims, offers)
        server.add_servicer(api_grpc.add_InvoiceMintingServiceServicer_to_server, InvoiceMintingServicer(handlers))

        async def merchant_handler(conn, envelope):  # type: ignore[no-untyped-def]
            await on_merchant_event(conn, envelope, deps)

        async def payment_handler(conn, envelope):  # type: ignore[no-untyped-def]
            await on_payment_event(conn, envelope, deps)

        async def payment_batch_handler(conn, envelopes):  # type: ignore[no-untyped-def]
            await on_payment_events(conn, envelopes, deps)

        async def result_handler(conn, envelope):  # type: ignore[no-untyped-def]
            await on_result(conn, envelope, deps.producer)

        async def result_batch_handler(conn, envelopes):  # type: ignore[no-untyped-def]
            await on_results(conn, envelopes, deps.producer)

        # Several members of one consumer group: each takes some payment partitions, so offers are
        # created in parallel transactions while each partition (one merchant's order) stays ordered.
        payment_consumers = [
            EventConsumer(
                bootstrap=cfg.kafka_bootstrap,
                topics=[cfg.topic(PAYMENTS.name)],
                group_id=f"{cfg.service_name}.payments",
                pool=ctx.pool,
                handler=payment_handler,
                batch_handler=payment_batch_handler,
                consumer_name=f"{cfg.service_name}.payments",
            )
            for _ in range(settings.payment_consumers)
        ]
        consumers = [
            EventConsumer(
                bootstrap=cfg.kafka_bootstrap,
                topics=[cfg.topic(MERCHANTS.name)],
                group_id=f"{cfg.service_name}.merchants",
                pool=ctx.pool,
                handler=merchant_handler,
            ),
            *payment_consumers,
            EventConsumer(
                bootstrap=cfg.kafka_bootstrap,
                topics=[cfg.topic(LEDGER_RESULTS.name)],
                group_id=f"{cfg.service_name}.ledger_results",
                pool=ctx.pool,
                handler=result_handler,
                batch_handler=result_batch_handler,
                # Bookkeeping (an invoice's ledger status): callers awaiting a result read the topic.
                fetch=BATCHED_FETCH,
            ),
        ]
        ctx.consumers.extend(consumers)
        return [
            claims.run(ctx.stop),  # its workers answer each claim, failed or not, and never end
            offers.run(ctx.stop),  # reconnects by itself
            *(Task(f"consumer {c.name}", functools.partial(c.run, ctx.stop)) for c in consumers),
        ]

    return wire


def main() -> None:
    config = RuntimeConfig.from_env("invoice_minting", 50052)
    settings = MintingSettings.from_env()
    event_loop.run(run_service(config, service_names=[SERVICE_NAME], migrations=MIGRATIONS, wire=make_wiring(settings)))


if __name__ == "__main__":
    main()
