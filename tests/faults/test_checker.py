"""The checker on synthetic histories: a clean run passes; a lost acknowledgement, a duplicate, a double
close, a diverged chain, an INTERNAL answer and a service left down are each caught."""

from __future__ import annotations

import json

import pytest
from fapiao_faults.checker import (
    CLOSE_TX,
    ISSUE_TX,
    LOCK_TX,
    UNLOCK_TX,
    LedgerResult,
    Observations,
    acknowledged,
    check,
)
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
    Op,
    outcome_of_code,
    outcome_of_http,
    parse_history,
)

pytestmark = pytest.mark.unit

M = "1900000001"
ORG_A, ORG_B = "91440300MA5A000011", "91440300MA5B000012"
VALIDATORS = ("ledger-1", "ledger-2", "ledger-3", "ledger-4")


def _op(kind: str, key: dict[str, str], outcome: str = OK, code: str = "OK", **result: object) -> Op:
    return Op(kind, key, start=100.0, end=100.5, outcome=outcome, code=code, result=dict(result))


def clean_world() -> tuple[list[Op], Observations]:
    """Two payments (webhook, gRPC), one claimed invoice, a lock race won by A, A closes, B's close refused."""
    inv = {"invoice_number": "44000000000000000001", "invoice_id": "inv-1"}
    history = [
        _op(PAY_WEBHOOK, {"merchant_id": M, "transaction_id": "t1", "out_trade_no": "o1"}, UNKNOWN, "HTTP 503"),
        _op(PAY_WEBHOOK, {"merchant_id": M, "transaction_id": "t1", "out_trade_no": "o1"}, code="HTTP 200"),
        _op(PAY_GRPC, {"merchant_id": M, "transaction_id": "t2", "out_trade_no": "o2"}, payment_id="p2"),
        _op(
            CLAIM,
            {"payment_id": "p1", "idempotency_key": "c1", "buyer": "person"},
            invoice_id="inv-1",
            invoice_number=inv["invoice_number"],
        ),
        _op(LOCK, {**inv, "org": ORG_A, "idempotency_key": "l1"}, transaction_id="tx-lock"),
        _op(LOCK, {**inv, "org": ORG_B, "idempotency_key": "l2"}, FAIL, "FAILED_PRECONDITION"),
        _op(UNLOCK, {**inv, "org": ORG_A, "idempotency_key": "u1"}, transaction_id="tx-unlock"),
        _op(LOCK, {**inv, "org": ORG_A, "idempotency_key": "l3"}, transaction_id="tx-lock2"),
        _op(CLOSE, {**inv, "org": ORG_A, "idempotency_key": "k1"}, transaction_id="tx-close"),
        _op(CLOSE, {**inv, "org": ORG_B, "idempotency_key": "k2"}, FAIL, "PERMISSION_DENIED"),
    ]
    results = [
        LedgerResult("tx-issue", "inv-1", ISSUE_TX, True, inv["invoice_number"]),
        LedgerResult("tx-lock", "inv-1", LOCK_TX, True, inv["invoice_number"], ORG_A),
        LedgerResult("tx-lock-b", "inv-1", LOCK_TX, False, inv["invoice_number"], ORG_A),
        LedgerResult("tx-unlock", "inv-1", UNLOCK_TX, True, inv["invoice_number"], ""),
        LedgerResult("tx-lock2", "inv-1", LOCK_TX, True, inv["invoice_number"], ORG_A),
        LedgerResult("tx-close", "inv-1", CLOSE_TX, True, inv["invoice_number"], ORG_A),
    ]
    seen = Observations(
        payments={(M, "t1"): ["p1"], (M, "t2"): ["p2"]},
        payments_per_order={"o1": 1, "o2": 1},
        offers={"p1": 1, "p2": 1},
        invoices=[{"invoice_id": "inv-1", "invoice_number": inv["invoice_number"], "payment_id": "p1", "blue": True}],
        headers={v: {0: ["h1", "h2"], 1: ["g1"]} for v in VALIDATORS},
        results={v: list(results) for v in VALIDATORS},
        audits={v: {0: "", 1: ""} for v in VALIDATORS},
        health={"payment_intake": "SERVING", "gateway": "SERVING"},
    )
    return history, seen


def test_a_clean_history_passes() -> None:
    history, seen = clean_world()
    verdict = check(history, seen)
    assert verdict.passed, verdict.details
    assert set(verdict.counts) >= {
        "lost", "duplicated", "double_reimbursed", "diverged_heights", "internal_or_unknown_seen",
        "services_not_serving",
    }  # fmt: skip


def test_an_acknowledged_payment_missing_from_the_database_is_lost() -> None:
    history, seen = clean_world()
    del seen.payments[(M, "t2")]
    verdict = check(history, seen)
    assert verdict.counts["lost"] == 1 and "t2" in verdict.details["lost"][0]


def test_a_payment_acknowledged_under_another_id_is_lost() -> None:
    history, seen = clean_world()
    seen.payments[(M, "t2")] = ["p-other"]
    seen.offers["p-other"] = 1
    assert check(history, seen).counts["lost"] == 1


def test_an_unacknowledged_payment_that_is_missing_is_not_lost() -> None:
    history, seen = clean_world()
    unknown = {"merchant_id": M, "transaction_id": "t3", "out_trade_no": "o3"}
    refused = {"merchant_id": M, "transaction_id": "t4", "out_trade_no": "o4"}
    history.append(_op(PAY_GRPC, unknown, UNKNOWN, "UNAVAILABLE"))
    history.append(_op(PAY_GRPC, refused, FAIL, "INVALID_ARGUMENT"))
    assert check(history, seen).passed


def test_a_payment_without_its_claim_offer_is_lost() -> None:
    history, seen = clean_world()
    del seen.offers["p2"]
    assert check(history, seen).counts["lost"] == 1


def test_a_payment_recorded_twice_is_a_duplicate() -> None:
    history, seen = clean_world()
    seen.payments[(M, "t1")] = ["p1", "p1b"]
    seen.payments_per_order["o1"] = 2
    verdict = check(history, seen)
    assert verdict.counts["duplicated"] == 2


def test_two_invoices_for_one_payment_or_one_number_issued_twice_are_duplicates() -> None:
    history, seen = clean_world()
    seen.invoices.append({"invoice_id": "inv-2", "invoice_number": "44000000000000000002", "payment_id": "p1"})
    assert check(history, seen).counts["duplicated"] == 1
    history, seen = clean_world()
    for results in seen.results.values():
        results.append(LedgerResult("tx-issue-2", "inv-9", ISSUE_TX, True, "44000000000000000001"))
    assert check(history, seen).counts["duplicated"] == len(VALIDATORS)


def test_a_red_letter_invoice_of_a_payment_is_not_a_duplicate() -> None:
    history, seen = clean_world()
    seen.invoices.append(
        {"invoice_id": "inv-r", "invoice_number": "44000000000000000003", "payment_id": "p1", "blue": False}
    )
    assert check(history, seen).passed


def test_a_claimed_invoice_not_issued_on_a_validator_is_lost() -> None:
    history, seen = clean_world()
    seen.results["ledger-3"] = [r for r in seen.results["ledger-3"] if r.tx_type != ISSUE_TX]
    verdict = check(history, seen)
    assert verdict.counts["lost"] == 1 and "ledger-3" in verdict.details["lost"][0]


def test_an_acknowledged_lock_or_close_missing_from_the_ledger_is_lost() -> None:
    history, seen = clean_world()
    for validator in VALIDATORS:
        seen.results[validator] = [r for r in seen.results[validator] if r.transaction_id != "tx-close"]
    verdict = check(history, seen)
    assert verdict.counts["lost"] == 1 and "ledger-1, ledger-2, ledger-3, ledger-4" in verdict.details["lost"][0]
    history, seen = clean_world()
    # A lock the ledger rejected, acknowledged to the client as held: lost too.
    seen.results["ledger-1"] = [
        LedgerResult(r.transaction_id, r.invoice_id, r.tx_type, r.transaction_id != "tx-lock", r.invoice_number,
                     r.lock_holder)
        for r in seen.results["ledger-1"]
    ]  # fmt: skip
    assert check(history, seen).counts["lost"] == 1


def test_an_invoice_closed_twice_on_the_ledger_is_double_reimbursed() -> None:
    history, seen = clean_world()
    for results in seen.results.values():
        results.append(LedgerResult("tx-close-b", "inv-1", CLOSE_TX, True, "44000000000000000001", ORG_B))
    verdict = check(history, seen)
    assert verdict.counts["double_reimbursed"] == len(VALIDATORS)
    assert ORG_A in verdict.details["double_reimbursed"][0] and ORG_B in verdict.details["double_reimbursed"][0]


def test_two_acknowledged_closes_are_double_reimbursed() -> None:
    history, seen = clean_world()
    inv = {"invoice_number": "44000000000000000001", "invoice_id": "inv-1"}
    history.append(_op(CLOSE, {**inv, "org": ORG_B, "idempotency_key": "k3"}, transaction_id="tx-close"))
    verdict = check(history, seen)
    assert verdict.counts["double_reimbursed"] == 1


def test_retries_of_one_close_are_one_request() -> None:
    history, seen = clean_world()
    inv = {"invoice_number": "44000000000000000001", "invoice_id": "inv-1"}
    history.append(_op(CLOSE, {**inv, "org": ORG_A, "idempotency_key": "k1"}, transaction_id="tx-close"))
    assert check(history, seen).passed
    assert len(acknowledged(history, CLOSE)) == 1


def test_validators_with_different_blocks_at_a_height_diverge() -> None:
    history, seen = clean_world()
    seen.headers["ledger-2"] = {0: ["h1", "hX"], 1: ["g1"]}
    verdict = check(history, seen)
    assert verdict.counts["diverged_heights"] == 1 and "chain 0 height 2" in verdict.details["diverged_heights"][0]


def test_a_validator_that_did_not_catch_up_is_behind() -> None:
    history, seen = clean_world()
    seen.headers["ledger-4"] = {0: ["h1"], 1: ["g1"]}
    verdict = check(history, seen)
    assert verdict.counts["validators_behind"] == 1 and verdict.counts["diverged_heights"] == 0


def test_a_validator_that_does_not_answer_is_behind_and_not_judged_for_content() -> None:
    history, seen = clean_world()
    del seen.headers["ledger-2"], seen.results["ledger-2"]
    seen.unreachable = ["ledger-2"]
    verdict = check(history, seen)
    assert verdict.counts["validators_behind"] == 1 and verdict.counts["lost"] == 0


def test_an_audit_finding_fails_the_run() -> None:
    history, seen = clean_world()
    seen.audits["ledger-1"][1] = "block 7: BAD_SIGNATURE"
    assert check(history, seen).counts["audit_failures"] == 1


def test_internal_or_unknown_answers_are_counted() -> None:
    history, seen = clean_world()
    history.append(_op(LOCK, {"invoice_number": "x", "invoice_id": "y", "org": ORG_A, "idempotency_key": "z"},
                       UNKNOWN, "INTERNAL"))  # fmt: skip
    history.append(_op(PAY_WEBHOOK, {"merchant_id": M, "transaction_id": "t9", "out_trade_no": "o9"},
                       UNKNOWN, "HTTP 500"))  # fmt: skip
    history.append(_op(CLAIM, {"payment_id": "p9", "idempotency_key": "c9", "buyer": "person"}, UNKNOWN, "UNKNOWN"))
    assert check(history, seen).counts["internal_or_unknown_seen"] == 3


def test_a_service_left_down_fails_the_run() -> None:
    history, seen = clean_world()
    seen.health["payment_intake"] = "DOWN"
    verdict = check(history, seen)
    assert verdict.counts["services_not_serving"] == 1 and not verdict.passed


def test_outcomes_of_codes_and_statuses() -> None:
    import grpc

    assert outcome_of_code(grpc.StatusCode.OK) == OK
    for refusal in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "ALREADY_EXISTS", "PERMISSION_DENIED"):
        assert outcome_of_code(getattr(grpc.StatusCode, refusal)) == FAIL
    for unknown in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "CANCELLED"):
        assert outcome_of_code(getattr(grpc.StatusCode, unknown)) == UNKNOWN
    assert [outcome_of_http(s) for s in (200, 204, 400, 409, 500, 503)] == [OK, OK, FAIL, FAIL, UNKNOWN, UNKNOWN]


def test_history_lines_round_trip() -> None:
    history, _ = clean_world()
    again = list(parse_history(op.to_json() for op in history))
    assert again == history
    assert json.loads(history[0].to_json())["outcome"] == UNKNOWN


def test_what_could_not_be_read_fails_the_run() -> None:
    history, seen = clean_world()
    seen.errors.append("database: ConnectionRefusedError")
    verdict = check(history, seen)
    assert verdict.counts["unobservable"] == 1 and not verdict.passed
