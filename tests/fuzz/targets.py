"""Everything the fuzzer sends to: every gRPC method of the five services (plus health and reflection
on every gRPC port) and every HTTP route, each with valid requests built from the seed data."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fapiao.admin.v1 import merchant_admin_service_pb2 as merchant_admin
from fapiao.admin.v1 import organisation_admin_service_pb2 as org_admin
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_api
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_service_pb2 as ledger_api
from fapiao.payments.v1 import payment_intake_service_pb2 as intake_api
from fapiao.payments.v1 import payments_pb2
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as reimb
from fapiao_runtime.tax_id import uscc_check_char
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.fuzz import mutate
from tests.fuzz.http_requests import (
    FORM,
    HttpRequest,
    encode_form,
    form_body,
    garbage_request,
    mutate_form,
    mutate_http,
    mutate_path_segment,
)
from tests.fuzz.seeds import Seeds

HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
INTAKE = "/fapiao.payments.v1.PaymentIntakeService/"
MINTING = "/fapiao.invoicing.v1.InvoiceMintingService/"
LEDGER = "/fapiao.ledger.v1.LedgerService/"
REIMBURSEMENT = "/fapiao.reimbursement.v1.ReimbursementService/"
ORG_ADMIN = "/fapiao.admin.v1.OrganisationAdminService/"
MERCHANT_ADMIN = "/fapiao.admin.v1.MerchantAdminService/"


@dataclass
class GrpcTarget:
    surface: str
    endpoint: str  # key of the fuzzer's channels: "payment_intake", "ledger-1", "reimbursement-tls", ...
    method: str  # full path
    kind: str  # unary | server_stream | bidi
    requests: Callable[[random.Random], list[Message]]
    weight: float = 1.0
    # Seconds the deadline adds for a method that waits as long as its request asks (at most 10 s):
    # its answer at 10 s is what was asked for, not a hang.
    asked_wait_s: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.endpoint} {self.method.rsplit('/', 2)[-2].rsplit('.', 1)[-1]}.{self.method.rsplit('/', 1)[-1]}"


@dataclass
class HttpTarget:
    surface: str
    port: str  # "gateway" or "webhook"
    name: str
    build: Callable[[random.Random], tuple[HttpRequest, str]]
    weight: float = 1.0


@dataclass
class Notifier:
    """Builds signed (and encrypted) WeChat Pay notifications for the seed merchant."""

    merchant_id: str
    apiv3_key: bytes
    signer: Any  # payment_intake.wechatpay.PlatformSigner
    seeds: Seeds
    counter: list[int] = field(default_factory=lambda: [0])

    def resource(self, rng: random.Random) -> tuple[dict[str, Any], str]:
        from payment_intake.wechatpay import EVENT_REFUND_SUCCESS, refund_resource, transaction_resource

        if rng.random() < 0.3:
            payment = self.seeds.payments[2]
            resource = refund_resource(
                mchid=self.merchant_id,
                transaction_id=payment.transaction_id,
                out_trade_no=payment.out_trade_no,
                refund_id=f"5030{rng.randrange(16**20):020x}",
                refund_fen=1,
                total_fen=payment.amount_fen,
            )
            return resource, EVENT_REFUND_SUCCESS
        resource = transaction_resource(
            mchid=self.merchant_id,
            transaction_id=f"4200{rng.randrange(16**24):024x}",
            out_trade_no=f"fz{rng.randrange(16**12):012x}",
            total_fen=rng.choice((1, 100, 8800)),
            openid=f"o{rng.randrange(16**26):026x}",
        )
        return resource, "TRANSACTION.SUCCESS"

    def body(self, rng: random.Random, resource_text: str, event_type: str) -> dict[str, Any]:
        from payment_intake.wechatpay import encrypt_resource

        associated = "refund" if event_type == "REFUND.SUCCESS" else "transaction"
        return {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "create_time": datetime.now(UTC).isoformat(),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "支付成功",
            "resource": encrypt_resource(self.apiv3_key, resource_text.encode("utf-8", "surrogatepass"), associated),
        }

    def headers(self, rng: random.Random, body: bytes) -> list[tuple[bytes, bytes]]:
        import time

        nonce = f"{rng.randrange(16**32):032X}"
        timestamp = str(int(time.time()))
        return [
            (b"Wechatpay-Serial", self.signer.serial.encode()),
            (b"Wechatpay-Timestamp", timestamp.encode()),
            (b"Wechatpay-Nonce", nonce.encode()),
            (b"Wechatpay-Signature", self.signer.sign(timestamp, nonce, body).encode()),
            (b"Content-Type", b"application/json"),
        ]

    def notification(self, rng: random.Random, path: str) -> tuple[HttpRequest, str]:
        """A notification mutated at one of three depths: the decrypted resource (signed and
        encrypted properly), the outer JSON (signed properly), or the headers and bytes (unsigned)."""
        resource, event_type = self.resource(rng)
        depth = rng.random()
        if depth < 0.08:
            text, what = json.dumps(resource, ensure_ascii=False), "valid"
            body = json.dumps(self.body(rng, text, event_type)).encode()
            return HttpRequest("POST", path, self.headers(rng, body), body), what
        if depth < 0.5:
            text, what = mutate.mutate_json(rng, resource)
            body = json.dumps(self.body(rng, text, event_type)).encode()
            return HttpRequest("POST", path, self.headers(rng, body), body), f"signed resource {what}"
        if depth < 0.75:
            outer = self.body(rng, json.dumps(resource), event_type)
            text, what = mutate.mutate_json(rng, outer)
            body = text.encode("utf-8", "surrogatepass")
            return HttpRequest("POST", path, self.headers(rng, body), body), f"signed body {what}"
        body = json.dumps(self.body(rng, json.dumps(resource), event_type)).encode()
        request = HttpRequest("POST", path, self.headers(rng, body), body)
        choice = rng.randrange(5)
        if choice == 0:
            index = rng.randrange(4)
            name, value = request.headers[index]
            new = rng.choice(
                (
                    b"\xff\xfe" + value,
                    value + b"\n",
                    b"",
                    mutate.hostile_text(rng, value.decode())[0].encode("utf-8", "surrogatepass"),
                    b"WECHATPAY/SIGNTEST/" + value,
                )
            )
            request.headers[index] = (name, new)
            return request, f"header {name.decode()} mutated"
        if choice == 1:
            del request.headers[rng.randrange(4)]
            return request, "a Wechatpay header missing"
        if choice == 2:
            request.body = rng.randbytes(rng.choice((0, 10, 1000)))
            return request, "random body"
        if choice == 3:
            request.body = request.body[:-1] + b" }"
            return request, "body changed after signing"
        return request, mutate_http(rng, request)


def _now_ts() -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(minutes=5))
    return stamp


def grpc_targets(seeds: Seeds) -> list[GrpcTarget]:
    merchant = seeds.merchant_id
    inv = seeds.invoices[0]
    inv2 = seeds.invoices[1] if len(seeds.invoices) > 1 else inv
    pay = seeds.payments[0]
    refundable = seeds.payments[2]

    def record_payment(rng: random.Random) -> list[Message]:
        item = payments_pb2.PaymentItem(
            tax_classification_code="3070401000000000000",
            name="餐饮服务",
            quantity=1,
            unit_price_fen=8800,
            amount_fen=8800,
            tax_rate_bp=600,
        )
        fresh = intake_api.RecordPaymentRequest(
            merchant_id=merchant,
            transaction_id=f"4200{rng.randrange(16**24):024x}",
            out_trade_no=f"fz{rng.randrange(16**12):012x}",
            amount_fen=8800,
            payer_total_fen=8800,
            currency="CNY",
            success_time=_now_ts(),
            payer_openid=f"o{rng.randrange(16**26):026x}",
            appid="wxd678efh567hg6787",
            trade_type="JSAPI",
            items=[item],
        )
        return [fresh]

    def record_refund(rng: random.Random) -> list[Message]:
        return [
            intake_api.RecordRefundRequest(
                merchant_id=merchant,
                transaction_id=refundable.transaction_id,
                refund_id=f"5030{rng.randrange(16**20):020x}",
                refund_fen=1,
                refund_time=_now_ts(),
                reason="SALES_RETURN",
            )
        ]

    def party(rng: random.Random) -> invoice_pb2.Party:
        if rng.random() < 0.5:
            return invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name=seeds.org_name, tax_id=seeds.org_tax_id)
        return invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="李四")

    def key() -> str:
        return str(uuid.uuid4())

    intake = [
        (INTAKE + "RecordPayment", record_payment),
        (INTAKE + "RecordRefund", record_refund),
        (
            INTAKE + "GetPayment",
            lambda r: [intake_api.GetPaymentRequest(merchant_id=merchant, transaction_id=pay.transaction_id)],
        ),
    ]
    minting = [
        (MINTING + "GetClaimOffer", lambda r: [minting_api.GetClaimOfferRequest(claim_token=seeds.tokens["grpc"])]),
        (
            MINTING + "ClaimInvoice",
            lambda r: [
                minting_api.ClaimInvoiceRequest(
                    claim_token=r.choice((seeds.tokens["grpc"], seeds.tokens["claimed"])),
                    buyer=party(r),
                    idempotency_key=key(),
                )
            ],
        ),
        (
            MINTING + "GetInvoice",
            lambda r: [
                minting_api.GetInvoiceRequest(invoice_number=inv.number),
                minting_api.GetInvoiceRequest(invoice_id=inv.invoice_id),
            ],
        ),
        (
            MINTING + "ListInvoices",
            lambda r: [
                minting_api.ListInvoicesRequest(merchant_id=merchant, page_size=5, page_token=seeds.minting_page_token),
                minting_api.ListInvoicesRequest(buyer_tax_id=seeds.org_tax_id, page_size=5),
            ],
        ),
        (
            MINTING + "RedLetterInvoice",
            lambda r: [
                minting_api.RedLetterInvoiceRequest(
                    merchant_id=merchant,
                    invoice_number=inv2.number,
                    amount_fen=1,
                    reason="SALES_DISCOUNT",
                    idempotency_key=key(),
                )
            ],
        ),
        (
            MINTING + "GetClaimOfferByPayment",
            lambda r: [
                minting_api.GetClaimOfferByPaymentRequest(
                    merchant_id=merchant, payment_id=pay.payment_id, omit_qr_code=r.random() < 0.5
                )
            ],
        ),
        (MINTING + "RotateIssuerKey", lambda r: [minting_api.RotateIssuerKeyRequest(merchant_id=merchant)]),
        (MINTING + "ListIssuerKeys", lambda r: [minting_api.ListIssuerKeysRequest(merchant_id=merchant)]),
    ]
    ledger = [
        (
            LEDGER + "GetInvoiceState",
            lambda r: [
                ledger_api.GetInvoiceStateRequest(invoice_number=inv.number),
                ledger_api.GetInvoiceStateRequest(invoice_id=inv.invoice_id, state_only=True),
            ],
        ),
        (LEDGER + "GetBlock", lambda r: [ledger_api.GetBlockRequest(chain_id=inv.chain_id, height=inv.height)]),
        (
            LEDGER + "GetTransactionResult",
            lambda r: [ledger_api.GetTransactionResultRequest(transaction_id=seeds.ledger_transaction_id)],
        ),
        (LEDGER + "AuditChain", lambda r: [ledger_api.AuditChainRequest(chain_id=inv.chain_id)]),
    ]
    reimbursement = [
        (
            REIMBURSEMENT + "VerifyInvoice",
            lambda r: [
                reimb.VerifyInvoiceRequest(
                    invoice_number=inv.number, issue_date=inv.issue_date, total_fen=inv.total_fen
                )
            ],
        ),
        (
            REIMBURSEMENT + "LockInvoice",
            lambda r: [reimb.LockInvoiceRequest(invoice_number=inv.number, idempotency_key=key())],
        ),
        (
            REIMBURSEMENT + "UnlockInvoice",
            lambda r: [reimb.UnlockInvoiceRequest(invoice_number=inv.number, idempotency_key=key())],
        ),
        (
            REIMBURSEMENT + "CloseInvoice",
            lambda r: [reimb.CloseInvoiceRequest(invoice_number=inv2.number, idempotency_key=key())],
        ),
        (
            REIMBURSEMENT + "BatchLockInvoices",
            lambda r: [
                reimb.BatchLockInvoicesRequest(invoice_numbers=[inv.number, inv2.number], idempotency_key=key())
            ],
        ),
        (
            REIMBURSEMENT + "BatchCloseInvoices",
            lambda r: [reimb.BatchCloseInvoicesRequest(invoice_numbers=[inv2.number], idempotency_key=key())],
        ),
        (
            REIMBURSEMENT + "ListReimbursements",
            lambda r: [
                reimb.ListReimbursementsRequest(page_size=10),
                reimb.ListReimbursementsRequest(page_size=1, page_token=seeds.reimbursement_page_token),
            ],
        ),
    ]
    targets = [GrpcTarget("grpc payment_intake", "payment_intake", m, "unary", f) for m, f in intake]
    targets += [
        GrpcTarget(
            "grpc invoice_minting", "invoice_minting", m, "unary", f, asked_wait_s=2.0 if "ByPayment" in m else 0
        )
        for m, f in minting
    ]
    # AuditChain re-verifies the whole chain: its inputs are weighted down so that the run's time
    # stays bounded as the chain grows (it still gets hundreds of them).
    targets += [
        GrpcTarget("grpc ledger", "ledger-1", m, "unary", f, weight=0.3 if m.endswith("AuditChain") else 1.0)
        for m, f in ledger
    ]
    targets.append(
        GrpcTarget(
            "grpc ledger",
            "ledger-1",
            LEDGER + "StreamBlocks",
            "server_stream",
            lambda r: [ledger_api.StreamBlocksRequest(chain_id=inv.chain_id, from_height=max(0, inv.height - 1))],
        )
    )
    targets += [GrpcTarget("grpc reimbursement mTLS", "reimbursement-tls", m, "unary", f) for m, f in reimbursement]
    # The same methods as a registered company's stranger (a CA certificate naming no registered one).
    targets += [
        GrpcTarget("grpc reimbursement mTLS", "reimbursement-stranger", m, "unary", f, weight=0.1)
        for m, f in reimbursement[:2]
    ]

    # The admin services, as the operator; each registration names a new party, and revocations name
    # parties nobody registered, so the rest of the run keeps its merchant and organisation.
    def new_tax_id(body: str) -> str:
        return body + uscc_check_char(body)

    def party_digits() -> str:
        return f"{uuid.uuid4().int % 10**8:08d}"

    organisations = [
        (
            ORG_ADMIN + "RegisterOrganisation",
            lambda r: [
                org_admin.RegisterOrganisationRequest(
                    tax_id=new_tax_id(f"91440300MA{party_digits()}"[:17]), name="深圳管理测试有限公司"
                )
            ],
        ),
        (ORG_ADMIN + "ListOrganisations", lambda r: [org_admin.ListOrganisationsRequest()]),
        (
            ORG_ADMIN + "RevokeOrganisation",
            lambda r: [org_admin.RevokeOrganisationRequest(tax_id=seeds.stranger_tax_id)],
        ),
    ]
    merchants = [
        (
            MERCHANT_ADMIN + "RegisterMerchant",
            lambda r: [
                merchant_admin.RegisterMerchantRequest(
                    merchant_id=f"18{party_digits()}",
                    legal_name="深圳管理测试餐饮有限公司",
                    tax_id=new_tax_id(f"91440300MA{party_digits()}"[:17]),
                    region_code="44",
                )
            ],
        ),
        (MERCHANT_ADMIN + "ListMerchants", lambda r: [merchant_admin.ListMerchantsRequest()]),
        (MERCHANT_ADMIN + "RevokeMerchant", lambda r: [merchant_admin.RevokeMerchantRequest(merchant_id="1800000000")]),
        (
            MERCHANT_ADMIN + "AddPlatformKey",
            lambda r: [
                merchant_admin.AddPlatformKeyRequest(
                    merchant_id=seeds.merchant_id,
                    key=merchant_admin.PlatformKey(serial=f"FUZZ{party_digits()}", public_key_pem=b"-----BEGIN"),
                )
            ],
        ),
        (
            MERCHANT_ADMIN + "RemovePlatformKey",
            lambda r: [merchant_admin.RemovePlatformKeyRequest(merchant_id=seeds.merchant_id, serial="FUZZ0000")],
        ),
    ]
    targets += [GrpcTarget("grpc admin", "reimbursement-operator", m, "unary", f, weight=0.5) for m, f in organisations]
    # The same as an organisation (refused: operators only); listed under the port's own name.
    targets += [GrpcTarget("grpc admin", "reimbursement-tls", m, "unary", f, weight=0.1) for m, f in organisations]
    targets += [GrpcTarget("grpc admin", "intake-admin", m, "unary", f, weight=0.5) for m, f in merchants]

    services = {
        "payment_intake": "fapiao.payments.v1.PaymentIntakeService",
        "invoice_minting": "fapiao.invoicing.v1.InvoiceMintingService",
        "ledger-1": "fapiao.ledger.v1.LedgerService",
        "reimbursement": "",
        "reimbursement-tls": "fapiao.reimbursement.v1.ReimbursementService",
        "intake-admin": "fapiao.admin.v1.MerchantAdminService",
    }
    for endpoint, service in services.items():

        def health_check(r: random.Random, service: str = service) -> list[Message]:
            return [health_pb2.HealthCheckRequest(service=r.choice(("", service)))]

        def reflect(r: random.Random, service: str = service) -> list[Message]:
            return [
                reflection_pb2.ServerReflectionRequest(list_services="*"),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=service or "grpc.health.v1.Health"),
                reflection_pb2.ServerReflectionRequest(file_by_filename="grpc/health/v1/health.proto"),
            ]

        targets += [
            GrpcTarget("grpc health+reflection", endpoint, HEALTH + "Check", "unary", health_check, 0.4),
            GrpcTarget("grpc health+reflection", endpoint, HEALTH + "Watch", "server_stream", health_check, 0.2),
            GrpcTarget(
                "grpc health+reflection",
                endpoint,
                HEALTH + "List",
                "unary",
                lambda r: [health_pb2.HealthListRequest()],
                0.2,
            ),
            GrpcTarget("grpc health+reflection", endpoint, REFLECTION, "bidi", reflect, 0.4),
        ]
    return targets


def grpc_input(rng: random.Random, target: GrpcTarget) -> tuple[bytes, str]:
    request = rng.choice(target.requests(rng))
    return mutate.mutate_message(rng, request)


# --- HTTP -----------------------------------------------------------------------------------------


def _get(rng: random.Random, path: str, segment: str | None = None) -> tuple[HttpRequest, str]:
    """A GET of `path` (whose last token segment is `segment`), mutated in the path or at the HTTP level."""
    roll = rng.random()
    if roll < 0.1:
        return HttpRequest("GET", path), "valid"
    if segment is not None and roll < 0.6:
        new, what = mutate_path_segment(rng, segment)
        return HttpRequest("GET", path.replace(segment, new, 1)), what
    request = HttpRequest("GET", path)
    return request, mutate_http(rng, request)


def _form_post(
    rng: random.Random, path: str, fields: list[tuple[str, str]], segment: str = ""
) -> tuple[HttpRequest, str]:
    request = HttpRequest("POST", path)
    roll = rng.random()
    what = ""
    if roll < 0.08:
        request.headers.append((b"Content-Type", FORM))
        request.body = form_body(fields)
        return request, "valid"
    if segment and roll < 0.2:
        new, what = mutate_path_segment(rng, segment)
        request.path = path.replace(segment, new, 1)
    elif roll < 0.7:
        fields, what = mutate_form(rng, fields)
    encoding = encode_form(rng, request, fields)
    if roll >= 0.7 and rng.random() < 0.5:
        what = mutate_http(rng, request)
    return request, f"{what}; {encoding}".strip("; ")


def _json_post(rng: random.Random, path: str, document: dict[str, Any], segment: str = "") -> tuple[HttpRequest, str]:
    """A POST of the JSON `document` to `path` (an API operation), mutated in its path, its JSON, its
    content type or at the HTTP level."""
    request = HttpRequest("POST", path, [(b"Content-Type", b"application/json")])
    roll = rng.random()
    what = "valid"
    text = json.dumps(document)
    if segment and roll < 0.15:
        new, what = mutate_path_segment(rng, segment)
        request.path = path.replace(segment, new, 1)
    elif roll < 0.7:
        text, what = mutate.mutate_json(rng, document)
    elif roll < 0.8:
        request.headers = [(b"Content-Type", rng.choice((b"text/plain", b"application/json; charset=bogus", FORM)))]
        what = f"content type {request.headers[0][1].decode()}"
    request.body = text.encode("utf-8", "surrogatepass")
    if roll >= 0.8 and rng.random() < 0.7:
        what = mutate_http(rng, request)
    return request, what


def http_targets(seeds: Seeds, notifier: Notifier) -> list[HttpTarget]:
    inv = seeds.invoices[0]
    page_token = seeds.tokens["page"]
    merchant = seeds.merchant_id

    def claim_fields() -> list[tuple[str, str]]:
        return [
            ("buyer_kind", "company"),
            ("name", seeds.org_name),
            ("tax_id", seeds.org_tax_id),
            ("idempotency_key", uuid.uuid4().hex),
        ]

    def verify_fields(rng: random.Random) -> list[tuple[str, str]]:
        if rng.random() < 0.4:
            return [("qr", inv.verification_qr)]
        return [("number", inv.number), ("date", inv.issue_date), ("total", f"{inv.total_fen / 100:.2f}")]

    def verify_get(rng: random.Random) -> tuple[HttpRequest, str]:
        fields = verify_fields(rng)
        what = "valid"
        if rng.random() < 0.8:
            fields, what = mutate_form(rng, fields)
        request = HttpRequest("GET", "/verify?" + form_body(fields).decode())
        if rng.random() < 0.2:
            what += "; " + mutate_http(rng, request)
        return request, what

    def other(rng: random.Random) -> tuple[HttpRequest, str]:
        path = rng.choice(
            (
                "/", "/healthz", "/metrics", "/admin", "/claim", "/claim/", "/invoice", "/invoice/x/pdf/y", "/verify/x",
                "/%00", "/..%2f..%2fetc%2fpasswd", "/v1/notify/wechatpay", "/" + "a" * 5000, "/static/../../x",
            )
        )  # fmt: skip
        method = rng.choice(("GET", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"))
        request = HttpRequest(method, path)
        if rng.random() < 0.3:
            return request, f"{method} {path[:40]}; " + mutate_http(rng, request)
        return request, f"{method} {path[:40]}"

    def api_get(rng: random.Random) -> tuple[HttpRequest, str]:
        path, segment = rng.choice(
            (
                (f"/api/v1/claims/{page_token}", page_token),
                (f"/api/v1/claimed-invoices/{seeds.view_token}", seeds.view_token),
                (f"/api/v1/claimed-invoices/{seeds.view_token}/pdf", seeds.view_token),
                (f"/api/v1/invoices/{inv.number}/verification?date={inv.issue_date}"
                 f"&total={inv.total_fen / 100:.2f}", inv.number),
                ("/api/v1/openapi.json", None),
                ("/api/v1/nothing-here", None),
            )
        )  # fmt: skip
        return _get(rng, path, segment)

    def gateway_notify(rng: random.Random) -> tuple[HttpRequest, str]:
        segment = merchant
        request, what = notifier.notification(rng, f"/v1/notify/wechatpay/{merchant}")
        if rng.random() < 0.1:
            new, path_what = mutate_path_segment(rng, segment)
            request.path = f"/v1/notify/wechatpay/{new}"
            what = f"{what}; merchant {path_what}"
        return request, what

    def intake_notify(rng: random.Random) -> tuple[HttpRequest, str]:
        path = f"/v1/notify/wechatpay/{merchant}" if rng.random() < 0.85 else "/v1/notify/wechatpay"
        request, what = notifier.notification(rng, path)
        if path.endswith(merchant) and rng.random() < 0.1:
            new, path_what = mutate_path_segment(rng, merchant)
            request.path = f"/v1/notify/wechatpay/{new}"
            what = f"{what}; merchant {path_what}"
        return request, what

    def intake_other(rng: random.Random) -> tuple[HttpRequest, str]:
        path = rng.choice(("/healthz", "/", "/v1/notify", "/v1/notify/wechatpay/a/b", "/metrics", "/%ff"))
        method = rng.choice(("GET", "POST", "PUT"))
        return HttpRequest(method, path), f"{method} {path}"

    return [
        HttpTarget(
            "http gateway claim", "gateway", "GET /claim/{token}", lambda r: _get(r, f"/claim/{page_token}", page_token)
        ),
        HttpTarget(
            "http gateway claim",
            "gateway",
            "POST /claim/{token}",
            lambda r: _form_post(r, f"/claim/{page_token}", claim_fields(), page_token),
            2.0,
        ),
        HttpTarget("http gateway verify", "gateway", "GET /verify", verify_get, 1.5),
        HttpTarget(
            "http gateway verify", "gateway", "POST /verify", lambda r: _form_post(r, "/verify", verify_fields(r)), 2.0
        ),
        HttpTarget(
            "http gateway invoice",
            "gateway",
            "GET /invoice/{view}",
            lambda r: _get(r, f"/invoice/{seeds.view_token}", seeds.view_token),
        ),
        HttpTarget(
            "http gateway invoice",
            "gateway",
            "GET /invoice/{view}/pdf",
            lambda r: _get(r, f"/invoice/{seeds.view_token}/pdf", seeds.view_token),
            0.3,
        ),
        HttpTarget(
            "http gateway api",
            "gateway",
            "POST /api/v1/claims/{token}",
            lambda r: _json_post(r, f"/api/v1/claims/{page_token}", dict(claim_fields()), page_token),
            1.5,
        ),
        HttpTarget(
            "http gateway api",
            "gateway",
            "POST /api/v1/verifications",
            lambda r: _json_post(r, "/api/v1/verifications", dict(verify_fields(r))),
            1.5,
        ),
        HttpTarget("http gateway api", "gateway", "GET /api/v1/... (claim, invoice, verification)", api_get, 1.0),
        HttpTarget("http gateway other", "gateway", "GET /healthz", lambda r: _get(r, "/healthz"), 0.3),
        HttpTarget("http gateway other", "gateway", "gateway: other routes", other),
        HttpTarget("http gateway other", "gateway", "gateway: not HTTP", garbage_request, 0.4),
        HttpTarget(
            "http gateway webhook", "gateway", "gateway: POST /v1/notify/wechatpay/{merchant}", gateway_notify, 2.0
        ),
        HttpTarget(
            "http intake webhook", "webhook", "intake: POST /v1/notify/wechatpay[/{merchant}]", intake_notify, 2.5
        ),
        HttpTarget("http intake webhook", "webhook", "intake: other routes", intake_other, 0.3),
        HttpTarget("http intake webhook", "webhook", "intake: not HTTP", garbage_request, 0.3),
    ]
