"""The checker: judges the recorded history against what the databases and the validators hold.

It trusts neither the services' own reports nor one another: acknowledged payments are looked up in
payment_intake's tables, invoices in invoice_minting's, reimbursements on every validator's blocks. The
observations are gathered after the faults are healed (fapiao_faults.observe); this module is pure, so
it is tested on synthetic histories.

Figures (all must be 0 for a run to pass; docs/faults.md):
- lost: acknowledged writes that are missing, each counted once (a payment without its row or its claim
  offer, a claimed invoice not issued on every validator, a lock, unlock or close acknowledged but not on
  the ledger);
- duplicated: a payment recorded twice, two claim offers or two invoices for one payment, an invoice
  number issued twice;
- double_reimbursed: an invoice closed twice on the ledger or by two organisations, or two close
  requests both acknowledged;
- diverged_heights: (chain, height) pairs at which validators hold different blocks;
- audit_failures: AuditChain findings (or no answer) per validator and chain;
- validators_behind: validators that did not catch up with the others' final blocks (or did not answer);
- internal_or_unknown_seen: client calls answered INTERNAL, UNKNOWN or HTTP 500;
- services_not_serving: services not SERVING at the end, without an operator's help;
- unobservable: what the checker could not read at all (a database that did not answer).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from fapiao_faults.history import CLAIM, CLOSE, FORBIDDEN_CODES, LOCK, OK, PAY_GRPC, PAY_WEBHOOK, UNLOCK, Op

# Ledger transaction types (fapiao.ledger.v1.TransactionType).
ISSUE_TX, LOCK_TX, UNLOCK_TX, CLOSE_TX = 1, 2, 3, 4
_TX_OF_OP = {LOCK: LOCK_TX, UNLOCK: UNLOCK_TX, CLOSE: CLOSE_TX}


@dataclass(frozen=True)
class LedgerResult:
    """One transaction result in a final block, as a validator stores it."""

    transaction_id: str
    invoice_id: str
    tx_type: int
    accepted: bool
    invoice_number: str = ""
    lock_holder: str = ""
    chain: int = 0
    height: int = 0


@dataclass
class Observations:
    """What the databases and the validators hold after the heal."""

    # payment_intake: (merchant_id, transaction_id) -> payment ids recorded; out_trade_no -> row count.
    payments: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    payments_per_order: dict[str, int] = field(default_factory=dict)
    # invoice_minting: payment_id -> claim offers; its invoices (invoice_id, number, payment_id, blue?).
    offers: dict[str, int] = field(default_factory=dict)
    invoices: list[dict[str, Any]] = field(default_factory=list)
    # Per validator: chain -> [header hash per height, from height 1]; and its transaction results.
    headers: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    results: dict[str, list[LedgerResult]] = field(default_factory=dict)
    # Validators that did not answer (their blocks are not judged; each counts as behind).
    unreachable: list[str] = field(default_factory=list)
    # Per validator: chain -> AuditChain findings ("" when it passed, else what was wrong).
    audits: dict[str, dict[int, str]] = field(default_factory=dict)
    # Service process -> health ("SERVING", "NOT_SERVING", "DOWN", ...).
    health: dict[str, str] = field(default_factory=dict)
    # What could not be read at all (a database that did not answer): nothing about it can be vouched for.
    errors: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    counts: dict[str, int]
    details: dict[str, list[str]]

    @property
    def passed(self) -> bool:
        return not any(self.counts.values())


FIGURES = (
    "lost",
    "duplicated",
    "double_reimbursed",
    "diverged_heights",
    "audit_failures",
    "validators_behind",
    "internal_or_unknown_seen",
    "services_not_serving",
    "unobservable",
)


def acknowledged(history: list[Op], kind: str) -> list[Op]:
    """Acknowledged requests of `kind`: the first ok attempt of each request (retries share its key)."""
    seen: set[tuple[tuple[str, str], ...]] = set()
    found = []
    for op in history:
        if op.kind != kind or op.outcome != OK:
            continue
        ident = tuple(sorted(op.key.items()))
        if ident not in seen:
            seen.add(ident)
            found.append(op)
    return found


def check(history: list[Op], seen: Observations) -> Verdict:
    details: dict[str, list[str]] = {name: [] for name in FIGURES}
    _check_payments(history, seen, details)
    _check_invoices(history, seen, details)
    _check_reimbursements(history, seen, details)
    _check_chains(seen, details)
    for op in history:
        if op.code in FORBIDDEN_CODES:
            details["internal_or_unknown_seen"].append(f"{op.kind} {op.key} answered {op.code} {op.reason}".strip())
    for name, state in sorted(seen.health.items()):
        if state != "SERVING":
            details["services_not_serving"].append(f"{name} is {state}")
    details["unobservable"] = list(seen.errors)
    return Verdict({name: len(items) for name, items in details.items()}, details)


def _check_payments(history: list[Op], seen: Observations, details: dict[str, list[str]]) -> None:
    for op in acknowledged(history, PAY_WEBHOOK) + acknowledged(history, PAY_GRPC):
        ident = (op.key["merchant_id"], op.key["transaction_id"])
        rows = seen.payments.get(ident, [])
        if not rows:
            details["lost"].append(f"payment {ident[1]} acknowledged ({op.kind}) but not recorded")
            continue
        acked_id = op.result.get("payment_id")
        if acked_id and acked_id not in rows:
            details["lost"].append(f"payment {ident[1]} acknowledged as {acked_id}, recorded as {rows}")
        if seen.offers.get(rows[0], 0) == 0:
            details["lost"].append(f"payment {ident[1]} acknowledged but no claim offer was made from it")
    for ident, rows in sorted(seen.payments.items()):
        if len(rows) > 1:
            details["duplicated"].append(f"payment {ident[1]} recorded {len(rows)} times")
    for order, count in sorted(seen.payments_per_order.items()):
        if count > 1:
            details["duplicated"].append(f"order {order} recorded {count} times")
    for payment_id, count in sorted(seen.offers.items()):
        if count > 1:
            details["duplicated"].append(f"payment {payment_id} has {count} claim offers")


def _accepted(seen: Observations) -> dict[str, dict[str, LedgerResult]]:
    """Per validator: accepted results by transaction id."""
    return {
        validator: {r.transaction_id: r for r in results if r.accepted} for validator, results in seen.results.items()
    }


def _check_invoices(history: list[Op], seen: Observations, details: dict[str, list[str]]) -> None:
    by_id = {str(row["invoice_id"]): row for row in seen.invoices}
    blue_per_payment = Counter(str(row["payment_id"]) for row in seen.invoices if row.get("blue", True))
    for payment_id, count in sorted(blue_per_payment.items()):
        if count > 1:
            details["duplicated"].append(f"payment {payment_id} has {count} invoices")
    for number, count in sorted(Counter(str(row["invoice_number"]) for row in seen.invoices).items()):
        if count > 1:
            details["duplicated"].append(f"invoice number {number} used by {count} invoices")
    for validator, results in sorted(seen.results.items()):
        issued = Counter(r.invoice_number for r in results if r.accepted and r.tx_type == ISSUE_TX)
        for number, count in sorted(issued.items()):
            if count > 1:
                details["duplicated"].append(f"{validator}: invoice number {number} issued {count} times")
    issued_ids = {
        validator: {r.invoice_id for r in results if r.accepted and r.tx_type == ISSUE_TX}
        for validator, results in seen.results.items()
    }
    for op in acknowledged(history, CLAIM):
        invoice_id, number = str(op.result.get("invoice_id", "")), str(op.result.get("invoice_number", ""))
        row = by_id.get(invoice_id)
        if row is None or str(row["invoice_number"]) != number:
            details["lost"].append(f"claimed invoice {number} ({invoice_id}) is not in invoice_minting")
            continue
        missing = [v for v, ids in sorted(issued_ids.items()) if invoice_id not in ids]
        if missing:
            details["lost"].append(f"claimed invoice {number} is not issued on {', '.join(missing)}")


def _check_reimbursements(history: list[Op], seen: Observations, details: dict[str, list[str]]) -> None:
    accepted = _accepted(seen)
    for kind in (LOCK, UNLOCK, CLOSE):
        for op in acknowledged(history, kind):
            tx_id = str(op.result.get("transaction_id", ""))
            missing, other_holder = [], []
            for validator, by_tx in sorted(accepted.items()):
                result = by_tx.get(tx_id)
                if result is None or result.tx_type != _TX_OF_OP[kind] or result.invoice_id != op.key["invoice_id"]:
                    missing.append(validator)
                elif kind != UNLOCK and result.lock_holder != op.key["org"]:
                    other_holder.append(f"{validator} (holder {result.lock_holder})")
            if missing or other_holder:
                details["lost"].append(
                    f"{kind} of {op.key['invoice_number']} by {op.key['org']} acknowledged ({tx_id}) but not "
                    f"accepted as such on {', '.join(missing + other_holder)}"
                )
    for validator, results in sorted(seen.results.items()):
        closes: dict[str, list[LedgerResult]] = defaultdict(list)
        for result in results:
            if result.accepted and result.tx_type == CLOSE_TX:
                closes[result.invoice_id].append(result)
        for invoice_id, found in sorted(closes.items()):
            orgs = {r.lock_holder for r in found}
            if len(found) > 1 or len(orgs) > 1:
                details["double_reimbursed"].append(
                    f"{validator}: invoice {found[0].invoice_number or invoice_id} closed {len(found)} times "
                    f"by {', '.join(sorted(orgs))}"
                )
    acked_closes: dict[str, set[str]] = defaultdict(set)
    for op in acknowledged(history, CLOSE):
        acked_closes[op.key["invoice_number"]].add(op.key["idempotency_key"])
    for number, keys in sorted(acked_closes.items()):
        if len(keys) > 1:
            details["double_reimbursed"].append(f"invoice {number}: {len(keys)} close requests acknowledged")


def _check_chains(seen: Observations, details: dict[str, list[str]]) -> None:
    chains = sorted({chain for per_chain in seen.headers.values() for chain in per_chain})
    for chain in chains:
        columns = {v: per_chain.get(chain, []) for v, per_chain in seen.headers.items()}
        longest = max((len(c) for c in columns.values()), default=0)
        for height in range(1, longest + 1):
            hashes = {c[height - 1] for c in columns.values() if len(c) >= height}
            if len(hashes) > 1:
                details["diverged_heights"].append(f"chain {chain} height {height}: {len(hashes)} different blocks")
        for validator, column in sorted(columns.items()):
            if len(column) < longest:
                details["validators_behind"].append(
                    f"{validator} chain {chain}: {len(column)} final blocks, others {longest}"
                )
    for validator in sorted(seen.unreachable):
        details["validators_behind"].append(f"{validator} did not answer: its blocks could not be compared")
    for validator, per_chain in sorted(seen.audits.items()):
        for chain, problem in sorted(per_chain.items()):
            if problem:
                details["audit_failures"].append(f"{validator} chain {chain}: {problem}")
