"""In-process stand-ins for invoice_minting, the ledger validators and payment_intake's webhook.

They implement the real gRPC servicer interfaces on the real runtime GrpcServer (so errors travel as
"REASON: message" exactly as from the services), with canned-but-consistent data from LedgerWorld.
Used for fast gateway tests; the real-stack test runs the same pages against the real services.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass, field

from aiohttp import web
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_pb2
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as minting_grpc
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_service_pb2_grpc
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from fapiao_runtime.grpc_server import GrpcServer
from fapiao_runtime.tax_id import uscc_check_char, validate_uscc

from tests.gateway.ledger_world import LedgerWorld


def uscc(first17: str) -> str:
    return first17 + uscc_check_char(first17)


SELLER = invoice_pb2.Party(
    kind=invoice_pb2.PARTY_KIND_COMPANY, name="Shenzhen Teahouse Ltd", tax_id=uscc("91440300MA5FX1B81")
)
RATE_BP = 600


@dataclass
class Offer:
    token: str
    merchant_id: str
    items: list[payments_pb2.PaymentItem]
    expired: bool = False
    claimed_by_key: str = ""
    invoice_id: str = ""

    @property
    def amount_fen(self) -> int:
        return sum(item.amount_fen for item in self.items)


@dataclass
class FakeMinting(minting_grpc.InvoiceMintingServiceServicer):
    world: LedgerWorld
    issue_delay_s: float = 0.6
    offers: dict[str, Offer] = field(default_factory=dict)
    invoices: dict[str, invoice_pb2.Invoice] = field(default_factory=dict)
    claim_calls: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def add_offer(
        self, token: str, items: list[tuple[str, int, int]], *, merchant_id: str = "m1", expired: bool = False
    ) -> Offer:
        offer = Offer(
            token,
            merchant_id,
            [
                payments_pb2.PaymentItem(
                    tax_classification_code="3070401000000000000",
                    name=name,
                    quantity=qty,
                    unit_price_fen=price,
                    amount_fen=qty * price,
                    tax_rate_bp=RATE_BP,
                )
                for name, qty, price in items
            ],
            expired=expired,
        )
        self.offers[token] = offer
        return offer

    def _offer(self, token: str) -> Offer:
        offer = self.offers.get(token)
        if offer is None:
            raise NotFound("UNKNOWN_TOKEN", "no offer for this claim token")
        if offer.expired:
            raise FailedPrecondition("TOKEN_EXPIRED", "the claim token has expired")
        return offer

    async def GetClaimOffer(self, request, context):
        offer = self._offer(request.claim_token)
        paid_at = dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC)
        message = minting_pb2.ClaimOffer(
            merchant_id=offer.merchant_id,
            merchant_name=SELLER.name,
            amount_fen=offer.amount_fen,
            items=offer.items,
            claimed=bool(offer.claimed_by_key),
            payment_id=f"pay-{offer.token}",
        )
        message.paid_at.FromDatetime(paid_at)
        message.expires_at.FromDatetime(paid_at + dt.timedelta(days=30))
        return minting_pb2.GetClaimOfferResponse(offer=message)

    async def ClaimInvoice(self, request, context):
        self.claim_calls += 1
        async with self._lock:
            offer = self._offer(request.claim_token)
            if offer.claimed_by_key:
                if offer.claimed_by_key == request.idempotency_key:
                    return minting_pb2.ClaimInvoiceResponse(invoice=self.invoices[offer.invoice_id])
                raise FailedPrecondition("ALREADY_CLAIMED", "this offer has already been claimed")
            buyer = request.buyer
            if buyer.kind not in (invoice_pb2.PARTY_KIND_PERSON, invoice_pb2.PARTY_KIND_COMPANY):
                raise InvalidArgument("INVALID_BUYER_KIND", "buyer kind must be PERSON or COMPANY")
            name = buyer.name.strip()
            if not name:
                raise InvalidArgument("NAME_REQUIRED", "buyer name is required")
            if len(name) > 100:
                raise InvalidArgument("NAME_TOO_LONG", "buyer name has more than 100 characters")
            tax_id = buyer.tax_id.strip()
            if buyer.kind == invoice_pb2.PARTY_KIND_COMPANY and not tax_id:
                raise InvalidArgument("INVALID_TAX_ID", "a company buyer needs its unified social credit code")
            if tax_id:
                tax_id = validate_uscc(tax_id)
            lines = []
            for item in offer.items:
                # Tax from the tax-inclusive amount, rounded half up per line.
                amount = (item.amount_fen * 10_000 * 2 + (10_000 + item.tax_rate_bp)) // (
                    2 * (10_000 + item.tax_rate_bp)
                )
                lines.append(
                    invoice_pb2.InvoiceLine(
                        tax_classification_code=item.tax_classification_code,
                        name=item.name,
                        quantity=item.quantity,
                        unit_price_fen=item.unit_price_fen,
                        amount_fen=amount,
                        tax_rate_bp=item.tax_rate_bp,
                        tax_fen=item.amount_fen - amount,
                        total_fen=item.amount_fen,
                    )
                )
            invoice = self.world.build_invoice(
                merchant_id=offer.merchant_id,
                seller=SELLER,
                buyer=invoice_pb2.Party(kind=buyer.kind, name=name, tax_id=tax_id),
                lines=lines,
                issue_date="20261124",
            )
            offer.claimed_by_key = request.idempotency_key
            offer.invoice_id = invoice.body.invoice_id
            self.invoices[offer.invoice_id] = invoice
            task = asyncio.ensure_future(self._issue_later(offer.invoice_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return minting_pb2.ClaimInvoiceResponse(invoice=invoice)

    async def _issue_later(self, invoice_id: str) -> None:
        await asyncio.sleep(self.issue_delay_s)
        invoice = self.invoices[invoice_id]
        self.world.issue(invoice)
        issued = invoice_pb2.Invoice()
        issued.CopyFrom(invoice)
        issued.status = invoice_pb2.INVOICE_STATUS_ISSUED
        issued.ledger_height = self.world.heights[0]
        self.invoices[invoice_id] = issued

    async def until_issued(self, invoice_id: str, timeout_s: float = 10.0) -> invoice_pb2.Invoice:
        """The invoice once the (fake) ledger has issued it; fails the test after `timeout_s`."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.invoices[invoice_id].status != invoice_pb2.INVOICE_STATUS_ISSUED:
            assert asyncio.get_running_loop().time() < deadline, f"invoice {invoice_id} not issued"
            await asyncio.sleep(0.1)
        return self.invoices[invoice_id]

    async def GetInvoice(self, request, context):
        invoice = self.invoices.get(request.invoice_id)
        if invoice is None:
            raise NotFound("UNKNOWN_INVOICE", "no such invoice")
        return minting_pb2.GetInvoiceResponse(invoice=invoice)

    async def ListIssuerKeys(self, request, context):
        keys = self.world.issuer_keys.get(request.merchant_id, [])
        return minting_pb2.ListIssuerKeysResponse(
            keys=[
                minting_pb2.IssuerKey(
                    key_id=key.key_id,
                    merchant_id=request.merchant_id,
                    public_key=key.public_raw,
                    active=index == len(keys) - 1,
                )
                for index, key in enumerate(keys)
            ]
        )


@dataclass
class FakeLedger(ledger_service_pb2_grpc.LedgerServiceServicer):
    world: LedgerWorld
    calls: int = 0

    async def GetInvoiceState(self, request, context):
        self.calls += 1
        answer = self.world.state_response(invoice_id=request.invoice_id, invoice_number=request.invoice_number)
        if answer is None:
            raise NotFound("UNKNOWN_INVOICE", "no such invoice on this chain")
        return answer


@dataclass
class FakeIntake:
    """payment_intake's webhook: records what arrived, answers what the test asks for."""

    received: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    status: int = 200
    body: dict[str, str] = field(default_factory=lambda: {"code": "SUCCESS", "message": "ok"})
    delay_s: float = 0.0

    async def notify(self, request: web.Request) -> web.Response:
        self.received.append((request.match_info["merchant_id"], await request.read(), dict(request.headers)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(text=json.dumps(self.body), status=self.status, content_type="application/json")


@dataclass
class FakeBackends:
    world: LedgerWorld
    minting: FakeMinting
    ledger: FakeLedger
    intake: FakeIntake
    minting_port: int
    ledger_ports: list[int]
    intake_url: str
    _servers: list[GrpcServer]
    _runner: web.AppRunner

    async def stop(self) -> None:
        for server in self._servers:
            await server.stop(0.1)
        await self._runner.cleanup()


async def start_fake_backends(validators_up: int = 2) -> FakeBackends:
    """Minting, `validators_up` ledger endpoints (same world) and the intake webhook, on free ports."""
    world = LedgerWorld()
    minting = FakeMinting(world)
    ledger = FakeLedger(world)
    servers = []
    minting_server = GrpcServer(["fapiao.invoicing.v1.InvoiceMintingService"])
    minting_server.add_servicer(minting_grpc.add_InvoiceMintingServiceServicer_to_server, minting)
    minting_port = await minting_server.start("127.0.0.1", 0)
    servers.append(minting_server)
    ledger_ports = []
    for _ in range(validators_up):
        server = GrpcServer(["fapiao.ledger.v1.LedgerService"])
        server.add_servicer(ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, ledger)
        ledger_ports.append(await server.start("127.0.0.1", 0))
        servers.append(server)
    intake = FakeIntake()
    app = web.Application()
    app.router.add_post("/v1/notify/wechatpay/{merchant_id}", intake.notify)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return FakeBackends(
        world, minting, ledger, intake, minting_port, ledger_ports, f"http://127.0.0.1:{port}", servers, runner
    )
