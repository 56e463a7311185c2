"""Unit tests with no broker or database: tax ids, validation, fingerprints, crypto helpers, resource parsing."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.tax_id import is_valid_uscc, uscc_check_char, validate_uscc
from payment_intake import domain
from payment_intake.sealing import SealedKeyError, payer_ref, seal, unseal
from payment_intake.settings import decode_key, load_key
from payment_intake.webhook import payment_from_resource, refund_from_resource
from payment_intake.wechatpay import (
    ResourceDecryptError,
    decrypt_resource,
    encrypt_resource,
    generate_apiv3_key,
    refund_resource,
    transaction_resource,
    verify_signature,
)

from tests.payment_intake.support import OTHER_PLATFORM, PLATFORM

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def _uscc_by_hand(first17: str) -> str:
    """Independent implementation of the GB 32100-2015 check: weights 3^i mod 31, C18 = 31 - sum mod 31."""
    alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    weights = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28]
    total = sum(alphabet.index(c) * w for c, w in zip(first17, weights, strict=True))
    return alphabet[(31 - total % 31) % 31]


# Real-format codes: authority 9 (market regulator) / 1 (enterprise), Shenzhen 440300, Beijing 110108,
# Fuzhou 350100; and 5 (civil affairs) / 1 (social organisation).
@pytest.mark.parametrize(
    "first17", ["91440300192203821", "91350100M000100Y4", "91110108MA01ABCD1", "51100000500000872", "9144030071526726X"]
)
def test_uscc_check_character_matches_an_independent_computation(first17: str) -> None:
    code = first17 + _uscc_by_hand(first17)
    assert uscc_check_char(first17) == code[-1]
    assert validate_uscc(code.lower() + " ") == code
    for wrong in (c for c in "0123456789ABCDEFGHJKLMNPQRTUWXY" if c != code[-1]):
        assert not is_valid_uscc(first17 + wrong)


def test_known_published_codes_validate() -> None:
    assert validate_uscc("914403001922038216") == "914403001922038216"  # a Shenzhen enterprise
    assert validate_uscc("91350100M000100Y43") == "91350100M000100Y43"  # the standard's worked example


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("91440300192203821", "18 characters"),
        ("9144030019220382167", "18 characters"),
        ("9144030019220382I6", "character 17"),
        ("Z14403001922038216", "character 1"),
        ("X14403001922038216", "character 1"),
        ("90440300192203821" + "6", "character 2"),
        ("9144A3001922038216", "region"),
        ("914403001922038217", "check character"),
    ],
)
def test_uscc_defects_are_named(code: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_uscc(code)
    assert error.value.reason == "INVALID_TAX_ID" and fragment in error.value.message


def _payment(**changes: object) -> domain.RecordPayment:
    base = domain.RecordPayment(
        merchant_id="1230000109",
        transaction_id="4200000000202611240001",
        out_trade_no="order-1",
        amount_fen=10_000,
        payer_total_fen=9_000,
        currency="CNY",
        success_time=NOW - timedelta(minutes=1),
        payer_ref="ab" * 32,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"amount_fen": 0}, "INVALID_AMOUNT"),
        ({"amount_fen": -5}, "INVALID_AMOUNT"),
        ({"amount_fen": 10**10 + 1}, "INVALID_AMOUNT"),
        ({"payer_total_fen": 10_001}, "INVALID_AMOUNT"),
        ({"payer_total_fen": -1}, "INVALID_AMOUNT"),
        ({"currency": "USD"}, "UNSUPPORTED_CURRENCY"),
        ({"merchant_id": ""}, "INVALID_MERCHANT_ID"),
        ({"transaction_id": "has space"}, "INVALID_TRANSACTION_ID"),
        ({"out_trade_no": "x" * 65}, "INVALID_OUT_TRADE_NO"),
        ({"success_time": NOW + timedelta(days=2)}, "INVALID_TIME"),
        ({"success_time": datetime(1999, 1, 1, tzinfo=UTC)}, "INVALID_TIME"),
        ({"success_time": datetime(2026, 1, 1)}, "INVALID_TIME"),
        # PostgreSQL's text refuses NUL: refused here, not an INTERNAL error that fails a whole batch.
        ({"appid": "wx\x00"}, "INVALID_ARGUMENT"),
        ({"trade_type": "JSAPI\n"}, "INVALID_ARGUMENT"),
        ({"appid": "w" * 65}, "INVALID_ARGUMENT"),
    ],
)
def test_payment_validation_names_the_defect(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        domain.validate_payment(_payment(**changes), now=NOW)
    assert error.value.reason == reason


def test_items_must_be_consistent_and_add_up() -> None:
    item = payments_pb2.PaymentItem(
        tax_classification_code="3070401000000000000",
        name="餐饮服务",
        quantity=2,
        unit_price_fen=5_000,
        amount_fen=10_000,
    )
    assert domain.validate_payment(_payment(items=(item,)), now=NOW)
    bad_product = payments_pb2.PaymentItem()
    bad_product.CopyFrom(item)
    bad_product.amount_fen = 9_999
    # A rate invoice_minting could not put on an invoice is refused at the door, not dead-lettered later.
    bad_rate = payments_pb2.PaymentItem()
    bad_rate.CopyFrom(item)
    bad_rate.tax_rate_bp = 700
    bad_name = payments_pb2.PaymentItem()
    bad_name.CopyFrom(item)
    bad_name.name = "餐饮\x00服务"
    for items in [(bad_product,), (item, item), (bad_rate,), (bad_name,)]:
        with pytest.raises(InvalidArgument) as error:
            domain.validate_payment(_payment(items=items), now=NOW)
        assert error.value.reason == "INVALID_ITEMS"


def test_fingerprint_covers_money_facts_but_not_transport() -> None:
    base = domain.payment_fingerprint(_payment())
    assert domain.payment_fingerprint(_payment(source=payments_pb2.PAYMENT_SOURCE_WEBHOOK, appid="wx1")) == base
    for changes in (
        {"amount_fen": 10_001},
        {"out_trade_no": "order-2"},
        {"payer_ref": "cd" * 32},
        {"success_time": NOW},
        {"payer_total_fen": 10_000},
    ):
        assert domain.payment_fingerprint(_payment(**changes)) != base


def test_ids_are_deterministic_and_distinct() -> None:
    first = domain.payment_id_for("m", "t1")
    assert first == domain.payment_id_for("m", "t1") != domain.payment_id_for("m", "t2")
    assert domain.payment_event_id(first) != first
    assert domain.refund_event_id("m", "r1") == domain.refund_event_id("m", "r1")


def test_refund_validation() -> None:
    refund = domain.RecordRefund("1230000109", "4200", "r1", 100, NOW)
    assert domain.validate_refund(refund, now=NOW) is refund
    with pytest.raises(InvalidArgument) as error:
        domain.validate_refund(replace(refund, refund_fen=0), now=NOW)
    assert error.value.reason == "INVALID_AMOUNT"
    with pytest.raises(InvalidArgument) as error:
        domain.validate_refund(replace(refund, reason="bad\x00reason"), now=NOW)
    assert error.value.reason == "INVALID_ARGUMENT"


def test_sealed_apiv3_keys_open_only_with_the_same_key_and_merchant() -> None:
    key, apiv3 = secrets.token_bytes(32), generate_apiv3_key()
    sealed = seal(key, apiv3, context="1230000109")
    assert apiv3 not in sealed and unseal(key, sealed, context="1230000109") == apiv3
    with pytest.raises(SealedKeyError):
        unseal(secrets.token_bytes(32), sealed, context="1230000109")
    with pytest.raises(SealedKeyError):
        unseal(key, sealed, context="1230000110")
    with pytest.raises(SealedKeyError):
        unseal(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), context="1230000109")


def test_payer_ref_is_keyed_and_stable() -> None:
    key = secrets.token_bytes(32)
    assert payer_ref(key, "openid-1") == payer_ref(key, "openid-1") != payer_ref(key, "openid-2")
    assert payer_ref(key, "openid-1") != payer_ref(secrets.token_bytes(32), "openid-1")
    assert payer_ref(key, "") == ""


def test_secret_keys_decode_from_hex_or_base64_and_must_be_32_bytes() -> None:
    raw = secrets.token_bytes(32)
    assert decode_key(raw.hex(), name="K") == raw == decode_key(base64.b64encode(raw).decode(), name="K")
    with pytest.raises(ValueError, match="K must be 32 bytes"):
        decode_key(secrets.token_bytes(16).hex(), name="K")


def test_signature_covers_timestamp_nonce_and_body() -> None:
    body = b'{"id":"1"}'
    signature = PLATFORM.sign("1700000000", "NONCE1", body)
    public = PLATFORM.private_key.public_key()
    assert verify_signature(public, "1700000000", "NONCE1", body, signature)
    assert not verify_signature(public, "1700000001", "NONCE1", body, signature)
    assert not verify_signature(public, "1700000000", "NONCE2", body, signature)
    assert not verify_signature(public, "1700000000", "NONCE1", body + b" ", signature)
    assert not verify_signature(OTHER_PLATFORM.private_key.public_key(), "1700000000", "NONCE1", body, signature)
    assert not verify_signature(public, "1700000000", "NONCE1", body, "not base64!")


def test_resource_encryption_round_trip_and_tampering() -> None:
    key = generate_apiv3_key()
    assert len(key) == 32 and key.isalnum()
    resource = encrypt_resource(key, b'{"a":1}', "transaction")
    assert len(resource["nonce"]) == 12 and decrypt_resource(key, resource) == b'{"a":1}'
    for broken in (
        {**resource, "associated_data": "refund"},
        {**resource, "nonce": "x" * 12},
        {**resource, "nonce": "short"},
        {**resource, "ciphertext": "!!"},
        {k: v for k, v in resource.items() if k != "ciphertext"},
    ):
        with pytest.raises(ResourceDecryptError):
            decrypt_resource(key, broken)
    with pytest.raises(ResourceDecryptError):
        decrypt_resource(generate_apiv3_key(), resource)


def test_signed_notification_decrypts_to_the_resource() -> None:
    key = generate_apiv3_key()
    resource = transaction_resource(mchid="1230000109", transaction_id="42", out_trade_no="o1", total_fen=5)
    delivery = PLATFORM.deliver(PLATFORM.notification_body(key, resource))
    headers = delivery.headers
    assert verify_signature(
        PLATFORM.private_key.public_key(),
        headers["Wechatpay-Timestamp"],
        headers["Wechatpay-Nonce"],
        delivery.body,
        headers["Wechatpay-Signature"],
    )
    envelope = json.loads(delivery.body)
    assert envelope["event_type"] == "TRANSACTION.SUCCESS" and "1230000109" not in delivery.body.decode()
    assert json.loads(decrypt_resource(key, envelope["resource"])) == resource


def test_resource_parsing_maps_fields_and_hides_the_openid() -> None:
    key = secrets.token_bytes(32)
    resource = transaction_resource(
        mchid="1230000109", transaction_id="42", out_trade_no="o1", total_fen=500, payer_total_fen=450, openid="oU1"
    )
    cmd = payment_from_resource(resource, key)
    assert (cmd.amount_fen, cmd.payer_total_fen, cmd.currency) == (500, 450, "CNY")
    assert cmd.payer_ref == payer_ref(key, "oU1") and cmd.success_time.tzinfo is not None
    assert cmd.source == payments_pb2.PAYMENT_SOURCE_WEBHOOK
    for broken, reason in [
        ({**resource, "trade_state": "REFUND"}, "TRADE_NOT_SUCCESS"),
        ({**resource, "amount": {**resource["amount"], "total": "500"}}, "MALFORMED_RESOURCE"),
        ({**resource, "amount": {**resource["amount"], "total": True}}, "MALFORMED_RESOURCE"),
        ({**resource, "success_time": "yesterday"}, "MALFORMED_RESOURCE"),
        ({**resource, "success_time": "2026-11-24T10:00:00"}, "MALFORMED_RESOURCE"),
        ({**resource, "payer": "oU1"}, "MALFORMED_RESOURCE"),
    ]:
        with pytest.raises(InvalidArgument) as error:
            payment_from_resource(broken, key)
        assert error.value.reason == reason
    refund = refund_resource(
        mchid="1230000109", transaction_id="42", out_trade_no="o1", refund_id="r1", refund_fen=100, total_fen=500
    )
    assert refund_from_resource(refund).refund_fen == 100
    with pytest.raises(InvalidArgument) as refund_error:
        refund_from_resource({**refund, "refund_status": "PROCESSING"})
    assert refund_error.value.reason == "TRADE_NOT_SUCCESS"


def test_development_key_file_is_created_once_private_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secrets" / "key"
    monkeypatch.delenv("FAPIAO_UNIT_KEY", raising=False)
    monkeypatch.setenv("FAPIAO_UNIT_KEY_FILE", str(path))
    first = load_key("FAPIAO_UNIT_KEY")
    assert len(first) == 32 and load_key("FAPIAO_UNIT_KEY") == first
    assert path.stat().st_mode & 0o777 == 0o600 and [p.name for p in path.parent.iterdir()] == ["key"]
    monkeypatch.setenv("FAPIAO_UNIT_KEY", "ab" * 32)
    assert load_key("FAPIAO_UNIT_KEY") == bytes.fromhex("ab" * 32)
