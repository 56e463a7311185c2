"""Merchant registry: profiles, sealed APIv3 keys, trusted platform keys; an in-process read cache.

Platform keys are per merchant: each merchant lists the payment-platform key serials it trusts (as
WeChat Pay merchants download the platform certificates for their own mchid). Rotation = add the new
serial (the platform announces it ahead of use), later remove the old one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import asyncpg
from cryptography.hazmat.primitives.asymmetric import rsa
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.db import create_pool
from fapiao_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from fapiao_runtime.outbox import enqueue
from fapiao_runtime.sealing import SecretsBox
from fapiao_runtime.tax_id import validate_uscc
from fapiao_runtime.tax_rates import NATIONAL_VAT_RATES_BP

from payment_intake.events import merchant_registered
from payment_intake.sealing import SealedKeyError, seal, unseal
from payment_intake.settings import DB_SCHEMA
from payment_intake.wechatpay import APIV3_KEY_BYTES, load_public_key

_MERCHANT_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SERIAL = re.compile(r"[A-Za-z0-9]{1,64}")
_TAX_CODE = re.compile(r"[0-9]{19}")
_REGION = re.compile(r"[0-9]{2}")


@dataclass(frozen=True)
class MerchantProfile:
    merchant_id: str
    legal_name: str
    tax_id: str
    region_code: str
    default_tax_classification_code: str
    default_item_name: str
    default_tax_rate_bp: int


@dataclass(frozen=True)
class MerchantKeys:
    """What the webhook needs for one merchant. repr hides the APIv3 key."""

    merchant_id: str
    apiv3_key: bytes = field(repr=False)
    platform_keys: Mapping[str, rsa.RSAPublicKey] = field(repr=False)


def validate_profile(profile: MerchantProfile) -> MerchantProfile:
    """Return the profile with a normalised tax id; InvalidArgument with a precise reason otherwise."""
    if not _MERCHANT_ID.fullmatch(profile.merchant_id):
        raise InvalidArgument("INVALID_MERCHANT_ID", "merchant_id must be 1-32 of [A-Za-z0-9_-]")
    if not 0 < len(profile.legal_name.strip()) <= 200:
        raise InvalidArgument("INVALID_LEGAL_NAME", "legal_name must be 1-200 characters")
    tax_id = validate_uscc(profile.tax_id)
    if not _REGION.fullmatch(profile.region_code):
        raise InvalidArgument("INVALID_REGION_CODE", "region_code must be 2 digits")
    if not _TAX_CODE.fullmatch(profile.default_tax_classification_code):
        raise InvalidArgument("INVALID_TAX_CLASSIFICATION", "default tax classification code must be 19 digits")
    if not 0 < len(profile.default_item_name) <= 100:
        raise InvalidArgument("INVALID_ITEM_NAME", "default item name must be 1-100 characters")
    if profile.default_tax_rate_bp not in NATIONAL_VAT_RATES_BP:
        raise InvalidArgument(
            "INVALID_TAX_RATE", "default tax rate must be a national VAT rate (0, 1, 3, 5, 6, 9, 13%)"
        )
    return MerchantProfile(
        profile.merchant_id,
        profile.legal_name.strip(),
        tax_id,
        profile.region_code,
        profile.default_tax_classification_code,
        profile.default_item_name,
        profile.default_tax_rate_bp,
    )


def _check_platform_key(serial: str, pem: str) -> None:
    if not _SERIAL.fullmatch(serial):
        raise InvalidArgument("INVALID_SERIAL", "platform key serial must be 1-64 alphanumeric characters")
    try:
        load_public_key(pem)
    except ValueError as exc:
        raise InvalidArgument("INVALID_PLATFORM_KEY", str(exc)) from None


def _registered_event(profile: MerchantProfile) -> payments_pb2.MerchantRegistered:
    return payments_pb2.MerchantRegistered(
        merchant_id=profile.merchant_id,
        legal_name=profile.legal_name,
        tax_id=profile.tax_id,
        region_code=profile.region_code,
        default_tax_classification_code=profile.default_tax_classification_code,
        default_item_name=profile.default_item_name,
        default_tax_rate_bp=profile.default_tax_rate_bp,
    )


@dataclass(frozen=True)
class Registration:
    profile: MerchantProfile
    created: bool  # False: an existing merchant was updated
    key_stored: bool  # the APIv3 key passed (apiv3_key, or key_if_new for a new merchant) is now the stored one


async def register_merchant(
    conn: asyncpg.Connection,
    secrets_key: bytes | SecretsBox,
    profile: MerchantProfile,
    *,
    apiv3_key: bytes | None,
    platform_keys: Mapping[str, str],
    key_if_new: bytes | None = None,
) -> Registration:
    """Create or update (and re-activate) a merchant in one transaction with its MerchantRegistered event.

    apiv3_key replaces the stored key (rotation); None keeps it. key_if_new is the key of a merchant that
    does not exist yet and is ignored for an existing one, so re-running a registration never replaces
    the key the payment system holds by accident. A new merchant needs one of the two. Platform keys are
    added (serial -> SubjectPublicKeyInfo PEM); existing serials are left as they are.
    """
    profile = validate_profile(profile)
    for key in (apiv3_key, key_if_new):
        if key is not None and len(key) != APIV3_KEY_BYTES:
            raise InvalidArgument("INVALID_APIV3_KEY", f"the APIv3 key must be {APIV3_KEY_BYTES} bytes")
    for serial, pem in platform_keys.items():
        _check_platform_key(serial, pem)
    replacing = seal(secrets_key, apiv3_key, context=profile.merchant_id) if apiv3_key is not None else None
    first_key = apiv3_key if apiv3_key is not None else key_if_new
    fields = (
        profile.merchant_id,
        profile.legal_name,
        profile.tax_id,
        profile.region_code,
        profile.default_tax_classification_code,
        profile.default_item_name,
        profile.default_tax_rate_bp,
    )
    async with conn.transaction():
        created = False
        if first_key is not None:
            # Insert-or-nothing decides creation atomically: of two concurrent first registrations,
            # only the one whose key is stored reports it.
            sealed = replacing or seal(secrets_key, first_key, context=profile.merchant_id)
            created = bool(
                await conn.fetchval(
                    "INSERT INTO merchants (merchant_id, legal_name, tax_id, region_code,"
                    " default_tax_classification_code, default_item_name, default_tax_rate_bp, apiv3_key_sealed)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (merchant_id) DO NOTHING RETURNING true",
                    *fields,
                    sealed,
                )
            )
        if not created:
            updated = await conn.execute(
                "UPDATE merchants SET legal_name = $2, tax_id = $3, region_code = $4,"
                " default_tax_classification_code = $5, default_item_name = $6, default_tax_rate_bp = $7,"
                " apiv3_key_sealed = COALESCE($8, apiv3_key_sealed), revoked_at = NULL, updated_at = now()"
                " WHERE merchant_id = $1",
                *fields,
                replacing,
            )
            if updated == "UPDATE 0":
                raise InvalidArgument("INVALID_APIV3_KEY", "a new merchant needs an APIv3 key")
        for serial, pem in platform_keys.items():
            await conn.execute(
                "INSERT INTO platform_keys (merchant_id, serial, public_key_pem) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                profile.merchant_id,
                serial,
                pem,
            )
        await enqueue(conn, [merchant_registered(_registered_event(profile))])
    return Registration(profile, created, key_stored=created or apiv3_key is not None)


async def register_merchant_at(
    database_url: str,
    secrets_key: bytes | SecretsBox,
    profile: MerchantProfile,
    *,
    apiv3_key: bytes | None,
    platform_keys: Mapping[str, str],
    schema: str = DB_SCHEMA,
) -> Registration:
    """register_merchant over a connection of its own (tools, benchmarks and tests outside the service)."""
    pool = await create_pool(database_url, schema, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            return await register_merchant(conn, secrets_key, profile, apiv3_key=apiv3_key, platform_keys=platform_keys)
    finally:
        await pool.close()


@dataclass(frozen=True)
class MerchantEntry:
    """A merchant as the admin API lists it: profile, state and trusted serials (no key material)."""

    profile: MerchantProfile
    active: bool
    trusted_serials: tuple[str, ...]


_ENTRY_QUERY = (
    "SELECT m.merchant_id, legal_name, tax_id, region_code, default_tax_classification_code, default_item_name,"
    " default_tax_rate_bp, revoked_at IS NULL AS active,"
    " ARRAY(SELECT serial FROM platform_keys p WHERE p.merchant_id = m.merchant_id ORDER BY added_at, serial)"
    " AS serials FROM merchants m"
)


def _entry(row: asyncpg.Record) -> MerchantEntry:
    profile = MerchantProfile(
        row["merchant_id"],
        row["legal_name"],
        row["tax_id"],
        row["region_code"],
        row["default_tax_classification_code"],
        row["default_item_name"],
        row["default_tax_rate_bp"],
    )
    return MerchantEntry(profile, bool(row["active"]), tuple(row["serials"]))


async def find_merchant(conn: asyncpg.Connection, merchant_id: str) -> MerchantEntry | None:
    row = await conn.fetchrow(f"{_ENTRY_QUERY} WHERE m.merchant_id = $1", merchant_id)
    return None if row is None else _entry(row)


async def list_merchants(conn: asyncpg.Connection) -> list[MerchantEntry]:
    return [_entry(row) for row in await conn.fetch(f"{_ENTRY_QUERY} ORDER BY m.merchant_id")]


async def revoke_merchant(conn: asyncpg.Connection, merchant_id: str) -> MerchantEntry:
    """Revoke a merchant: the webhook refuses its notifications (within the directory's cache TTL).

    Revoking a revoked merchant keeps its first revocation time. InvalidArgument for a malformed id,
    NotFound UNKNOWN_MERCHANT for an unknown one.
    """
    _check_merchant_id(merchant_id)
    async with conn.transaction():
        status = await conn.execute(
            "UPDATE merchants SET revoked_at = COALESCE(revoked_at, now()), updated_at = now() WHERE merchant_id = $1",
            merchant_id,
        )
        if status == "UPDATE 0":
            raise NotFound("UNKNOWN_MERCHANT", "no such merchant")
        entry = await find_merchant(conn, merchant_id)
    assert entry is not None
    return entry


async def stored_apiv3_key(conn: asyncpg.Connection, secrets_key: bytes | SecretsBox, merchant_id: str) -> bytes | None:
    """The merchant's APIv3 key, unsealed (never logged); None for an unknown merchant."""
    sealed = await conn.fetchval("SELECT apiv3_key_sealed FROM merchants WHERE merchant_id = $1", merchant_id)
    if sealed is None:
        return None
    try:
        return unseal(secrets_key, bytes(sealed), context=merchant_id)
    except SealedKeyError:
        raise Unavailable("MERCHANT_KEY_UNAVAILABLE", "the merchant's APIv3 key cannot be opened") from None


def _check_merchant_id(merchant_id: str) -> None:
    if not _MERCHANT_ID.fullmatch(merchant_id):
        raise InvalidArgument("INVALID_MERCHANT_ID", "merchant_id must be 1-32 of [A-Za-z0-9_-]")


async def add_platform_key(conn: asyncpg.Connection, merchant_id: str, serial: str, pem: str) -> MerchantEntry:
    """Trust one more platform key serial for the merchant (rotation step 1); the same serial again
    replaces its key. Returns the merchant. InvalidArgument for a malformed id, serial or key, NotFound
    UNKNOWN_MERCHANT for an unknown merchant."""
    _check_merchant_id(merchant_id)
    _check_platform_key(serial, pem)
    async with conn.transaction():
        if not await conn.fetchval("SELECT true FROM merchants WHERE merchant_id = $1", merchant_id):
            raise NotFound("UNKNOWN_MERCHANT", "no such merchant")
        await conn.execute(
            "INSERT INTO platform_keys (merchant_id, serial, public_key_pem) VALUES ($1, $2, $3)"
            " ON CONFLICT (merchant_id, serial) DO UPDATE SET public_key_pem = EXCLUDED.public_key_pem",
            merchant_id,
            serial,
            pem,
        )
        entry = await find_merchant(conn, merchant_id)
    assert entry is not None
    return entry


async def remove_platform_key(conn: asyncpg.Connection, merchant_id: str, serial: str) -> tuple[MerchantEntry, bool]:
    """Stop trusting a retired platform key serial (rotation step 2); returns the merchant and whether the
    serial was trusted. The merchant's last trusted serial stays: without one no notification of the
    merchant verifies (FailedPrecondition LAST_PLATFORM_KEY; add the new serial first, or revoke the
    merchant). The merchant's row is locked, so two removals cannot both leave it with none."""
    _check_merchant_id(merchant_id)
    if not _SERIAL.fullmatch(serial):
        raise InvalidArgument("INVALID_SERIAL", "platform key serial must be 1-64 alphanumeric characters")
    async with conn.transaction():
        if not await conn.fetchval("SELECT true FROM merchants WHERE merchant_id = $1 FOR UPDATE", merchant_id):
            raise NotFound("UNKNOWN_MERCHANT", "no such merchant")
        serials = await trusted_serials(conn, merchant_id)
        removed = serial in serials
        if removed:
            if len(serials) == 1:
                raise FailedPrecondition(
                    "LAST_PLATFORM_KEY", "the merchant's last trusted platform key; add its successor first"
                )
            await conn.execute("DELETE FROM platform_keys WHERE merchant_id = $1 AND serial = $2", merchant_id, serial)
        entry = await find_merchant(conn, merchant_id)
    assert entry is not None
    return entry, removed


async def trusted_serials(conn: asyncpg.Connection, merchant_id: str) -> list[str]:
    rows = await conn.fetch("SELECT serial FROM platform_keys WHERE merchant_id = $1 ORDER BY added_at", merchant_id)
    return [r["serial"] for r in rows]


class MerchantDirectory:
    """Read-through cache of merchant keys for the request path (bounded staleness: ttl_s).

    An unknown serial forces a refresh, so a newly added platform key works immediately; forced
    refreshes of one merchant happen at most once per second, so forged serials cannot flood the database.
    """

    def __init__(
        self, pool: asyncpg.Pool, secrets_key: bytes | SecretsBox, *, ttl_s: float = 30.0, max_entries: int = 10_000
    ):
        self._pool = pool
        self._secrets_key = secrets_key
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, MerchantKeys | None]] = {}
        self._forced_at: dict[str, float] = {}

    async def get(self, merchant_id: str, *, refresh: bool = False) -> MerchantKeys | None:
        """The merchant's keys, or None if there is no such merchant."""
        now = time.monotonic()
        cached = self._entries.get(merchant_id)
        if refresh and now - self._forced_at.get(merchant_id, -1e9) < 1.0:
            refresh = False
        if cached is not None and not refresh and cached[0] > now:
            return cached[1]
        if refresh:
            if len(self._forced_at) >= self._max_entries:
                self._forced_at.clear()
            self._forced_at[merchant_id] = now
        keys = await self._load(merchant_id)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        # Unknown merchants are remembered briefly only, so a registration shows up within a second.
        self._entries[merchant_id] = (now + (self._ttl_s if keys else 1.0), keys)
        return keys

    async def _load(self, merchant_id: str) -> MerchantKeys | None:
        async with self._pool.acquire() as conn:
            # A revoked merchant is no merchant for the request path.
            sealed = await conn.fetchval(
                "SELECT apiv3_key_sealed FROM merchants WHERE merchant_id = $1 AND revoked_at IS NULL", merchant_id
            )
            if sealed is None:
                return None
            rows = await conn.fetch(
                "SELECT serial, public_key_pem FROM platform_keys WHERE merchant_id = $1", merchant_id
            )
        try:
            apiv3_key = unseal(self._secrets_key, bytes(sealed), context=merchant_id)
        except SealedKeyError:
            raise Unavailable("MERCHANT_KEY_UNAVAILABLE", "the merchant's APIv3 key cannot be opened") from None
        return MerchantKeys(merchant_id, apiv3_key, {r["serial"]: load_public_key(r["public_key_pem"]) for r in rows})

    async def merchant_for_serial(self, serial: str) -> str | None:
        """The single merchant trusting `serial` (for notify URLs without a merchant segment), else None."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT merchant_id FROM platform_keys WHERE serial = $1 LIMIT 2", serial)
        return rows[0]["merchant_id"] if len(rows) == 1 else None
