"""The nemesis: a seeded schedule of faults, injected into a running system and healed at their end.

The schedule depends only on the seed, the run's length, the number of faults and the system's list of
processes, so `--seed` reproduces it. Every kind of fault appears at least once; the rest are drawn at
random. Faults do not overlap: each has its own slot, and the last part of the run is left quiet so the
system settles before the checker reads it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from fapiao_faults.system import BROKER, POSTGRES, SERVICE, VALIDATOR, NetworkFaultsUnsupported, System

log = logging.getLogger("fapiao_faults.nemesis")

# Process faults: work on every system.
KILL_SERVICE = "kill_service"  # kill -9 a service, restart it
KILL_VALIDATOR = "kill_validator"
KILL_BROKER = "kill_broker"
KILL_POSTGRES = "kill_postgres"  # crash a PostgreSQL server, restart it
KILL_LEADER = "kill_leader"  # kill -9 the broker leading a ledger.tx.v1 partition, restart it
PAUSE = "pause"  # SIGSTOP a process for several seconds, then SIGCONT
PROCESS_KINDS = (KILL_SERVICE, KILL_VALIDATOR, KILL_BROKER, KILL_POSTGRES, KILL_LEADER, PAUSE)
# Network faults: need one host per process.
ISOLATE_HOST = "isolate_host"
BROKER_MINORITY = "broker_minority"  # the brokers split into a majority and a minority
BELOW_MIN_ISR = "below_min_isr"  # two brokers cut off: one replica left, below min.insync.replicas
VALIDATOR_FROM_KAFKA = "validator_from_kafka"
SERVICE_FROM_DATABASE = "service_from_database"
NETWORK_KINDS = (ISOLATE_HOST, BROKER_MINORITY, BELOW_MIN_ISR, VALIDATOR_FROM_KAFKA, SERVICE_FROM_DATABASE)
ALL_KINDS = PROCESS_KINDS + NETWORK_KINDS

_KILL_TARGETS = {KILL_SERVICE: SERVICE, KILL_VALIDATOR: VALIDATOR, KILL_BROKER: BROKER, KILL_POSTGRES: POSTGRES}
# How long each kind lasts (seconds): a crashed process stays down, a paused one stopped, a partition cut.
_DURATION_S = {
    KILL_SERVICE: (3.0, 10.0),
    KILL_VALIDATOR: (3.0, 12.0),
    KILL_BROKER: (3.0, 10.0),
    KILL_POSTGRES: (3.0, 8.0),
    KILL_LEADER: (3.0, 10.0),
    PAUSE: (3.0, 8.0),
    ISOLATE_HOST: (8.0, 20.0),
    BROKER_MINORITY: (8.0, 20.0),
    BELOW_MIN_ISR: (25.0, 40.0),  # the brokers are fenced and the ISR shrinks within about 10 s
    VALIDATOR_FROM_KAFKA: (8.0, 20.0),
    SERVICE_FROM_DATABASE: (5.0, 15.0),
}
RECOVERY_S = 10.0  # the quiet time a fault's slot adds to its longest duration
LEDGER_TOPIC = "ledger.tx.v1"


@dataclass
class Fault:
    """One planned fault; `start`/`end` are filled in when it is injected and healed (epoch seconds)."""

    kind: str
    target: str
    at_s: float  # planned start, seconds after the run began
    duration_s: float
    start: float = 0.0
    end: float = 0.0
    injected: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(
    seed: int,
    duration_s: float,
    count: int,
    processes: dict[str, str],
    *,
    network: bool,
    hosts: list[str] | None = None,
    warmup_s: float | None = None,
    quiet_tail_s: float | None = None,
) -> list[Fault]:
    """The schedule: `count` faults (at least one of every kind available) spread over `duration_s`,
    after a quiet warm-up (15 s, a tenth of a shorter run) and before a quiet tail (30 s, a fifth)."""
    rng = random.Random(seed)
    warmup_s = min(15.0, duration_s / 10) if warmup_s is None else warmup_s
    quiet_tail_s = min(30.0, duration_s / 5) if quiet_tail_s is None else quiet_tail_s
    kinds = [k for k in PROCESS_KINDS if k not in _KILL_TARGETS or _targets(processes, _KILL_TARGETS[k])]
    if network:
        kinds += list(NETWORK_KINDS)
    chosen = list(kinds) + [rng.choice(kinds) for _ in range(max(0, count - len(kinds)))]
    rng.shuffle(chosen)
    span = max(1.0, duration_s - warmup_s - quiet_tail_s)
    # Each fault gets a slot in proportion to its longest duration plus a recovery time, so a long kind
    # keeps its length in a busy schedule; it starts at a random point of its slot.
    weights = [_DURATION_S[kind][1] + RECOVERY_S for kind in chosen]
    scale = span / sum(weights)
    faults = []
    slot_start = warmup_s
    for kind, weight in zip(chosen, weights, strict=True):
        low, high = _DURATION_S[kind]
        slot = weight * scale
        length = min(rng.uniform(low, high), scale * high)
        start = slot_start + rng.uniform(0.0, max(0.0, slot * 0.9 - length))
        faults.append(Fault(kind, _target(rng, kind, processes, hosts or []), round(start, 2), round(length, 2)))
        slot_start += slot
    return faults


def _targets(processes: dict[str, str], kind: str) -> list[str]:
    return sorted(name for name, k in processes.items() if k == kind)


def _target(rng: random.Random, kind: str, processes: dict[str, str], hosts: list[str]) -> str:
    if kind in _KILL_TARGETS:
        return rng.choice(_targets(processes, _KILL_TARGETS[kind]))
    if kind == PAUSE:
        return rng.choice(sorted(processes))
    if kind == KILL_LEADER:
        return f"{LEDGER_TOPIC}:{rng.randrange(2)}"
    if kind == ISOLATE_HOST:
        return rng.choice(sorted(hosts)) if hosts else "any"
    if kind in (BROKER_MINORITY, BELOW_MIN_ISR):  # the broker cut off, or the one left
        brokers = _targets(processes, BROKER)
        return rng.choice(brokers) if brokers else "any"
    if kind == VALIDATOR_FROM_KAFKA:
        return rng.choice(_targets(processes, VALIDATOR))
    if kind == SERVICE_FROM_DATABASE:
        return rng.choice([s for s in _targets(processes, SERVICE) if s != "gateway"] or ["payment_intake"])
    raise ValueError(kind)


async def partition_leader(bootstrap: str, topic: str, partition: int) -> int | None:
    """The node id of the broker leading `topic`'s `partition` (the Kafka admin client's metadata)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        for described in await admin.describe_topics([topic]):
            for entry in described.get("partitions", []):
                if entry["partition"] == partition and entry["leader"] >= 0:
                    return int(entry["leader"])
    finally:
        await admin.close()
    return None


@dataclass
class Nemesis:
    """Injects a schedule into `system`; `heal_all()` undoes whatever is still broken."""

    system: System
    schedule: list[Fault]
    kafka_bootstrap: str
    killed: set[str] = field(default_factory=set)
    paused: set[str] = field(default_factory=set)
    partitioned: bool = False

    async def run(self, started: float) -> None:
        """Inject each fault at its time (`started` is the run's epoch start); heal it at its end."""
        for fault in self.schedule:
            delay = started + fault.at_s - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._inject(fault)
            if fault.injected:
                await asyncio.sleep(max(0.0, fault.start + fault.duration_s - time.time()))
                await self._heal(fault)
            fault.end = time.time()
            say(f"fault {fault.kind} {fault.target}: {'healed' if fault.injected else 'skipped'}"
                f"{' (' + fault.note + ')' if fault.note else ''}")  # fmt: skip

    async def _inject(self, fault: Fault) -> None:
        fault.start = time.time()
        system = self.system
        try:
            if fault.kind in _KILL_TARGETS:
                await self._kill(fault, fault.target)
            elif fault.kind == KILL_LEADER:
                topic, partition = fault.target.rsplit(":", 1)
                leader = await partition_leader(self.kafka_bootstrap, topic, int(partition))
                if leader is None:
                    fault.note = "no leader"
                    return
                broker = system.broker_of_node(leader)
                fault.note = f"leader node {leader} ({broker})"
                await self._kill(fault, broker)
            elif fault.kind == PAUSE:
                if system.signal(fault.target, signal.SIGSTOP):
                    self.paused.add(fault.target)
                    fault.injected = True
                else:
                    fault.note = "not running"
            else:
                await asyncio.to_thread(system.partition, fault.kind, fault.target)
                self.partitioned = True
                fault.injected = True
        except NetworkFaultsUnsupported as exc:
            fault.note = str(exc)
            log.warning("skipping %s %s: %s", fault.kind, fault.target, exc)
        except Exception as exc:
            fault.note = f"{type(exc).__name__}: {exc}"
            log.warning("could not inject %s %s: %s", fault.kind, fault.target, fault.note)

    async def _kill(self, fault: Fault, name: str) -> None:
        if self.system.signal(name, signal.SIGKILL):
            self.killed.add(name)
            fault.injected = True
        else:
            fault.note = (fault.note + "; " if fault.note else "") + f"{name} not running"

    async def _heal(self, fault: Fault) -> None:
        try:
            if fault.kind in _KILL_TARGETS or fault.kind == KILL_LEADER:
                for name in sorted(self.killed):
                    await self._restart(name)
            elif fault.kind == PAUSE:
                self.system.signal(fault.target, signal.SIGCONT)
                self.paused.discard(fault.target)
            else:
                await asyncio.to_thread(self.system.heal_network)
                self.partitioned = False
        except Exception as exc:
            fault.note = (fault.note + "; " if fault.note else "") + f"heal failed: {type(exc).__name__}: {exc}"
            log.warning("healing %s %s failed: %s", fault.kind, fault.target, exc)

    async def _restart(self, name: str) -> None:
        # Wait for the killed process to be gone (a zombie of ours is reaped by pid_alive).
        for _ in range(100):
            if not self.system.running(name):
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(self.system.restart, name)
        self.killed.discard(name)

    async def heal_all(self) -> None:
        """Resume every paused process, restart every killed one, undo every partition."""
        for name in sorted(self.paused):
            self.system.signal(name, signal.SIGCONT)
        self.paused.clear()
        if self.partitioned:
            await asyncio.to_thread(self.system.heal_network)
            self.partitioned = False
        for name in sorted(self.killed):
            try:
                await self._restart(name)
            except Exception as exc:
                log.warning("restarting %s failed: %s", name, exc)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
