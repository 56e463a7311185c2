"""The workload: real clients of a running stack, at a steady paced rate, every operation recorded.

One *story* per tick: the payment platform pays (a signed, encrypted WeChat Pay v3 notification to the
webhook, or RecordPayment over gRPC), the consumer claims the invoice with the token of the payment's
claim offer (as a person, whose invoice any organisation may reimburse, or as one of the organisations),
then several organisations race to lock it over mutual TLS; the winner sometimes unlocks (and the
others race again), then closes it, and a rival and the winner each try to close it once more.

A call whose outcome is unknown is retried with the same request (the same notification, the same
idempotency key), as the platform and a careful client would; every attempt is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import grpc
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_api
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as minting_grpc
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.payments.v1 import payment_intake_service_pb2 as intake_api
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as intake_grpc
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as reimb
from fapiao.reimbursement.v1 import reimbursement_service_pb2_grpc as reimb_grpc
from fapiao_runtime.errors import reason_of
from fapiao_runtime.grpc_client import internal_channel
from fapiao_runtime.tax_id import uscc_check_char
from google.protobuf.timestamp_pb2 import Timestamp

from fapiao_faults.history import (
    CLAIM,
    CLOSE,
    FAIL,
    LOCK,
    OK,
    PAY_GRPC,
    PAY_WEBHOOK,
    UNKNOWN,
    UNLOCK,
    HistoryWriter,
    Op,
    outcome_of_code,
    outcome_of_http,
)
from fapiao_faults.system import Endpoints

log = logging.getLogger("fapiao_faults.workload")

CALL_TIMEOUT_S = 10.0
# How often (and how long) an operation whose outcome is unknown is retried with the same request.
RETRY_ATTEMPTS = 8
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0)


@dataclass(frozen=True)
class WorkloadSettings:
    rate: float = 1.0  # stories started per second
    duration_s: float = 600.0  # stories start during this long
    max_stories: int = 100_000
    concurrency: int = 24  # stories in flight at most
    story_deadline_s: float = 120.0  # a story gives up (its last operation recorded) after this long
    # A finance department files an invoice some time after it was claimed: reimbursements are spread
    # over the run, so every fault meets ledger writes (locks, unlocks, closes) in flight.
    filing_delay_s: float = 20.0
    organisations: int = 3
    seed: int = 1


def _tax_id(body17: str) -> str:
    return body17 + uscc_check_char(body17)


@dataclass(frozen=True)
class Organisation:
    tax_id: str
    name: str


class Clients:
    """gRPC stubs and the payment platform, shared by every story."""

    def __init__(self, endpoints: Endpoints, merchant_id: str, organisations: list[Organisation]) -> None:
        from fapiao_cli.platform import PaymentPlatform

        self.endpoints = endpoints
        self.merchant_id = merchant_id
        self.organisations = organisations
        self.platform = PaymentPlatform.for_merchant(merchant_id, endpoints.gateway_url)
        self._channels: list[grpc.aio.Channel] = []
        self.intake = intake_grpc.PaymentIntakeServiceStub(self._keep(internal_channel(endpoints.intake_grpc)))
        self.minting = minting_grpc.InvoiceMintingServiceStub(self._keep(internal_channel(endpoints.minting_grpc)))
        self.reimbursement = {org.tax_id: self._reimbursement_stub(org.tax_id) for org in organisations}

    def _keep(self, channel: grpc.aio.Channel) -> grpc.aio.Channel:
        self._channels.append(channel)
        return channel

    def _reimbursement_stub(self, tax_id: str) -> reimb_grpc.ReimbursementServiceStub:
        pki = self.endpoints.pki_dir
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.crt").read_bytes(),
            private_key=(pki / f"org-{tax_id}.key").read_bytes(),
            certificate_chain=(pki / f"org-{tax_id}.crt").read_bytes(),
        )
        options = [("grpc.ssl_target_name_override", "localhost")]
        channel = grpc.aio.secure_channel(self.endpoints.reimbursement_tls, credentials, options=options)
        return reimb_grpc.ReimbursementServiceStub(self._keep(channel))

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def register_participants(endpoints: Endpoints, run_id: str, organisations: int) -> tuple[str, list[Organisation]]:
    """Register one merchant (and the platform's keys for it) and `organisations` companies with their
    client certificates, through the operators' own tools; returns the merchant id and the companies."""
    from fapiao_cli.commands.merchant import register_merchant
    from fapiao_runtime.pki import issue_organisation_certificate, read_pem_pair, write_pem_pair
    from reimbursement import cli as reimbursement_cli

    suffix = f"{int(run_id, 16) % 100000:05d}"
    merchant_id = f"19{suffix}{secrets.randbelow(1000):03d}"
    register_merchant(merchant_id, "深圳故障测试餐饮有限公司", _tax_id(f"91440300MA5F{suffix}"), "44")
    ca = read_pem_pair(endpoints.pki_dir, "ca")
    companies = []
    for index in range(organisations):
        letter = "ABCDEGHJKL"[index]
        org = Organisation(_tax_id(f"91440300M{letter}{index}Q{suffix}"), f"深圳故障测试{letter}公司")
        with contextlib.redirect_stdout(io.StringIO()):
            if reimbursement_cli.main(["org", "add", "--tax-id", org.tax_id, "--name", org.name]) != 0:
                raise RuntimeError(f"registering organisation {org.tax_id} failed")
        write_pem_pair(issue_organisation_certificate(ca, org.tax_id, org.name), endpoints.pki_dir, f"org-{org.tax_id}")
        companies.append(org)
    return merchant_id, companies


class Workload:
    """Runs stories at a paced rate until the duration or the story count is reached; records every call."""

    def __init__(self, clients: Clients, history: HistoryWriter, settings: WorkloadSettings) -> None:
        self.clients = clients
        self.history = history
        self.settings = settings
        self.random = random.Random(settings.seed)
        self.stories_started = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        settings = self.settings
        interval = 1.0 / max(settings.rate, 0.01)
        slots = asyncio.Semaphore(settings.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.monotonic()
            while not self._stop.is_set() and self.stories_started < settings.max_stories:
                due = started + self.stories_started * interval
                if due - started >= settings.duration_s:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, due - time.monotonic()))
                if self._stop.is_set():
                    break
                await slots.acquire()
                index = self.stories_started
                self.stories_started += 1
                task = asyncio.ensure_future(self._story(session, index, random.Random(self.random.random())))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: slots.release())
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    # -- one story --------------------------------------------------------------------------------

    async def _story(self, session: aiohttp.ClientSession, index: int, rng: random.Random) -> None:
        deadline = time.monotonic() + self.settings.story_deadline_s
        worker = f"story-{index}"
        try:
            payment_id = await self._pay(session, index, worker, deadline)
            if payment_id is None or rng.random() < 0.15:
                return
            orgs = self.clients.organisations
            person = rng.random() < 0.7
            buyer_org = None if person else rng.choice(orgs)
            invoice = await self._claim(payment_id, buyer_org, worker, deadline)
            if invoice is None or not await self._issued(invoice.body.invoice_id, deadline):
                return
            number, invoice_id = invoice.body.invoice_number, invoice.body.invoice_id
            await self._pause(rng.uniform(0.0, self.settings.filing_delay_s), deadline - CALL_TIMEOUT_S * 4)
            racers = list(orgs) if buyer_org is None else [buyer_org, rng.choice([o for o in orgs if o != buyer_org])]
            holder = await self._race(number, invoice_id, racers, worker, deadline)
            if holder is None:
                return
            if rng.random() < 0.3:
                unlocked = await self._reimburse(UNLOCK, number, invoice_id, holder, worker, deadline)
                if unlocked != OK:
                    return
                holder = await self._race(number, invoice_id, racers, worker, deadline)
                if holder is None:
                    return
            if rng.random() < 0.15:
                return  # left locked
            if await self._reimburse(CLOSE, number, invoice_id, holder, worker, deadline) != OK:
                return
            rival = rng.choice([o for o in orgs if o != holder])
            await self._reimburse(CLOSE, number, invoice_id, rival, worker, deadline)
            await self._reimburse(CLOSE, number, invoice_id, holder, worker, deadline)
        except Exception:  # a bug of the workload itself, not of the system: say so and end this story
            log.exception("story %s stopped", index)

    async def _pause(self, seconds: float, until: float) -> None:
        """Wait `seconds` (not past the monotonic time `until`, nor past the workload's stop)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, min(seconds, until - time.monotonic())))

    async def _attempts(
        self,
        kind: str,
        key: dict[str, str],
        worker: str,
        deadline: float,
        call: Callable[[], Awaitable[tuple[str, str, str, dict[str, Any]]]],
    ) -> Op:
        """Run `call` (returning outcome, code, reason, result) until it is not unknown, the attempts
        run out or the story's deadline passes; record every attempt; return the last."""
        op = Op(kind, key, time.time())  # replaced by the first attempt
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            op = Op(kind, key, time.time(), worker=worker, attempt=attempt)
            try:
                op.outcome, op.code, op.reason, op.result = await call()
            except (aiohttp.ClientError, OSError) as exc:
                op.outcome, op.code, op.reason = UNKNOWN, "CONNECTION_ERROR", type(exc).__name__
            except TimeoutError:
                op.outcome, op.code, op.reason = UNKNOWN, "TIMEOUT", "client timeout"
            self.history.record(op)
            if op.outcome != UNKNOWN or time.monotonic() > deadline:
                return op
            await asyncio.sleep(RETRY_BACKOFF_S[min(attempt - 1, len(RETRY_BACKOFF_S) - 1)])
        return op

    async def _grpc(self, call: Awaitable[Any]) -> tuple[str, str, str, Any]:
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            return outcome_of_code(exc.code()), exc.code().name, reason_of(exc), None
        return OK, "OK", "", reply

    async def _pay(self, session: aiohttp.ClientSession, index: int, worker: str, deadline: float) -> str | None:
        """One payment, through the webhook (even stories) or gRPC (odd ones); its payment id once acknowledged."""
        clients = self.clients
        transaction_id = "4200" + secrets.token_hex(12)
        out_trade_no = f"fault-{index}-{secrets.token_hex(6)}"
        amount = 100 + index % 9000
        key = {"merchant_id": clients.merchant_id, "transaction_id": transaction_id, "out_trade_no": out_trade_no}
        if index % 2 == 0:
            earlier: list[Any] = []

            async def webhook() -> tuple[str, str, str, dict[str, Any]]:
                platform = clients.platform
                if earlier:
                    outcome = await platform.redeliver(session, earlier[0])
                else:
                    outcome = await platform.pay(
                        session, amount, transaction_id=transaction_id, out_trade_no=out_trade_no
                    )
                    earlier.append(outcome)
                code = str(outcome.answer.get("code", "")) if isinstance(outcome.answer, dict) else ""
                return outcome_of_http(outcome.status), f"HTTP {outcome.status}", code, {"amount_fen": amount}

            op = await self._attempts(PAY_WEBHOOK, key, worker, deadline, webhook)
            if op.outcome != OK:
                return None
            return await self._payment_id(transaction_id, deadline)
        success = Timestamp()
        success.FromDatetime(datetime.now(UTC))
        request = intake_api.RecordPaymentRequest(
            merchant_id=clients.merchant_id, transaction_id=transaction_id, out_trade_no=out_trade_no,
            amount_fen=amount, payer_total_fen=amount, currency="CNY", success_time=success,
            payer_openid="o" + secrets.token_hex(13), appid="wxd678efh567hg6787", trade_type="JSAPI",
        )  # fmt: skip

        async def record() -> tuple[str, str, str, dict[str, Any]]:
            call = clients.intake.RecordPayment(request, timeout=CALL_TIMEOUT_S)
            outcome, code, reason, reply = await self._grpc(call)
            result = {"payment_id": reply.payment.payment_id, "duplicate": reply.duplicate} if reply else {}
            result["amount_fen"] = amount
            return outcome, code, reason, result

        op = await self._attempts(PAY_GRPC, key, worker, deadline, record)
        return str(op.result["payment_id"]) if op.outcome == OK else None

    async def _payment_id(self, transaction_id: str, deadline: float) -> str | None:
        """The payment id of an acknowledged notification (a read; not part of the history)."""
        request = intake_api.GetPaymentRequest(merchant_id=self.clients.merchant_id, transaction_id=transaction_id)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await self.clients.intake.GetPayment(request, timeout=CALL_TIMEOUT_S)
                return str(reply.payment.payment_id)
            await asyncio.sleep(1.0)
        return None

    async def _offer_url(self, payment_id: str, deadline: float) -> str | None:
        request = minting_api.GetClaimOfferByPaymentRequest(
            merchant_id=self.clients.merchant_id, payment_id=payment_id, omit_qr_code=True, wait_ms=5000
        )
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await self.clients.minting.GetClaimOfferByPayment(request, timeout=CALL_TIMEOUT_S)
                return str(reply.claim_url)
            await asyncio.sleep(1.0)
        return None

    async def _claim(
        self, payment_id: str, buyer_org: Organisation | None, worker: str, deadline: float
    ) -> invoice_pb2.Invoice | None:
        url = await self._offer_url(payment_id, deadline)
        if url is None:
            return None
        if buyer_org is None:
            buyer = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="张三")
        else:
            buyer = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name=buyer_org.name, tax_id=buyer_org.tax_id)
        request = minting_api.ClaimInvoiceRequest(
            claim_token=url.rstrip("/").rsplit("/", 1)[-1], buyer=buyer, idempotency_key=str(uuid.uuid4())
        )
        key = {"payment_id": payment_id, "idempotency_key": request.idempotency_key,
               "buyer": buyer_org.tax_id if buyer_org else "person"}  # fmt: skip
        invoices: list[invoice_pb2.Invoice] = []

        async def claim() -> tuple[str, str, str, dict[str, Any]]:
            outcome, code, reason, reply = await self._grpc(
                self.clients.minting.ClaimInvoice(request, timeout=CALL_TIMEOUT_S)
            )
            if reply is None:
                return outcome, code, reason, {}
            invoices.append(reply.invoice)
            body = reply.invoice.body
            return outcome, code, reason, {"invoice_id": body.invoice_id, "invoice_number": body.invoice_number}

        op = await self._attempts(CLAIM, key, worker, deadline, claim)
        return invoices[-1] if op.outcome == OK and invoices else None

    async def _issued(self, invoice_id: str, deadline: float) -> bool:
        """Wait (reading invoice_minting) until the ledger decided the invoice; True when ISSUED."""
        request = minting_api.GetInvoiceRequest(invoice_id=invoice_id)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await self.clients.minting.GetInvoice(request, timeout=CALL_TIMEOUT_S)
                if reply.invoice.status != invoice_pb2.INVOICE_STATUS_PENDING:
                    return bool(reply.invoice.status == invoice_pb2.INVOICE_STATUS_ISSUED)
            await asyncio.sleep(0.5)
        return False

    async def _race(
        self, number: str, invoice_id: str, racers: list[Organisation], worker: str, deadline: float
    ) -> Organisation | None:
        """Every racer locks at once; the one acknowledged holds the lock (None when none was)."""
        outcomes = await asyncio.gather(
            *(self._reimburse(LOCK, number, invoice_id, org, worker, deadline) for org in racers)
        )
        winners = [org for org, outcome in zip(racers, outcomes, strict=True) if outcome == OK]
        return winners[0] if winners else None

    async def _reimburse(
        self, kind: str, number: str, invoice_id: str, org: Organisation, worker: str, deadline: float
    ) -> str:
        stub = self.clients.reimbursement[org.tax_id]
        idempotency_key = str(uuid.uuid4())
        method, request_type = {
            LOCK: (stub.LockInvoice, reimb.LockInvoiceRequest),
            UNLOCK: (stub.UnlockInvoice, reimb.UnlockInvoiceRequest),
            CLOSE: (stub.CloseInvoice, reimb.CloseInvoiceRequest),
        }[kind]
        request = request_type(invoice_number=number, idempotency_key=idempotency_key)
        key = {"invoice_number": number, "invoice_id": invoice_id, "org": org.tax_id}
        key["idempotency_key"] = idempotency_key

        async def call() -> tuple[str, str, str, dict[str, Any]]:
            outcome, code, reason, reply = await self._grpc(method(request, timeout=CALL_TIMEOUT_S))
            if reply is None:
                return outcome, code, reason, {}
            result = reply.outcome
            if result.pending:  # submitted, not decided yet: the same key tells the outcome later
                return UNKNOWN, "OK_PENDING", "OUTCOME_PENDING", {"transaction_id": result.transaction_id}
            return (
                outcome,
                code,
                reason,
                {
                    "transaction_id": result.transaction_id,
                    "status": reimb.ReimbursementStatus.Name(result.status),
                    "chain": result.ledger_chain_id,
                    "height": result.ledger_height,
                },
            )

        op = await self._attempts(kind, key, worker, deadline, call)
        return op.outcome if op.outcome in (OK, FAIL) else UNKNOWN
