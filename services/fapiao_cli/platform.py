"""The local payment platform: signs and encrypts WeChat Pay v3 style notifications and posts them."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from payment_intake.wechatpay import (
    EVENT_REFUND_SUCCESS,
    PlatformSigner,
    refund_resource,
    transaction_resource,
)

from fapiao_cli.local import MerchantCredentials, load_merchant_credentials

NOTIFY_PATH = "/v1/notify/wechatpay"


@dataclass(frozen=True)
class NotificationOutcome:
    status: int
    answer: dict[str, object]
    transaction_id: str
    out_trade_no: str
    # The exact notification body, for a redelivery (which the platform sends with a fresh nonce).
    body: bytes = b""

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


class PaymentPlatform:
    """Acts as WeChat Pay for one merchant: it holds the merchant's APIv3 key and the platform key."""

    def __init__(self, credentials: MerchantCredentials, base_url: str) -> None:
        key = serialization.load_pem_private_key(credentials.platform_key_file.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the platform key must be an RSA private key")
        self.credentials = credentials
        self.signer = PlatformSigner(credentials.platform_serial, key)
        self.url = f"{base_url.rstrip('/')}{NOTIFY_PATH}/{credentials.merchant_id}"

    @classmethod
    def for_merchant(cls, merchant_id: str, base_url: str) -> PaymentPlatform:
        return cls(load_merchant_credentials(merchant_id), base_url)

    async def _post(self, session: aiohttp.ClientSession, body: bytes) -> tuple[int, dict[str, object]]:
        delivery = self.signer.deliver(body)
        async with session.post(self.url, data=delivery.body, headers=delivery.headers) as response:
            text = await response.text()
            try:
                answer = json.loads(text) if text else {}
            except json.JSONDecodeError:
                answer = {"raw": text[:200]}
            return response.status, answer

    async def pay(
        self,
        session: aiohttp.ClientSession,
        amount_fen: int,
        *,
        out_trade_no: str | None = None,
        transaction_id: str | None = None,
        openid: str | None = None,
    ) -> NotificationOutcome:
        """Post a TRANSACTION.SUCCESS notification for a new payment of `amount_fen`."""
        transaction_id = transaction_id or "4200" + secrets.token_hex(12)
        out_trade_no = out_trade_no or "order-" + secrets.token_hex(8)
        resource = transaction_resource(
            mchid=self.credentials.merchant_id,
            transaction_id=transaction_id,
            out_trade_no=out_trade_no,
            total_fen=amount_fen,
            openid=openid or "o" + secrets.token_hex(13),
        )
        body = self.signer.notification_body(self.credentials.apiv3_key.encode(), resource)
        status, answer = await self._post(session, body)
        return NotificationOutcome(status, answer, transaction_id, out_trade_no, body)

    async def redeliver(self, session: aiohttp.ClientSession, earlier: NotificationOutcome) -> NotificationOutcome:
        """Send the same notification again, as the platform does until it gets a 2xx (new nonce, new time)."""
        status, answer = await self._post(session, earlier.body)
        return NotificationOutcome(status, answer, earlier.transaction_id, earlier.out_trade_no, earlier.body)

    async def refund(
        self,
        session: aiohttp.ClientSession,
        *,
        transaction_id: str,
        out_trade_no: str,
        refund_fen: int,
        total_fen: int,
        refund_id: str | None = None,
    ) -> NotificationOutcome:
        """Post a REFUND.SUCCESS notification for (part of) an earlier payment."""
        resource = refund_resource(
            mchid=self.credentials.merchant_id,
            transaction_id=transaction_id,
            out_trade_no=out_trade_no,
            refund_id=refund_id or "5030" + secrets.token_hex(10),
            refund_fen=refund_fen,
            total_fen=total_fen,
        )
        body = self.signer.notification_body(
            self.credentials.apiv3_key.encode(), resource, event_type=EVENT_REFUND_SUCCESS
        )
        status, answer = await self._post(session, body)
        return NotificationOutcome(status, answer, transaction_id, out_trade_no)
