"""Logical topic names and partition counts. Keys are always the aggregate id.

See docs/events.md for producers, consumers and schemas.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    # Topic settings that hold whatever the configuration says (name -> value), e.g. the ledger's logs
    # never expire. The configured ones (replication, retention) come from fapiao_runtime.kafka.
    configs: tuple[tuple[str, str], ...] = ()


# The ledger's ordered log and its signatures are the chain itself: a validator that lost its database,
# or a new one, replays them from offset 0, so the broker never deletes them, nor compacts them.
KEEP_FOREVER = (("retention.ms", "-1"), ("retention.bytes", "-1"), ("cleanup.policy", "delete"))


# PaymentSucceeded / PaymentRefunded, key merchant_id:out_trade_no.
PAYMENTS = TopicSpec("payments.v1", 4)
# LedgerRecord (signed transactions and time-to-cut markers), key invoice_id. One partition = one chain.
LEDGER_TRANSACTIONS = TopicSpec("ledger.tx.v1", 2, KEEP_FOREVER)
# TransactionResult, key transaction_id.
LEDGER_RESULTS = TopicSpec("ledger.results.v1", 4)
# BlockSignature from every validator, key chain id.
LEDGER_SIGNATURES = TopicSpec("ledger.signatures.v1", 2, KEEP_FOREVER)
# MerchantRegistered (payment_intake's merchant registry -> invoice_minting), key merchant_id.
MERCHANTS = TopicSpec("merchants.v1", 1)
# InvoiceIssued and other invoice events, key invoice_id.
INVOICES = TopicSpec("invoices.v1", 4)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    PAYMENTS,
    MERCHANTS,
    LEDGER_TRANSACTIONS,
    LEDGER_RESULTS,
    LEDGER_SIGNATURES,
    INVOICES,
)
