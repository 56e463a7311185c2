"""MerchantAdminService: operators register, list and revoke merchants and rotate the platform keys they
trust (merchants, platform_keys rows).

Served on payment_intake's admin port (mutual TLS only); every RPC first requires an operator
certificate (`fapiao_runtime.operators.require_operator`), then runs `payment_intake.merchants`.
"""

from __future__ import annotations

import hmac

import asyncpg
import grpc
from fapiao.admin.v1 import merchant_admin_service_pb2 as mpb
from fapiao.admin.v1 import merchant_admin_service_pb2_grpc as mpb_grpc
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.operators import require_operator
from fapiao_runtime.sealing import SecretsBox

from payment_intake import merchants
from payment_intake.webhook import NOTIFY_PATH

SERVICE_NAME = "fapiao.admin.v1.MerchantAdminService"


def merchant_message(entry: merchants.MerchantEntry) -> mpb.Merchant:
    profile = entry.profile
    return mpb.Merchant(
        merchant_id=profile.merchant_id,
        legal_name=profile.legal_name,
        tax_id=profile.tax_id,
        region_code=profile.region_code,
        default_tax_classification_code=profile.default_tax_classification_code,
        default_item_name=profile.default_item_name,
        default_tax_rate_bp=profile.default_tax_rate_bp,
        active=entry.active,
        trusted_platform_serials=list(entry.trusted_serials),
        notify_path=f"{NOTIFY_PATH}/{profile.merchant_id}",
    )


def _pem_text(pem: bytes) -> str:
    try:
        return pem.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidArgument("INVALID_PLATFORM_KEY", "a platform key must be ASCII PEM") from None


class MerchantAdminServicer(mpb_grpc.MerchantAdminServiceServicer):
    def __init__(self, pool: asyncpg.Pool, secrets_key: bytes | SecretsBox) -> None:
        self._pool = pool
        self._secrets_key = secrets_key

    async def RegisterMerchant(
        self, request: mpb.RegisterMerchantRequest, context: grpc.aio.ServicerContext
    ) -> mpb.RegisterMerchantResponse:
        require_operator(context)
        if request.apiv3_key_if_new and request.replace_apiv3_key:
            raise InvalidArgument("INVALID_APIV3_KEY", "give apiv3_key_if_new or replace_apiv3_key, not both")
        offered = (request.replace_apiv3_key or request.apiv3_key_if_new).encode()
        profile = merchants.MerchantProfile(
            request.merchant_id,
            request.legal_name,
            request.tax_id,
            request.region_code,
            request.default_tax_classification_code,
            request.default_item_name,
            request.default_tax_rate_bp,
        )
        async with self._pool.acquire() as conn:
            registered = await merchants.register_merchant(
                conn,
                self._secrets_key,
                profile,
                apiv3_key=request.replace_apiv3_key.encode() or None,
                key_if_new=request.apiv3_key_if_new.encode() or None,
                platform_keys={k.serial: _pem_text(k.public_key_pem) for k in request.platform_keys},
            )
            # Compared with the stored key rather than taken from this call, so a repeat answers the same.
            stored = await merchants.stored_apiv3_key(conn, self._secrets_key, registered.profile.merchant_id)
            entry = await merchants.find_merchant(conn, registered.profile.merchant_id)
        assert entry is not None
        return mpb.RegisterMerchantResponse(
            merchant=merchant_message(entry),
            apiv3_key_stored=bool(offered) and stored is not None and hmac.compare_digest(stored, offered),
        )

    async def ListMerchants(
        self, request: mpb.ListMerchantsRequest, context: grpc.aio.ServicerContext
    ) -> mpb.ListMerchantsResponse:
        require_operator(context)
        async with self._pool.acquire() as conn:
            entries = await merchants.list_merchants(conn)
        return mpb.ListMerchantsResponse(merchants=[merchant_message(e) for e in entries])

    async def RevokeMerchant(
        self, request: mpb.RevokeMerchantRequest, context: grpc.aio.ServicerContext
    ) -> mpb.RevokeMerchantResponse:
        require_operator(context)
        async with self._pool.acquire() as conn:
            entry = await merchants.revoke_merchant(conn, request.merchant_id)
        return mpb.RevokeMerchantResponse(merchant=merchant_message(entry))

    async def AddPlatformKey(
        self, request: mpb.AddPlatformKeyRequest, context: grpc.aio.ServicerContext
    ) -> mpb.AddPlatformKeyResponse:
        require_operator(context)
        async with self._pool.acquire() as conn:
            entry = await merchants.add_platform_key(
                conn, request.merchant_id, request.key.serial, _pem_text(request.key.public_key_pem)
            )
        return mpb.AddPlatformKeyResponse(merchant=merchant_message(entry))

    async def RemovePlatformKey(
        self, request: mpb.RemovePlatformKeyRequest, context: grpc.aio.ServicerContext
    ) -> mpb.RemovePlatformKeyResponse:
        require_operator(context)
        async with self._pool.acquire() as conn:
            entry, removed = await merchants.remove_platform_key(conn, request.merchant_id, request.serial)
        return mpb.RemovePlatformKeyResponse(merchant=merchant_message(entry), removed=removed)
