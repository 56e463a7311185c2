"""The trace context of the transactions a validator is executing, from their log record to their result.

A transaction's record on ledger.tx.v1 carries the `traceparent` of the request that caused it. The
validator keeps it (in memory, for the most recent transactions) so that the result it publishes
continues that trace, and what it logs about the transaction (a rejection) carries its trace id. After a
restart the results of transactions read before it are published without one: a trace is a diagnostic,
not part of the ledger.
"""

from __future__ import annotations

from collections import OrderedDict

from fapiao_runtime import tracing

KEPT = 100_000  # transactions remembered; a block is published long before this many more are read


class TraceBook:
    """transaction id -> the traceparent of its log record, for the last `KEPT` traced transactions."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._traces: OrderedDict[str, str] = OrderedDict()

    def note(self, transaction_id: str, traceparent: str) -> None:
        if not traceparent or tracing.parse(traceparent) is None:
            return
        self._traces[transaction_id] = traceparent
        self._traces.move_to_end(transaction_id)
        while len(self._traces) > self._kept:
            self._traces.popitem(last=False)

    def of(self, transaction_id: str) -> str:
        """The transaction's traceparent, "" when it came without one (or long ago)."""
        return self._traces.get(transaction_id, "")

    def child_of(self, transaction_id: str) -> str:
        """A traceparent continuing the transaction's trace (a span of its own), "" without one."""
        traceparent = self.of(transaction_id)
        return tracing.child_of(traceparent) if traceparent else ""
