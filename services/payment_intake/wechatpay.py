"""WeChat Pay API v3 notification protocol, both sides.

Platform side (what the payment platform does; used by the demo, the CLI and the benchmarks):
PlatformSigner builds a notification body, encrypts the resource with the merchant's APIv3 key
(AEAD_AES_256_GCM, 12-byte nonce, associated_data) and signs "timestamp\\nnonce\\nbody\\n" with
SHA256withRSA. Receiver side (used by the webhook): verify_signature and decrypt_resource.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HEADER_SERIAL = "Wechatpay-Serial"
HEADER_SIGNATURE = "Wechatpay-Signature"
HEADER_TIMESTAMP = "Wechatpay-Timestamp"
HEADER_NONCE = "Wechatpay-Nonce"
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
ALGORITHM = "AEAD_AES_256_GCM"
APIV3_KEY_BYTES = 32
EVENT_TRANSACTION_SUCCESS = "TRANSACTION.SUCCESS"
EVENT_REFUND_SUCCESS = "REFUND.SUCCESS"
_CHINA = timezone(timedelta(hours=8))
_ALPHANUMERIC = string.ascii_letters + string.digits


class ResourceDecryptError(Exception):
    """The resource does not decrypt (wrong APIv3 key, tampered ciphertext, nonce or associated data)."""


def generate_apiv3_key() -> bytes:
    """A new APIv3 key: 32 random alphanumeric ASCII characters, used directly as the AES-256 key."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(APIV3_KEY_BYTES)).encode()


def signed_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """The exact bytes SHA256withRSA covers: timestamp, nonce and body, each followed by a newline."""
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def verify_signature(public_key: rsa.RSAPublicKey, timestamp: str, nonce: str, body: bytes, signature_b64: str) -> bool:
    """True when `signature_b64` is a valid SHA256withRSA (PKCS#1 v1.5) signature of the message."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, signed_message(timestamp, nonce, body), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    """Load an RSA public key (SubjectPublicKeyInfo PEM); raise ValueError for anything else."""
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise ValueError("platform key must be an RSA public key of at least 2048 bits")
    return key


def encrypt_resource(apiv3_key: bytes, plaintext: bytes, associated_data: str = "transaction") -> dict[str, str]:
    """The `resource` object of a notification: AES-256-GCM under the APIv3 key, 12-character nonce."""
    nonce = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(12))
    ciphertext = AESGCM(apiv3_key).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {
        "original_type": "transaction",
        "algorithm": ALGORITHM,
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "associated_data": associated_data,
        "nonce": nonce,
    }


def decrypt_resource(apiv3_key: bytes, resource: dict[str, Any]) -> bytes:
    """Decrypt a notification resource; raise ResourceDecryptError on any mismatch."""
    try:
        ciphertext = base64.b64decode(str(resource["ciphertext"]), validate=True)
        nonce = str(resource["nonce"]).encode()
        associated = str(resource.get("associated_data") or "").encode()
        if len(nonce) != 12:
            raise ResourceDecryptError("resource nonce must be 12 bytes")
        return AESGCM(apiv3_key).decrypt(nonce, ciphertext, associated)
    except (InvalidTag, ValueError, KeyError) as exc:
        raise ResourceDecryptError(type(exc).__name__) from None


def rfc3339(moment: datetime) -> str:
    """WeChat's time format: RFC 3339 in China Standard Time, second precision."""
    return moment.astimezone(_CHINA).replace(microsecond=0).isoformat()


def transaction_resource(
    *,
    mchid: str,
    transaction_id: str,
    out_trade_no: str,
    total_fen: int,
    payer_total_fen: int | None = None,
    openid: str = "",
    success_time: datetime | None = None,
    trade_state: str = "SUCCESS",
    appid: str = "wxd678efh567hg6787",
    trade_type: str = "JSAPI",
) -> dict[str, Any]:
    """The decrypted resource of a TRANSACTION.SUCCESS notification."""
    return {
        "appid": appid,
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id,
        "trade_type": trade_type,
        "trade_state": trade_state,
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "attach": "",
        "success_time": rfc3339(success_time or datetime.now(UTC)),
        "payer": {"openid": openid},
        "amount": {
            "total": total_fen,
            "payer_total": total_fen if payer_total_fen is None else payer_total_fen,
            "currency": "CNY",
            "payer_currency": "CNY",
        },
    }


def refund_resource(
    *,
    mchid: str,
    transaction_id: str,
    out_trade_no: str,
    refund_id: str,
    refund_fen: int,
    total_fen: int,
    success_time: datetime | None = None,
    refund_status: str = "SUCCESS",
) -> dict[str, Any]:
    """The decrypted resource of a REFUND.SUCCESS notification."""
    return {
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id,
        "out_refund_no": f"R{refund_id}",
        "refund_id": refund_id,
        "refund_status": refund_status,
        "success_time": rfc3339(success_time or datetime.now(UTC)),
        "user_received_account": "支付用户零钱",
        "amount": {"total": total_fen, "refund": refund_fen, "payer_total": total_fen, "payer_refund": refund_fen},
    }


@dataclass(frozen=True)
class Delivery:
    """One HTTP delivery of a notification: the headers and the exact body bytes."""

    headers: dict[str, str]
    body: bytes


@dataclass
class PlatformSigner:
    """The payment platform's side: holds a platform private key and its certificate serial."""

    serial: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, serial: str | None = None) -> PlatformSigner:
        """A fresh 2048-bit platform key (tests and demos generate their own; nothing is committed)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(serial or secrets.token_hex(20).upper(), key)

    def public_key_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def sign(self, timestamp: str, nonce: str, body: bytes) -> str:
        signature = self.private_key.sign(signed_message(timestamp, nonce, body), padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode()

    def notification_body(
        self,
        apiv3_key: bytes,
        resource: dict[str, Any],
        *,
        event_type: str = EVENT_TRANSACTION_SUCCESS,
        notification_id: str | None = None,
    ) -> bytes:
        """The JSON body of a notification (its id stays the same across redeliveries)."""
        plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
        associated = "refund" if event_type == EVENT_REFUND_SUCCESS else "transaction"
        body = {
            "id": notification_id or str(uuid.uuid4()),
            "create_time": rfc3339(datetime.now(UTC)),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "退款成功" if event_type == EVENT_REFUND_SUCCESS else "支付成功",
            "resource": encrypt_resource(apiv3_key, plaintext, associated),
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    def deliver(self, body: bytes, *, timestamp: int | None = None, nonce: str | None = None) -> Delivery:
        """Sign one delivery of `body`; each delivery gets a fresh nonce and the current timestamp."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or secrets.token_hex(16).upper()
        headers = {
            HEADER_SERIAL: self.serial,
            HEADER_TIMESTAMP: ts,
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: self.sign(ts, nonce, body),
            "Content-Type": "application/json",
        }
        return Delivery(headers, body)


async def send_notification(
    url: str,
    signer: PlatformSigner,
    apiv3_key: bytes,
    resource: dict[str, Any],
    *,
    event_type: str = EVENT_TRANSACTION_SUCCESS,
    notification_id: str | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, dict[str, Any]]:
    """Deliver one notification as the payment platform would (for the demo and `fapiao pay`).

    `url` is the merchant's notify URL (e.g. http://127.0.0.1:8081/v1/notify/wechatpay/1230000109).
    Returns the HTTP status and the JSON answer ({"code": "SUCCESS", ...} or a rejection reason).
    """
    import aiohttp  # only the sending side needs an HTTP client

    body = signer.notification_body(apiv3_key, resource, event_type=event_type, notification_id=notification_id)
    delivery = signer.deliver(body)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, data=delivery.body, headers=delivery.headers) as response,
    ):
        return response.status, await response.json(content_type=None)


def load_private_key(pem: bytes, serial: str) -> PlatformSigner:
    """A PlatformSigner from a PKCS#8 PEM private key (as written by `cli platform-key generate`)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("platform key must be an RSA private key")
    return PlatformSigner(serial, key)
