"""Kafka clients with the settings Fapiao relies on.

Producers: acks=all and idempotence on, so a retried send never duplicates or reorders within a
partition. Topics are created explicitly with their partition counts (auto-creation is not relied on),
replicated and kept as ReplicationSettings says (FAPIAO_KAFKA_* variables, read by every service alike).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import InvalidReplicationFactorError, KafkaConnectionError, TopicAlreadyExistsError, for_code

from fapiao_runtime.config import env_int
from fapiao_runtime.topics import ALL_TOPICS, TopicSpec

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 * 1024 * 1024

# For consumers off any latency path (bookkeeping, registries): the broker answers a fetch once 64 KiB
# are waiting or after 200 ms. A trickle of records then costs a few fetches and offset commits per
# second instead of one of each per record, on the broker and in the consumer.
BATCHED_FETCH = {"fetch_min_bytes": 64 * 1024, "fetch_max_wait_ms": 200}


def new_producer(bootstrap: str, *, client_id: str, linger_ms: int = 2) -> AIOKafkaProducer:
    """An idempotent producer (acks=all, enable_idempotence=True). The caller starts and stops it.

    linger_ms: how long a send may wait for others to share its request. 2 ms suits outbox relays,
    whose rounds send many rows; validators use 0, where every record is a latency hop (markers,
    block signatures, results) and the sends made while a request is in flight form the next one
    anyway.
    """
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=MAX_REQUEST_BYTES,
        request_timeout_ms=30_000,
    )


@dataclass(frozen=True)
class ReplicationSettings:
    """How Fapiao's topics are replicated and kept. The defaults suit the single-broker local stack; a
    cluster sets FAPIAO_KAFKA_REPLICATION_FACTOR=3 and FAPIAO_KAFKA_MIN_INSYNC_REPLICAS=2 (deploy/).

    replication_factor: copies of each partition (at most the number of brokers).
    min_insync_replicas: copies an acks=all write must reach; below it the broker refuses writes
      (NOT_ENOUGH_REPLICAS) instead of acknowledging what one crash could lose.
    retention_ms: how long the topics not kept forever keep records (-1: forever); None leaves the
      broker's default (log.retention.*). The ledger's topics are kept forever whatever it says.
    Every topic gets unclean.leader.election.enable=false: an out-of-sync replica never becomes leader.
    """

    replication_factor: int = 1
    min_insync_replicas: int = 1
    retention_ms: int | None = None

    def __post_init__(self) -> None:
        if self.replication_factor < 1:
            raise ValueError(f"FAPIAO_KAFKA_REPLICATION_FACTOR must be at least 1, got {self.replication_factor}")
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise ValueError(
                f"FAPIAO_KAFKA_MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) must lie between 1 and"
                f" FAPIAO_KAFKA_REPLICATION_FACTOR ({self.replication_factor})"
            )
        if self.retention_ms is not None and (self.retention_ms < -1 or self.retention_ms == 0):
            raise ValueError(
                "FAPIAO_KAFKA_RETENTION_MS must be a positive number of milliseconds or -1 (keep forever),"
                f" got {self.retention_ms}"
            )

    @classmethod
    def from_env(cls) -> ReplicationSettings:
        """FAPIAO_KAFKA_REPLICATION_FACTOR, FAPIAO_KAFKA_MIN_INSYNC_REPLICAS, FAPIAO_KAFKA_RETENTION_MS."""
        retention = os.environ.get("FAPIAO_KAFKA_RETENTION_MS", "")
        return cls(
            replication_factor=env_int("FAPIAO_KAFKA_REPLICATION_FACTOR", 1),
            min_insync_replicas=env_int("FAPIAO_KAFKA_MIN_INSYNC_REPLICAS", 1),
            retention_ms=env_int("FAPIAO_KAFKA_RETENTION_MS", 0) if retention else None,
        )

    def topic_configs(self, spec: TopicSpec) -> dict[str, str]:
        """The settings `spec`'s topic is created with; the spec's own (the ledger's) take precedence."""
        configs = {"min.insync.replicas": str(self.min_insync_replicas), "unclean.leader.election.enable": "false"}
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        configs.update(spec.configs)
        return configs


# Kafka's codes for a topic that exists already and for a replication factor larger than the brokers
# registered so far (a cluster still starting: worth a retry).
_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno
_INVALID_REPLICATION_FACTOR = InvalidReplicationFactorError.errno
_TOPIC_OVERRIDE = 1  # DescribeConfigs config_source: set on the topic itself


async def ensure_topics(
    bootstrap: str,
    prefix: str = "",
    specs: Iterable[TopicSpec] = ALL_TOPICS,
    settings: ReplicationSettings | None = None,
    *,
    brokers_timeout_s: float = 30.0,
) -> None:
    """Create the topics that do not exist yet, with explicit partition counts and the replication
    settings (`settings`, else ReplicationSettings.from_env()).

    A topic that exists with other settings is logged as a warning naming each difference; the settings
    that only make it safer are corrected (a larger min.insync.replicas it has the replicas for, a longer
    retention, unclean leader election off, compaction off on a topic kept forever). Partition counts and
    replication factors are never changed here, and nothing is weakened: see docs/events.md.
    """
    settings = settings or ReplicationSettings.from_env()
    specs = list(specs)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fapiao-admin")
    for attempt in range(30):
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            if attempt == 29:
                raise
            await asyncio.sleep(1)
    try:
        existing = set(await admin.list_topics())
        present = [s for s in specs if f"{prefix}{s.name}" in existing]
        if present:
            await _reconcile(admin, prefix, present, settings)
        missing = [s for s in specs if f"{prefix}{s.name}" not in existing]
        if missing:
            await _create(admin, prefix, missing, settings, brokers_timeout_s)
    finally:
        await admin.close()


async def _create(
    admin: AIOKafkaAdminClient,
    prefix: str,
    specs: list[TopicSpec],
    settings: ReplicationSettings,
    brokers_timeout_s: float,
) -> None:
    wanted = {
        f"{prefix}{s.name}": NewTopic(
            f"{prefix}{s.name}",
            num_partitions=s.partitions,
            replication_factor=settings.replication_factor,
            topic_configs=settings.topic_configs(s),
        )
        for s in specs
    }
    created: list[str] = []
    deadline = time.monotonic() + brokers_timeout_s
    while wanted:
        response = (await admin.create_topics(list(wanted.values()))).to_object()
        retry: dict[str, NewTopic] = {}
        for entry in response["topic_errors"]:
            name, code = entry["topic"], entry["error_code"]
            if code == 0:
                created.append(name)
            elif code == _INVALID_REPLICATION_FACTOR and time.monotonic() < deadline:
                retry[name] = wanted[name]  # fewer brokers registered than replicas wanted, so far
            elif code != _TOPIC_ALREADY_EXISTS:  # created meanwhile by another process: fine
                raise for_code(code)(f"creating topic {name}: {entry.get('error_message') or code}")
        wanted = retry
        if wanted:
            log.warning(
                "waiting for brokers to create topics",
                extra={"topics": ",".join(wanted), "replication_factor": settings.replication_factor},
            )
            await asyncio.sleep(1)
    if created:
        log.info("topics created", extra={"topics": ",".join(created)})


def _entries(responses: list[Any]) -> dict[str, dict[str, tuple[str, bool]]]:
    """topic -> config name -> (value, set on the topic itself), from DescribeConfigs responses."""
    found: dict[str, dict[str, tuple[str, bool]]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise for_code(resource["error_code"])(
                    f"describing topic {resource['resource_name']}: {resource['error_message']}"
                )
            found[resource["resource_name"]] = {
                entry["config_names"]: (
                    entry["config_value"],
                    entry.get("config_source", _TOPIC_OVERRIDE if not entry.get("is_default") else 0)
                    == _TOPIC_OVERRIDE,
                )
                for entry in resource["config_entries"]
            }
    return found


def _safer(key: str, current: str, wanted: str, replicas: int) -> bool:
    """Whether changing `key` from `current` to `wanted` only makes the topic keep more or lose less."""
    if key == "unclean.leader.election.enable":
        return wanted == "false"
    if key == "cleanup.policy":
        return wanted == "delete"  # only topics kept forever ask for it: nothing is deleted
    try:
        if key == "min.insync.replicas":
            return int(current) < int(wanted) <= replicas
        if key in ("retention.ms", "retention.bytes"):
            return wanted == "-1" or (current != "-1" and int(wanted) > int(current))
    except ValueError:
        return False
    return False


async def _reconcile(
    admin: AIOKafkaAdminClient, prefix: str, specs: list[TopicSpec], settings: ReplicationSettings
) -> None:
    names = {f"{prefix}{s.name}": s for s in specs}
    layout = {t["topic"]: t["partitions"] for t in await admin.describe_topics(list(names))}
    configs = _entries(await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names]))
    fixes = []
    for name, spec in names.items():
        partitions = layout.get(name) or []
        replicas = min((len(p["replicas"]) for p in partitions), default=0)
        differences = []
        if partitions and len(partitions) != spec.partitions:
            differences.append(f"partitions {len(partitions)} (configured {spec.partitions}; never changed here)")
        if partitions and replicas != settings.replication_factor:
            differences.append(
                f"replication factor {replicas} (configured {settings.replication_factor};"
                " change it with kafka-reassign-partitions)"
            )
        current = configs.get(name, {})
        alter: dict[str, str] = {}
        for key, wanted in settings.topic_configs(spec).items():
            value = current.get(key, ("", False))[0]
            if value == wanted:
                continue
            if _safer(key, value, wanted, replicas):
                alter[key] = wanted
                differences.append(f"{key} {value} (configured {wanted}; corrected)")
            else:
                differences.append(f"{key} {value} (configured {wanted}; left as it is)")
        if differences:
            log.warning(
                "topic settings differ from the configured ones",
                extra={"topic": name, "differences": "; ".join(differences)},
            )
        if alter:
            # AlterConfigs replaces every setting of the topic: send its own ones along with the fixes.
            own = {key: value for key, (value, on_topic) in current.items() if on_topic}
            fixes.append(ConfigResource(ConfigResourceType.TOPIC, name, {**own, **alter}))
    if fixes:
        for response in await admin.alter_configs(fixes):
            for resource in response.to_object()["resources"]:
                if resource["error_code"]:
                    log.warning(
                        "could not correct topic settings",
                        extra={"topic": resource["resource_name"], "error": resource["error_message"]},
                    )
