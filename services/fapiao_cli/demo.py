"""The main job end to end: `make demo` / `fapiao demo`.

Starts the real stack, walks one story and checks every promise on the way: a merchant and two
companies register, the payment platform posts a signed and encrypted notification, the consumer claims
the invoice from the QR code, the ledger commits it with a quorum, the receipt verifies offline, the
wrong company cannot lock it, the right one locks and closes it once, and a refunded payment becomes a
red-letter invoice. Exit code 0 only if every step behaved as promised; the stack is stopped at the end
unless --keep-running.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as reimb
from fapiao_runtime.errors import reason_of
from fapiao_runtime.ledger_trust import ReceiptInvalid, quorum_for, validator_keys_from_env, verify_receipt
from fapiao_runtime.pki import issue_organisation_certificate, read_pem_pair, write_pem_pair
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_stack import stack
from fapiao_stack.paths import REPO_ROOT

from fapiao_cli import clients
from fapiao_cli.commands.claim import claim_invoice, wait_until_committed
from fapiao_cli.commands.merchant import register_merchant
from fapiao_cli.commands.org import register_organisation
from fapiao_cli.commands.verify import verify_invoice_receipts
from fapiao_cli.local import PKI_DIR, gateway_url, load_stack_environment
from fapiao_cli.platform import PaymentPlatform

DEMO_DIR = REPO_ROOT / "build" / "demo"


class StoryFailed(Exception):
    """A promise was not kept."""


def _tax_id(body17: str) -> str:
    return body17 + uscc_check_char(body17)


def _yuan(fen: int) -> str:
    return f"¥{fen // 100}.{fen % 100:02d}"


class Story:
    def __init__(self) -> None:
        self.step = 0
        self.failures: list[str] = []
        self.run_id = secrets.token_hex(3)

    def title(self, text: str) -> None:
        self.step += 1
        print(f"\n== {self.step}. {text}", flush=True)

    def say(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def check(self, ok: bool, promise: str) -> None:
        print(f"   [{'ok' if ok else 'BROKEN'}] {promise}", flush=True)
        if not ok:
            self.failures.append(promise)
            raise StoryFailed(promise)


async def _eventually(probe: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await probe():
            return True
        await asyncio.sleep(0.25)
    return False


async def _ledger_states(invoice_number: str) -> list[ledger_service_pb2.GetInvoiceStateResponse]:
    replies = []
    for stub in clients.ledgers():
        replies.append(
            await stub.GetInvoiceState(
                ledger_service_pb2.GetInvoiceStateRequest(invoice_number=invoice_number), timeout=5
            )
        )
    return replies


async def _status_everywhere(invoice_number: str, status: int) -> bool:
    """True once every validator serves a quorum-verified receipt whose result leaves the invoice in `status`.

    The executed state changes before its block is final; the receipt only once it is, so waiting on the
    receipt means waiting for finality.
    """
    keys = validator_keys_from_env()
    try:
        replies = await _ledger_states(invoice_number)
    except grpc.aio.AioRpcError:
        return False
    for reply in replies:
        receipt = reply.receipt if reply.receipt.header else reply.issue_receipt
        try:
            if verify_receipt(receipt, keys).state.status != status:
                return False
        except ReceiptInvalid:
            return False
    return True


def _lock(stub, number: str):  # type: ignore[no-untyped-def]
    """LockInvoice with a fresh idempotency key (a new request, not a retry)."""
    return stub.LockInvoice(
        reimb.LockInvoiceRequest(invoice_number=number, idempotency_key=str(uuid.uuid4())), timeout=15
    )


def _close(stub, number: str):  # type: ignore[no-untyped-def]
    return stub.CloseInvoice(
        reimb.CloseInvoiceRequest(invoice_number=number, idempotency_key=str(uuid.uuid4())), timeout=15
    )


async def _rpc(call: Awaitable[object]) -> tuple[grpc.StatusCode, str, object]:
    try:
        reply = await call
        return grpc.StatusCode.OK, "", reply
    except grpc.aio.AioRpcError as exc:
        return exc.code(), reason_of(exc), None


async def walk(story: Story) -> None:
    load_stack_environment()
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    suffix = f"{int(story.run_id, 16) % 100000:05d}"

    story.title("Register a merchant with payment_intake")
    merchant_id = f"19{suffix}{secrets.randbelow(1000):03d}"
    merchant_tax_id = _tax_id(f"91440300MA5F{suffix}")
    # The operator modules run their own event loop: call them from a worker thread.
    answer = await asyncio.to_thread(register_merchant, merchant_id, "深圳前海示例餐饮有限公司", merchant_tax_id, "44")
    story.say(f"merchant {merchant_id}, tax id {merchant_tax_id}, notify path {answer['notify_path']}")
    story.say("the payment platform now holds the merchant's APIv3 key; Fapiao trusts the platform's key serial")

    story.title("Register two companies and issue their client certificates from the local CA")
    ca = read_pem_pair(PKI_DIR, "ca")
    companies = {}
    for label, name, body in (
        ("A", "深圳甲科技有限公司", f"91440300MA5A{suffix}"),
        ("B", "深圳乙贸易有限公司", f"91440300MA5B{suffix}"),
    ):
        tax_id = _tax_id(body)
        try:
            await register_organisation(tax_id, name)
        except grpc.aio.AioRpcError as exc:
            raise StoryFailed(f"registering company {label}: {exc.code().name} {exc.details()}") from None
        write_pem_pair(issue_organisation_certificate(ca, tax_id, name), PKI_DIR, f"org-{tax_id}")
        companies[label] = (name, tax_id)
        story.say(f"company {label}: {name} ({tax_id}), certificate {PKI_DIR / f'org-{tax_id}.crt'}")
    name_a, tax_a = companies["A"]
    tax_b = companies["B"][1]

    platform = PaymentPlatform.for_merchant(merchant_id, gateway_url())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        story.title("The payment platform posts a signed, encrypted WeChat Pay v3 notification")
        paid = await platform.pay(session, 8800)
        story.say(f"POST {platform.url} -> HTTP {paid.status} {paid.answer}")
        story.check(paid.accepted, "the webhook accepts the payment only once it is durable (2xx)")
        again = await platform.redeliver(session, paid)
        story.check(again.accepted, "a redelivered notification is answered 2xx again (idempotent)")
        payment = (await clients.payment_of(merchant_id, paid.transaction_id)).payment
        story.say(f"payment {payment.payment_id}: {_yuan(payment.amount_fen)}, recorded once")

        story.title("invoice_minting turns the payment into a claim offer with a QR code")
        offer = await clients.wait_for_claim_offer(merchant_id, payment.payment_id)
        png = DEMO_DIR / "claim-qr.png"
        png.write_bytes(offer.claim_qr_png)
        from fapiao_cli.commands.pay import print_claim

        print_claim(payment.payment_id, payment.out_trade_no, offer.claim_url, png)

        story.title(f"Company A's employee scans it and claims the invoice for {name_a}")
        token = clients.claim_token_of(offer.claim_url)
        buyer = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name=name_a, tax_id=tax_a)
        invoice = await claim_invoice(token, buyer)
        number = invoice.body.invoice_number
        story.say(f"invoice {number}: {_yuan(invoice.body.total_amount_fen)} + tax {_yuan(invoice.body.total_tax_fen)}"
                  f" = {_yuan(invoice.body.total_fen)}; verification QR {invoice.body.verification_qr}")  # fmt: skip
        code, reason, _ = await _rpc(claim_invoice(token, buyer))
        story.check(
            reason == "ALREADY_CLAIMED", f"a second claim of the same QR code is refused ({code.name} {reason})"
        )

        story.title("The ledger commits the ISSUE transaction; the block is final by quorum")
        issued = await wait_until_committed(invoice.body.invoice_id, 30)
        story.check(issued.status == invoice_pb2.INVOICE_STATUS_ISSUED, "the invoice is ISSUED on the ledger")
        ok = await _eventually(lambda: _status_everywhere(number, ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED), 15)
        story.check(ok, "every validator serves a quorum receipt: ISSUED")
        states = await _ledger_states(number)
        receipt = states[0].issue_receipt
        header = ledger_pb2.BlockHeader.FromString(receipt.header)
        keys = validator_keys_from_env()
        signers = f"signed by {len(receipt.signatures)} of {len(keys)} validators (quorum {quorum_for(len(keys))})"
        story.say(f"chain {header.chain_id}, block height {header.height}, {header.transaction_count} tx; {signers}")

        story.title("The receipt is verified offline with only the validators' public keys")
        verified_body, _ = verify_invoice_receipts(states[0], keys)
        story.check(
            verified_body.invoice_number == number, "the receipt carries the issuer-signed invoice and verifies"
        )
        tampered = ledger_pb2.Receipt()
        tampered.CopyFrom(receipt)
        tampered.result = tampered.result[:-1] + bytes([tampered.result[-1] ^ 1])
        try:
            verify_receipt(tampered, keys)
            rejected = False
        except ReceiptInvalid as exc:
            rejected = True
            story.say(f"one flipped bit -> {exc.reason}")
        story.check(rejected, "a receipt with one byte changed fails verification")

        a = clients.reimbursement_for(tax_a)
        b = clients.reimbursement_for(tax_b)
        story.title("Company A verifies the invoice through the reimbursement API (mutual TLS)")
        verified = await a.VerifyInvoice(
            reimb.VerifyInvoiceRequest(
                invoice_number=number, issue_date=verified_body.issue_date, total_fen=verified_body.total_fen
            ),
            timeout=10,
        )
        story.check(verified.genuine, f"genuine, status {reimb.ReimbursementStatus.Name(verified.status)}, "
                    f"reimbursable {_yuan(verified.reimbursable_fen)}")  # fmt: skip

        story.title("Company B tries to lock A's invoice")
        code, reason, _ = await _rpc(_lock(b, number))
        story.check(code == grpc.StatusCode.PERMISSION_DENIED, f"refused: {code.name} {reason}")

        story.title("Company A locks it, then closes it (reimbursed)")
        code, reason, reply = await _rpc(_lock(a, number))
        story.check(code == grpc.StatusCode.OK, f"locked ({code.name} {reason})")
        story.say(f"LOCK committed at chain {reply.outcome.ledger_chain_id} height {reply.outcome.ledger_height}")  # type: ignore[attr-defined]
        code, reason, reply = await _rpc(_close(a, number))
        story.check(code == grpc.StatusCode.OK, f"closed ({code.name} {reason})")
        ok = await _eventually(lambda: _status_everywhere(number, ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED), 15)
        story.check(ok, "every validator serves a quorum receipt: CLOSED (reimbursed)")

        story.title("Nobody can reimburse it again")
        code, reason, _ = await _rpc(_close(a, number))
        story.check(code == grpc.StatusCode.FAILED_PRECONDITION, f"a second close is refused: {code.name} {reason}")
        code, reason, _ = await _rpc(_lock(a, number))
        story.check(code == grpc.StatusCode.FAILED_PRECONDITION, f"a second lock is refused: {code.name} {reason}")

        story.title("A second payment is claimed by a person, then refunded: it becomes a red-letter invoice")
        second = await platform.pay(session, 5000)
        story.check(second.accepted, "second payment accepted")
        payment2 = (await clients.payment_of(merchant_id, second.transaction_id)).payment
        offer2 = await clients.wait_for_claim_offer(merchant_id, payment2.payment_id)
        person = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="张三")
        invoice2 = await claim_invoice(clients.claim_token_of(offer2.claim_url), person)
        issued2 = await wait_until_committed(invoice2.body.invoice_id, 30)
        story.check(
            issued2.status == invoice_pb2.INVOICE_STATUS_ISSUED, f"invoice {invoice2.body.invoice_number} issued"
        )
        refund = await platform.refund(
            session,
            transaction_id=second.transaction_id,
            out_trade_no=second.out_trade_no,
            refund_fen=5000,
            total_fen=5000,
        )
        story.check(refund.accepted, f"refund notification accepted (HTTP {refund.status})")
        number2 = invoice2.body.invoice_number
        ok = await _eventually(lambda: _status_everywhere(number2, ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED), 30)
        story.check(ok, "every validator serves a quorum receipt: the original invoice is CANCELLED")
        latest2 = (await clients.minting().GetInvoice(_get_invoice(number2), timeout=5)).invoice
        story.say(f"red-letter invoice(s): {', '.join(latest2.red_letter_invoice_numbers) or '(none listed)'}")
        story.check(bool(latest2.red_letter_invoice_numbers), "a red-letter invoice reverses it")
        verified2 = await a.VerifyInvoice(
            reimb.VerifyInvoiceRequest(
                invoice_number=number2, issue_date=invoice2.body.issue_date, total_fen=invoice2.body.total_fen
            ),
            timeout=10,
        )
        story.check(
            verified2.status == reimb.REIMBURSEMENT_STATUS_CANCELLED,
            f"VerifyInvoice reports it {reimb.ReimbursementStatus.Name(verified2.status)}",
        )


def _get_invoice(number: str):  # type: ignore[no-untyped-def]
    from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_api

    return minting_api.GetInvoiceRequest(invoice_number=number)


def run_demo(keep_running: bool = False) -> int:
    """Start the stack, walk the story, stop the stack (unless keep_running). 0 iff every promise held."""
    story = Story()
    print("Starting the real stack: Kafka (KRaft), PostgreSQL, payment_intake, invoice_minting,")
    print("4 ledger validators, reimbursement and the gateway ...", flush=True)
    try:
        endpoints = stack.up()
        print(f"Kafka {endpoints.kafka_bootstrap}; PostgreSQL {endpoints.database_url}; logs in .run/logs")
        asyncio.run(walk(story))
    except StoryFailed:
        pass
    except Exception as exc:  # report, then stop the stack
        story.failures.append(f"{type(exc).__name__}: {exc}")
        print(f"\n   [BROKEN] {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        if not keep_running:
            print("\nstopped: " + ", ".join(stack.down()))
    if story.failures:
        print(f"\nDEMO FAILED: {story.failures[0]}")
        return 1
    print("\nEvery promise kept: paid once, claimed once, committed by quorum, verified offline, reimbursed once.")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo(keep_running="--keep-running" in sys.argv))
