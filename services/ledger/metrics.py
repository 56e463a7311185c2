"""The validator's own Prometheus metrics (served with the runtime's on FAPIAO_METRICS_PORT)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from fapiao.ledger.v1 import ledger_pb2
from prometheus_client import Counter, Gauge

from ledger.state_machine import Outcome

BLOCKS_COMMITTED = Counter("fapiao_ledger_blocks_committed_total", "Blocks cut and stored", ["chain"])
BLOCKS_FINAL = Counter("fapiao_ledger_blocks_final_total", "Blocks final by quorum", ["chain"])
TRANSACTIONS = Counter("fapiao_ledger_transactions_total", "Transactions executed", ["accepted"])
REJECTIONS = Counter(
    "fapiao_ledger_rejections_total", "Transactions rejected, by reason (the RejectionReason name)", ["reason"]
)
DIVERGENCES = Counter("fapiao_ledger_divergences_total", "Validators whose header differed from ours", ["validator"])
EQUIVOCATIONS = Counter(
    "fapiao_ledger_equivocations_total", "Second, different headers a validator signed for one height", ["validator"]
)
HEIGHT = Gauge("fapiao_ledger_height", "Last stored block height", ["chain"])
TIME_CUTS_SENT = Counter(
    "fapiao_ledger_time_cuts_sent_total", "Time-to-cut markers sent, as the time cutter or standing in", ["role"]
)
TIME_CUTTER_CHANGES = Counter(
    "fapiao_ledger_time_cutter_changes_total", "Another validator took over the time cuts (read in chain 0's log)"
)
BLOCK_STREAMS_OPENED = Counter("fapiao_ledger_block_streams_opened_total", "StreamBlocks calls accepted")
BLOCK_STREAM_BLOCKS_SENT = Counter("fapiao_ledger_block_stream_blocks_sent_total", "Final blocks sent by StreamBlocks")


def count_block(chain_id: int, height: int, outcomes: Iterable[Outcome]) -> None:
    """Count a stored block: its transactions, accepted or rejected by reason, and the chain's height."""
    accepted = 0
    rejected: Tally[ledger_pb2.RejectionReason.ValueType] = Tally()
    for outcome in outcomes:
        if outcome.result.accepted:
            accepted += 1
        else:
            rejected[outcome.result.rejection_reason_code] += 1
    TRANSACTIONS.labels(accepted="true").inc(accepted)
    TRANSACTIONS.labels(accepted="false").inc(sum(rejected.values()))
    for code, count in rejected.items():
        REJECTIONS.labels(reason=ledger_pb2.RejectionReason.Name(code)).inc(count)
    BLOCKS_COMMITTED.labels(chain=str(chain_id)).inc()
    HEIGHT.labels(chain=str(chain_id)).set(height)
