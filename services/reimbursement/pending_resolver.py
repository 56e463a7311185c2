"""Settles transactions whose caller stopped waiting (deadline, disconnect, restart).

Every `interval_s`, asks the ledger for the final result of up to `batch` transactions still PENDING
after `older_than_s`, and records the ones that are final, so ListReimbursements converges without
the client having to retry. A BATCH_LOCK that those outcomes make fail is undone here (its won LOCKs
are unlocked), as its handler would have done had the caller still been waiting; at start, every
failed BATCH_LOCK not undone yet is (a crash between its outcome and its undo).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from fapiao_runtime.errors import unavailable_cause

from reimbursement import store
from reimbursement.handlers import ask_ledger, submit_compensation
from reimbursement.ledger_port import LedgerPort

log = logging.getLogger(__name__)


async def resolve_pending_once(pool: asyncpg.Pool, ledger: LedgerPort, older_than_s: float, batch: int) -> int:
    """Record the outcomes the ledger has for stale pending transactions; return how many."""
    pending = await store.stale_pending(pool, older_than_s, batch)
    if not pending:
        return 0
    results = await ask_ledger(ledger, pending)
    await store.record_outcomes(pool, results)
    if any(not r.accepted for r in results):
        await undo_failed_batches(pool, ledger, [r.transaction_id for r in results])
    return len(results)


async def undo_failed_batches(pool: asyncpg.Pool, ledger: LedgerPort, transaction_ids: list[str] | None) -> int:
    """Submit the undo of failed BATCH_LOCKs (those of `transaction_ids`, or all if None); return how many."""
    requests = await store.failed_batch_locks_to_undo(pool, transaction_ids)
    for request_id, tax_id in requests:
        await submit_compensation(pool, ledger, tax_id, request_id, await store.request_transactions(pool, request_id))
    return len(requests)


def _log_failure(message: str, exc: Exception) -> None:
    """A lost dependency (the database, the validators) is one warning line; anything else a traceback."""
    cause = unavailable_cause(exc)
    if cause is None:
        log.exception(message)
    else:
        log.warning(message, extra={"dependency": cause, "error": repr(exc)[:300]})


async def run_pending_resolver(
    pool: asyncpg.Pool,
    ledger: LedgerPort,
    stop: asyncio.Event,
    *,
    interval_s: float = 2.0,
    older_than_s: float = 5.0,
    batch: int = 200,
) -> None:
    try:
        undone = await undo_failed_batches(pool, ledger, None)
        if undone:
            log.info("undid failed batch locks", extra={"count": undone})
    except Exception as exc:  # retried at the next start; settling goes on regardless
        _log_failure("undoing failed batch locks at start failed", exc)
    while not stop.is_set():
        try:
            settled = await resolve_pending_once(pool, ledger, older_than_s, batch)
            if settled:
                log.info("settled pending transactions", extra={"count": settled})
        except Exception as exc:
            _log_failure("settling pending transactions failed; will retry", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
