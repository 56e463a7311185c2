"""Real data on the stack under test, so every mutated request starts from one the stack accepts.

A merchant and a company register; the payment platform pays five orders; one invoice is claimed on
the claim page (which yields a view token), one over gRPC; the ledger commits both; the company
locks and unlocks one (so reimbursement lists have a page token). Identities (merchant id, tax ids,
transaction ids) derive from the run's seed, so the same seed on a fresh stack sends the same inputs;
what the stack assigns itself (claim tokens, invoice numbers, view tokens) differs.

Imported only after the fuzzer has set FAPIAO_RUN_DIR and FAPIAO_PORT_OFFSET (fapiao_stack reads
them at import).
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import urllib.parse
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.fuzz.http_requests import FORM, HttpRequest, exchange, form_body

SEED_ORDERS = 5


@dataclass
class Payment:
    transaction_id: str
    out_trade_no: str
    payment_id: str
    amount_fen: int
    claim_token: str = ""


@dataclass
class Invoice:
    invoice_id: str
    number: str
    issue_date: str
    total_fen: int
    verification_qr: str
    chain_id: int
    height: int


@dataclass
class Seeds:
    merchant_id: str
    merchant_tax_id: str
    org_tax_id: str
    org_name: str
    stranger_tax_id: str  # a certificate from the CA for an organisation that never registered
    payments: list[Payment] = field(default_factory=list)
    invoices: list[Invoice] = field(default_factory=list)
    view_token: str = ""
    ledger_transaction_id: str = ""
    minting_page_token: str = ""
    reimbursement_page_token: str = ""
    tokens: dict[str, str] = field(default_factory=dict)  # claimed / page / grpc

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _tax_id(body17: str) -> str:
    from fapiao_runtime.tax_id import uscc_check_char

    return body17 + uscc_check_char(body17)


def identities(seed: int) -> tuple[str, str, str, str]:
    """Merchant id, merchant tax id, company tax id and a stranger's tax id for `seed`."""
    rng = random.Random(f"identities:{seed}")
    digits = f"{rng.randrange(10**5):05d}"
    return (
        f"19{rng.randrange(10**8):08d}",
        _tax_id(f"91440300MA5F{digits}"),
        _tax_id(f"91440300MA5A{digits}"),
        _tax_id(f"91440300MA5B{digits}"),
    )


async def _claim_on_page(gateway_port: int, token: str, name: str, tax_id: str) -> str:
    """Claim through the gateway's page, as a phone does; returns the view token of the invoice page."""
    page = await exchange("127.0.0.1", gateway_port, HttpRequest("GET", f"/claim/{token}"), 10)
    match = re.search(rb'name="idempotency_key" value="([^"]+)"', page.body)
    if page.status != 200 or match is None:
        raise RuntimeError(f"claim page did not render: {page.status} {page.body[:200]!r}")
    fields = [("buyer_kind", "company"), ("name", name), ("tax_id", tax_id), ("idempotency_key", match[1].decode())]
    posted = await exchange(
        "127.0.0.1",
        gateway_port,
        HttpRequest("POST", f"/claim/{token}", [(b"Content-Type", FORM)], form_body(fields)),
        15,
    )
    location = posted.headers.get("location", "")
    if posted.status != 303 or not location.startswith("/invoice/"):
        raise RuntimeError(f"claim was refused: {posted.status} {posted.body[:300]!r}")
    return urllib.parse.unquote(location.removeprefix("/invoice/"))


def invoice_id_of_view_token(view_token: str) -> str:
    payload = view_token.split(".", 1)[0]
    text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    return text.rpartition("|")[0]


async def create(seed: int, gateway_port: int) -> Seeds:
    import aiohttp
    from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_api
    from fapiao.invoicing.v1 import invoice_pb2
    from fapiao.ledger.v1 import ledger_service_pb2
    from fapiao.reimbursement.v1 import reimbursement_service_pb2 as reimb
    from fapiao_cli import clients
    from fapiao_cli.commands.claim import claim_invoice, wait_until_committed
    from fapiao_cli.commands.merchant import register_merchant
    from fapiao_cli.local import PKI_DIR, gateway_url, load_stack_environment
    from fapiao_cli.platform import PaymentPlatform
    from fapiao_runtime.pki import issue_organisation_certificate, read_pem_pair, write_pem_pair
    from reimbursement import cli as reimbursement_cli

    load_stack_environment()
    merchant_id, merchant_tax, org_tax, stranger_tax = identities(seed)
    seeds = Seeds(merchant_id, merchant_tax, org_tax, "深圳模糊测试科技有限公司", stranger_tax)
    await asyncio.to_thread(register_merchant, merchant_id, "深圳模糊测试餐饮有限公司", merchant_tax, "44")
    code = await asyncio.to_thread(
        reimbursement_cli.main, ["org", "add", "--tax-id", org_tax, "--name", seeds.org_name]
    )
    if code != 0:
        raise RuntimeError("registering the company failed")
    ca = read_pem_pair(PKI_DIR, "ca")
    for tax_id, name in ((org_tax, seeds.org_name), (stranger_tax, "未注册公司")):
        if not (PKI_DIR / f"org-{tax_id}.crt").exists():
            write_pem_pair(issue_organisation_certificate(ca, tax_id, name), PKI_DIR, f"org-{tax_id}")

    rng = random.Random(f"orders:{seed}")
    platform = PaymentPlatform.for_merchant(merchant_id, gateway_url())
    amounts = [12345, 5000, 1_000_000, 2000, 3000][:SEED_ORDERS]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        paid = await asyncio.gather(
            *[
                platform.pay(
                    session,
                    amount,
                    transaction_id=f"4200{rng.randrange(16**24):024x}",
                    out_trade_no=f"fuzz-{seed}-{i}",
                )
                for i, amount in enumerate(amounts)
            ]
        )
    for outcome in paid:
        if not outcome.accepted:
            raise RuntimeError(f"a seed payment was refused: {outcome.status} {outcome.answer}")

    async def offer_of(outcome: Any, amount: int) -> Payment:
        payment = (await clients.payment_of(merchant_id, outcome.transaction_id)).payment
        offer = await clients.wait_for_claim_offer(merchant_id, payment.payment_id)
        token = clients.claim_token_of(offer.claim_url)
        return Payment(outcome.transaction_id, outcome.out_trade_no, payment.payment_id, amount, token)

    seeds.payments = list(await asyncio.gather(*[offer_of(o, a) for o, a in zip(paid, amounts, strict=True)]))
    seeds.tokens = {
        "claimed": seeds.payments[0].claim_token,
        "page": seeds.payments[3].claim_token,
        "grpc": seeds.payments[4].claim_token,
    }

    seeds.view_token = await _claim_on_page(gateway_port, seeds.payments[0].claim_token, seeds.org_name, org_tax)
    first_id = invoice_id_of_view_token(seeds.view_token)
    person = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="张三")
    second = await claim_invoice(seeds.payments[1].claim_token, person)
    for invoice_id in (first_id, second.body.invoice_id):
        invoice = await wait_until_committed(invoice_id, 30)
        if invoice.status != invoice_pb2.INVOICE_STATUS_ISSUED:
            raise RuntimeError(f"seed invoice {invoice_id} was not issued: {invoice.status}")
        body = invoice.body
        seeds.invoices.append(
            Invoice(
                body.invoice_id,
                body.invoice_number,
                body.issue_date,
                body.total_fen,
                body.verification_qr,
                invoice.ledger_chain_id,
                invoice.ledger_height,
            )
        )

    ledger = clients.ledgers()[0]
    for _ in range(60):
        state = await ledger.GetInvoiceState(
            ledger_service_pb2.GetInvoiceStateRequest(invoice_number=seeds.invoices[0].number, state_only=True),
            timeout=5,
        )
        if state.state.last_transaction_id:
            seeds.ledger_transaction_id = state.state.last_transaction_id
            break
        await asyncio.sleep(0.5)
    listed = await clients.minting().ListInvoices(
        minting_api.ListInvoicesRequest(merchant_id=merchant_id, page_size=1), timeout=5
    )
    seeds.minting_page_token = listed.next_page_token

    company = clients.reimbursement_for(org_tax)
    number = seeds.invoices[0].number
    await company.LockInvoice(
        reimb.LockInvoiceRequest(invoice_number=number, idempotency_key=str(uuid.uuid4())), timeout=20
    )
    await company.UnlockInvoice(
        reimb.UnlockInvoiceRequest(invoice_number=number, idempotency_key=str(uuid.uuid4())), timeout=20
    )
    page = await company.ListReimbursements(reimb.ListReimbursementsRequest(page_size=1), timeout=10)
    seeds.reimbursement_page_token = page.next_page_token
    return seeds


def pki_dir() -> Path:
    from fapiao_cli.local import PKI_DIR

    return PKI_DIR
