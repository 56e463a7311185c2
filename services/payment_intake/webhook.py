"""HTTP entry point: WeChat Pay API v3 style payment notifications (aiohttp, same process as gRPC).

POST /v1/notify/wechatpay/{merchant_id} (the merchant's notify_url) or /v1/notify/wechatpay (the
merchant is then the single one trusting the Wechatpay-Serial). Checks, in order, each with its own
reason and nothing stored on rejection: headers, SIGNTEST probe, timestamp window, merchant, serial,
SHA256withRSA signature, body, AES-256-GCM resource, mchid, trade state, amounts, nonce (claimed in
the same transaction as the payment). 200 {"code": "SUCCESS"} only after that transaction committed.

Hostile input is refused before any work it could make expensive: a header that is not text or not
of its format (before any signature work or database lookup), a merchant path segment that is not a
merchant id, a compressed body; JSON (the body and the decrypted resource) is bounded in size and
nesting depth before it is parsed, and no string in it may hold a lone UTF-16 surrogate. A lost
database, broker or deadline is 503 with Retry-After (the platform retries); only a defect is 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import (
    FapiaoError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    unavailable_cause,
)
from fapiao_runtime.http_edge import SERVER_ARGS, content_encoding, retry_later, trace_context
from fapiao_runtime.metrics import REJECTIONS
from fapiao_runtime.text import bad_character, check_text, lone_surrogate

from payment_intake import metrics
from payment_intake import wechatpay as wx
from payment_intake.domain import RecordPayment, RecordRefund
from payment_intake.handlers import IntakeHandlers
from payment_intake.merchants import MerchantDirectory, MerchantKeys
from payment_intake.sealing import payer_ref

log = logging.getLogger(__name__)

NOTIFY_PATH = "/v1/notify/wechatpay"
MAX_BODY_BYTES = 64 * 1024
# A WeChat Pay notification nests three levels deep (resource.amount, promotion_detail.goods_detail).
MAX_JSON_DEPTH = 16
_NONCE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # Unix seconds, ASCII digits only (str.isdigit() takes "²")
_SERIAL = re.compile(r"[A-Za-z0-9]{1,64}")  # as platform key serials are registered
_MERCHANT_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
# One pass, left to right: a string (to its end, or to the end of the text when unterminated) or a bracket.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


def _nesting(data: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text `data` (brackets in strings skipped)."""
    depth = deepest = 0
    for match in _JSON_TOKEN.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _surrogates(value: Any) -> bool:
    """Whether any string (key or value) in the parsed JSON `value` holds a lone UTF-16 surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if lone_surrogate(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def load_json_object(data: bytes, reason: str, what: str) -> dict[str, Any]:
    """`data` parsed as a JSON object, bounded: at most MAX_BODY_BYTES and MAX_JSON_DEPTH levels deep,
    no lone surrogate in any string. Raises InvalidArgument(`reason`) or INVALID_CHARACTERS."""
    if len(data) > MAX_BODY_BYTES:
        raise InvalidArgument(reason, f"{what} is larger than {MAX_BODY_BYTES} bytes")
    if _nesting(data) > MAX_JSON_DEPTH:
        raise InvalidArgument(reason, f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(data)
    except ValueError:
        raise InvalidArgument(reason, f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument(reason, f"{what} must be a JSON object")
    if _surrogates(value):
        raise InvalidArgument("INVALID_CHARACTERS", f"{what} holds a lone UTF-16 surrogate")
    return value


def _field(data: dict[str, Any], name: str, kind: type, reason: str = "MALFORMED_RESOURCE") -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidArgument(reason, f"field {name!r} must be a {kind.__name__}")
    return value


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument("MALFORMED_RESOURCE", "success_time must be RFC 3339") from None
    if moment.tzinfo is None:
        raise InvalidArgument("MALFORMED_RESOURCE", "success_time must carry a UTC offset")
    return moment


def payment_from_resource(data: dict[str, Any], payer_hash_key: bytes) -> RecordPayment:
    """TRANSACTION.SUCCESS resource -> command. TRADE_NOT_SUCCESS unless trade_state is SUCCESS."""
    state = _field(data, "trade_state", str)
    if state != "SUCCESS":
        raise InvalidArgument("TRADE_NOT_SUCCESS", f"trade_state is {state[:20]}, not SUCCESS")
    amount = _field(data, "amount", dict)
    payer = data.get("payer") or {}
    if not isinstance(payer, dict):
        raise InvalidArgument("MALFORMED_RESOURCE", "payer must be an object")
    openid = payer.get("openid") or ""
    if not isinstance(openid, str):
        raise InvalidArgument("MALFORMED_RESOURCE", "payer.openid must be a string")
    check_text(openid, "payer.openid", max_chars=128)
    return RecordPayment(
        merchant_id=_field(data, "mchid", str),
        transaction_id=_field(data, "transaction_id", str),
        out_trade_no=_field(data, "out_trade_no", str),
        amount_fen=_field(amount, "total", int),
        payer_total_fen=_field(amount, "payer_total", int),
        currency=_field(amount, "currency", str),
        success_time=_time(_field(data, "success_time", str)),
        payer_ref=payer_ref(payer_hash_key, openid),
        appid=str(data.get("appid") or ""),
        trade_type=str(data.get("trade_type") or ""),
        source=payments_pb2.PAYMENT_SOURCE_WEBHOOK,
    )


def _decrypt(keys: MerchantKeys, resource: dict[str, Any]) -> bytes | None:
    try:
        return wx.decrypt_resource(keys.apiv3_key, resource)
    except wx.ResourceDecryptError:
        return None


def refund_from_resource(data: dict[str, Any]) -> RecordRefund:
    """REFUND.SUCCESS resource -> command. TRADE_NOT_SUCCESS unless refund_status is SUCCESS."""
    state = _field(data, "refund_status", str)
    if state != "SUCCESS":
        raise InvalidArgument("TRADE_NOT_SUCCESS", f"refund_status is {state[:20]}, not SUCCESS")
    amount = _field(data, "amount", dict)
    return RecordRefund(
        merchant_id=_field(data, "mchid", str),
        transaction_id=_field(data, "transaction_id", str),
        refund_id=_field(data, "refund_id", str),
        refund_fen=_field(amount, "refund", int),
        refund_time=_time(_field(data, "success_time", str)),
        reason=str(data.get("out_refund_no") or "")[:200],
    )


def notification_from_body(body: bytes) -> dict[str, Any]:
    """The notification a WeChat Pay body carries, checked before its resource is decrypted: a JSON
    object with an `id`, a handled `event_type` and an AEAD_AES_256_GCM `resource` (`ciphertext`,
    `nonce`). Anything else raises InvalidArgument (MALFORMED_BODY or UNSUPPORTED_EVENT_TYPE)."""
    data = load_json_object(body, "MALFORMED_BODY", "the body")
    _field(data, "id", str, "MALFORMED_BODY")
    event_type = _field(data, "event_type", str, "MALFORMED_BODY")
    if event_type not in (wx.EVENT_TRANSACTION_SUCCESS, wx.EVENT_REFUND_SUCCESS):
        raise InvalidArgument("UNSUPPORTED_EVENT_TYPE", f"event_type {event_type[:40]} is not handled")
    resource = _field(data, "resource", dict, "MALFORMED_BODY")
    if resource.get("algorithm") != wx.ALGORITHM:
        raise InvalidArgument("MALFORMED_BODY", f"resource.algorithm must be {wx.ALGORITHM}")
    for name in ("ciphertext", "nonce"):
        _field(resource, name, str, "MALFORMED_BODY")
    return data


class NotificationReceiver:
    def __init__(
        self,
        handlers: IntakeHandlers,
        directory: MerchantDirectory,
        payer_hash_key: bytes,
        *,
        clock_skew_s: int = 300,
        deadline_ms: int = 3000,
    ) -> None:
        self._handlers = handlers
        self._directory = directory
        self._payer_hash_key = payer_hash_key
        self._clock_skew_s = clock_skew_s
        self._deadline_s = deadline_ms / 1000

    def app(self) -> web.Application:
        app = web.Application(middlewares=[trace_context], client_max_size=MAX_BODY_BYTES)
        app.router.add_post(NOTIFY_PATH, self.handle)
        app.router.add_post(NOTIFY_PATH + "/{merchant_id}", self.handle)
        app.router.add_get("/healthz", _healthz)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        merchant_hint = request.match_info.get("merchant_id", "")
        try:
            self._check_request(request, merchant_hint)
            async with asyncio.timeout(self._deadline_s):
                body = await request.read()
                duplicate = await self._process(request, body, merchant_hint)
        except FapiaoError as exc:
            # The segment goes into the log only when it is a merchant id: it could hold anything.
            shown = merchant_hint if _MERCHANT_ID.fullmatch(merchant_hint) else "(malformed)"
            log.info("notification rejected", extra={"reason": exc.reason, "merchant_id": shown})
            REJECTIONS.labels(method="webhook", reason=exc.reason).inc()
            metrics.WEBHOOK_LATENCY.labels(status=str(exc.http_status)).observe(time.perf_counter() - started)
            response = web.json_response({"code": exc.reason, "message": exc.message}, status=exc.http_status)
            return retry_later(response) if exc.http_status == 503 else response
        except TimeoutError:
            return self._unavailable("DEADLINE_EXCEEDED", "could not record the notification in time; retry", started)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"code": "MALFORMED_BODY", "message": "body too large"}, status=413)
        except RequestPayloadError:
            return web.json_response({"code": "MALFORMED_BODY", "message": "the body could not be read"}, status=400)
        except Exception as exc:
            cause = unavailable_cause(exc)
            if cause is not None:
                log.warning("notification not recorded: %s unavailable (%s)", cause, type(exc).__name__)
                return self._unavailable(f"{cause.upper()}_UNAVAILABLE", f"the {cause} is unavailable; retry", started)
            log.exception("notification failed")
            metrics.WEBHOOK_LATENCY.labels(status="500").observe(time.perf_counter() - started)
            return web.json_response({"code": "INTERNAL", "message": "internal error"}, status=500)
        metrics.WEBHOOK_LATENCY.labels(status="200").observe(time.perf_counter() - started)
        log.info(
            "notification recorded",
            extra={
                "merchant_id": merchant_hint,
                "duplicate": duplicate,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return web.json_response({"code": "SUCCESS", "message": "OK"})

    @staticmethod
    def _unavailable(reason: str, message: str, started: float) -> web.Response:
        REJECTIONS.labels(method="webhook", reason=reason).inc()
        metrics.WEBHOOK_LATENCY.labels(status="503").observe(time.perf_counter() - started)
        return retry_later(web.json_response({"code": reason, "message": message}, status=503))

    @staticmethod
    def _check_request(request: web.Request, merchant_hint: str) -> None:
        """What needs no work to refuse: headers, the merchant segment, the body's encoding."""
        for name, value in request.headers.items():
            # Bytes that are not UTF-8 arrive as lone surrogates; no Wechatpay-* header holds one.
            if name.lower().startswith("wechatpay-") and bad_character(value) is not None:
                raise Unauthenticated("MALFORMED_HEADERS", f"{name[:40]} holds bytes that are not text")
        if merchant_hint and not _MERCHANT_ID.fullmatch(merchant_hint):
            raise NotFound("UNKNOWN_MERCHANT", "no merchant registered with this id")
        if content_encoding(request) is not None:
            raise InvalidArgument("UNSUPPORTED_CONTENT_ENCODING", "notification bodies are not compressed")

    async def _process(self, request: web.Request, body: bytes, merchant_hint: str) -> bool:
        serial = request.headers.get(wx.HEADER_SERIAL, "")
        signature = request.headers.get(wx.HEADER_SIGNATURE, "")
        timestamp = request.headers.get(wx.HEADER_TIMESTAMP, "")
        nonce = request.headers.get(wx.HEADER_NONCE, "")
        if not (
            _SERIAL.fullmatch(serial) and signature and _TIMESTAMP.fullmatch(timestamp) and _NONCE.fullmatch(nonce)
        ):
            raise Unauthenticated("MALFORMED_HEADERS", "Wechatpay-Serial/Signature/Timestamp/Nonce missing or bad")
        if signature.startswith(wx.SIGNTEST_PREFIX):
            raise Unauthenticated("SIGNTEST_PROBE", "signature probe rejected")
        if abs(time.time() - int(timestamp)) > self._clock_skew_s:
            raise Unauthenticated("STALE_TIMESTAMP", f"timestamp more than {self._clock_skew_s} s off")
        keys = await self._merchant(merchant_hint, serial)
        public_key = keys.platform_keys.get(serial)
        if public_key is None:
            keys = await self._directory.get(keys.merchant_id, refresh=True) or keys
            public_key = keys.platform_keys.get(serial)
            if public_key is None:
                raise Unauthenticated("UNKNOWN_SERIAL", "no trusted platform key with this serial")
        if not wx.verify_signature(public_key, timestamp, nonce, body, signature):
            raise Unauthenticated("BAD_SIGNATURE", "signature does not verify with the platform key")
        notification = notification_from_body(body)
        plaintext = _decrypt(keys, notification["resource"])
        if plaintext is None:
            # The platform's signature holds, so the merchant's APIv3 key may have just been replaced
            # (`merchant add --rotate-apiv3-key`): re-read it once (refreshes are rate-limited) and retry.
            fresh = await self._directory.get(keys.merchant_id, refresh=True)
            if fresh is not None and fresh.apiv3_key != keys.apiv3_key:
                keys = fresh
                plaintext = _decrypt(keys, notification["resource"])
        if plaintext is None:
            raise InvalidArgument("UNDECRYPTABLE_RESOURCE", "resource does not decrypt with the APIv3 key")
        resource = load_json_object(plaintext, "MALFORMED_RESOURCE", "the decrypted resource")
        if resource.get("mchid") != keys.merchant_id:
            raise PermissionDenied("MERCHANT_MISMATCH", "resource mchid is not the merchant of this notify URL")
        if notification["event_type"] == wx.EVENT_REFUND_SUCCESS:
            refund = await self._handlers.record_notified_refund(refund_from_resource(resource), nonce)
            return refund.duplicate
        payment = payment_from_resource(resource, self._payer_hash_key)
        outcome = await self._handlers.record_notified_payment(payment, nonce)
        return outcome.duplicate

    async def _merchant(self, merchant_hint: str, serial: str) -> MerchantKeys:
        merchant_id = merchant_hint or await self._directory.merchant_for_serial(serial)
        if not merchant_id:
            raise Unauthenticated("UNKNOWN_SERIAL", "no single merchant trusts this serial; use /{merchant_id}")
        keys = await self._directory.get(merchant_id)
        if keys is None:
            raise NotFound("UNKNOWN_MERCHANT", "no merchant registered with this id")
        return keys


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "SERVING"})


async def start_webhook(
    receiver: NotificationReceiver, host: str, port: int, *, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
    """Bind the webhook; returns the runner (call cleanup() to stop) and the bound port. `reuse_port`
    shares the port with the service's other workers (fapiao_runtime.workers)."""
    runner = web.AppRunner(receiver.app(), access_log=None, handle_signals=False, **SERVER_ARGS)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    await site.start()
    # AppRunner.addresses: the bound (host, port, ...) of each listening socket.
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
