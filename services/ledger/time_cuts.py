"""Time cutting: when a validator writes the time-to-cut markers that close blocks of pending transactions.

A marker only changes when a block is cut, never what it holds: every validator cuts where the marker
sits in the log, so blocks stay identical on all of them. One validator writes every chain's time cuts
(the time cutter), so the cuts of the chains coincide; the others stand in when it is down or late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping
from typing import Protocol

from aiokafka import AIOKafkaProducer
from fapiao.ledger.v1 import ledger_pb2

from ledger.metrics import TIME_CUTS_SENT, TIME_CUTTER_CHANGES
from ledger.records import marker_envelope
from ledger.settings import LedgerSettings

STAND_IN_MIN_S = 0.25
MARKER_RESEND_MIN_S = 1.0


class PendingChain(Protocol):
    """What time cutting reads of a chain (`chain.ChainExecutor`)."""

    @property
    def height(self) -> int: ...

    @property
    def has_pending(self) -> bool: ...


def time_to_cut_due(pending_since: float, last_cut: float | None, cut_s: float, cut_idle_s: float) -> float:
    """When the designated validator writes a chain's time-to-cut marker (monotonic seconds).

    Every block costs each validator a fixed amount of work, so under load time cuts come at most
    every cut_s (and a block cut by size restarts that wait). A chain whose previous cut is older than
    that is not under load: its first pending transaction waits only cut_idle_s for companions. Only
    the marker's timing changes, never what it means: every validator cuts where the marker sits in
    the log, so blocks stay identical on all of them.
    """
    due = pending_since + cut_idle_s
    if last_cut is not None:
        due = max(due, last_cut + cut_s)
    return due


def cut_interval_start(last_cut: float | None, last_marker: tuple[int, float] | None, height: int) -> float | None:
    """Where the wait for a chain's next time cut starts (the `last_cut` of `time_to_cut_due`).

    That is the chain's previous cut as this validator applied it, or, if earlier, when this validator
    sent its marker for the previous height (`last_marker` = (height, monotonic send time)). Counting
    from the send keeps time cuts `cut_s` apart even when a loaded validator reads its own marker back
    late: counted from the read, every block of a loaded chain would also wait that read-back lag.
    """
    if last_cut is not None and last_marker is not None and last_marker[0] == height - 1:
        return min(last_cut, last_marker[1])
    return last_cut


def takes_over_time_cuts(
    marker: ledger_pb2.TimeToCut, chain_height: int, producer: str, validators: Collection[str]
) -> bool:
    """Whether a marker read in chain 0's log makes its writer the time cutter.

    A validator's marker for chain 0's current height does, whether or not transactions are pending
    (one that cuts nothing is a stand-in's claim, `TimeCutter.run`); a stale one (for a height already
    cut) or one from a writer that is not a validator does not. Chain 0's log alone decides, since
    chains are not ordered with each other: every validator sees the same succession of time cutters.
    """
    return marker.height == chain_height and producer in validators


def chains_to_mark(due: Mapping[int, float], unmarked: set[int], now: float) -> list[int]:
    """The chains whose time-to-cut marker a validator sends now.

    `due`: when each chain with pending transactions is due (monotonic seconds); `unmarked`: those of
    them this validator has sent no marker for at their current height. Nothing is sent before one of
    them is due; then every unmarked pending chain is cut with it. So the chains' time cuts coincide:
    a validator that reads their markers in one fetch stores their blocks in one statement, sends
    their signatures in one request and finalizes them together, instead of paying each block's round
    on its own (the per-block work is most of a validator's CPU below saturation: docs/benchmarks.md).
    """
    if not any(when <= now for when in due.values()):
        return []
    return sorted({chain_id for chain_id, when in due.items() if when <= now} | (unmarked & due.keys()))


class TimeCutter:
    """Owns when each chain's marker is due: what is pending since when, the last cuts and markers,
    and which validator currently writes the time cuts.

    The coordinator reports what it applies (`note_pending`, `note_cut`, `on_chain0_marker`); `run`
    sends the markers.
    """

    def __init__(
        self,
        settings: LedgerSettings,
        producer: AIOKafkaProducer,
        transactions_topic: str,
        chains: Mapping[int, PendingChain],
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._topic = transactions_topic
        self._chains = chains
        # The first by id, until another validator's marker for chain 0's current height (one that stood
        # in while it was down or late) takes over (`takes_over_time_cuts`). Every validator learns it
        # from the same log.
        self._time_cutter = min(settings.validator_keys)
        self._pending_since: dict[int, float] = {}
        self._pending_started = asyncio.Event()  # a chain went from nothing pending to pending
        self._last_marker: dict[int, tuple[int, float]] = {}  # chain -> (height, monotonic send time)
        self._last_cut: dict[int, float] = {}  # when this validator last cut a block of the chain (any cause)

    @property
    def time_cutter(self) -> str:
        """The validator that writes every chain's time cuts, as chain 0's log says so far."""
        return self._time_cutter

    def note_pending(self, chain_id: int, at: float | None = None) -> None:
        """Chain `chain_id` has pending transactions from `at` (monotonic seconds, now if None) on: the
        first after a cut, or those left over by a cut."""
        self._pending_since[chain_id] = time.monotonic() if at is None else at
        self._pending_started.set()

    def note_cut(self, chain_id: int, at: float | None = None) -> None:
        """This validator cut a block of `chain_id` at `at` (monotonic seconds, now if None), for any cause."""
        self._last_cut[chain_id] = time.monotonic() if at is None else at

    def on_chain0_marker(self, marker: ledger_pb2.TimeToCut, chain_height: int, producer: str) -> None:
        """A marker read in chain 0's log at `chain_height` (before it is applied): it may move the time
        cuts to its writer (`takes_over_time_cuts`)."""
        if (
            takes_over_time_cuts(marker, chain_height, producer, self._settings.validator_keys)
            and producer != self._time_cutter
        ):
            self._time_cutter = producer
            TIME_CUTTER_CHANGES.inc()

    async def run(self, stop: asyncio.Event) -> None:
        """Send a marker when a chain's oldest pending transaction is due; sleep until the next is due.

        No polling tick: the loop sleeps until the earliest deadline, or until a chain that had nothing
        pending gets a transaction (`note_pending`), so idle validators do not wake up at all.
        """
        cut_s = self._settings.cut_ms / 1000
        cut_idle_s = self._settings.cut_idle_ms / 1000
        # A marker whose send was acknowledged is in the log: every validator reads it. Sending it again
        # only adds records every validator must read, so the same height is re-marked only after a
        # long pause (a lost send, a stuck producer), never while a loaded broker is merely slow.
        resend_s = max(20 * cut_s, MARKER_RESEND_MIN_S)
        stand_in_s = max(5 * cut_s, STAND_IN_MIN_S)
        while not stop.is_set():
            # Cleared before the scan: a chain that starts pending during it wakes the next wait.
            self._pending_started.clear()
            now = time.monotonic()
            # One validator cuts every chain on time (`time_cutter`), so their cuts can coincide
            # (`chains_to_mark`); the others step in only if it is down, after long enough for its
            # marker's round trip through a loaded broker. A stand-in's claim, once read in chain 0's
            # log, makes it the time cutter.
            designated = self._time_cutter == self._settings.validator_id
            due: dict[int, float] = {}
            unmarked: set[int] = set()
            for chain_id, chain in self._chains.items():
                if not chain.has_pending:
                    continue
                pending_since = self._pending_since.get(chain_id, now)
                sent_height, sent_at = self._last_marker.get(chain_id, (-1, 0.0))
                if designated:
                    start = cut_interval_start(self._last_cut.get(chain_id), (sent_height, sent_at), chain.height)
                    due[chain_id] = time_to_cut_due(pending_since, start, cut_s, cut_idle_s)
                else:
                    due[chain_id] = pending_since + stand_in_s
                if sent_height == chain.height:
                    due[chain_id] = max(due[chain_id], sent_at + resend_s)
                else:
                    unmarked.add(chain_id)
            # Only the time cutter brings pending chains along; a stand-in marks the overdue ones, and
            # claims the time cuts with a marker for chain 0's current height (`takes_over_time_cuts`),
            # even if chain 0 has nothing pending: its log alone moves the role, so without the claim
            # the other chains would wait the stand-in time for every block while chain 0 is idle.
            to_mark = chains_to_mark(due, unmarked if designated else set(), now)
            if to_mark and not designated and 0 not in to_mark and 0 in self._chains:
                claimed_height, claimed_at = self._last_marker.get(0, (-1, 0.0))
                if claimed_height != self._chains[0].height or now >= claimed_at + resend_s:
                    to_mark.insert(0, 0)
            for chain_id in to_mark:
                height = self._chains[chain_id].height
                self._last_marker[chain_id] = (height, now)
                await self._send_marker(chain_id, height)
                TIME_CUTS_SENT.labels("time_cutter" if designated else "stand_in").inc()
                due[chain_id] = now + resend_s
            next_due = min(due.values(), default=None)
            timeout = None if next_due is None else max(0.001, next_due - time.monotonic())
            waiter = asyncio.ensure_future(self._pending_started.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()

    async def _send_marker(self, chain_id: int, height: int) -> None:
        envelope = marker_envelope(self._settings.validator_id, chain_id, height)
        await self._producer.send(
            self._topic, value=envelope.SerializeToString(), key=envelope.aggregate_id.encode(), partition=chain_id
        )
