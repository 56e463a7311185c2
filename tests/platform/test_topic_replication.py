"""Topics on the real broker get the configured replication settings; existing ones are checked."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import InvalidReplicationFactorError
from fapiao_runtime.kafka import ReplicationSettings, ensure_topics
from fapiao_runtime.topics import ALL_TOPICS, LEDGER_SIGNATURES, LEDGER_TRANSACTIONS, PAYMENTS

pytestmark = pytest.mark.integration

_TOPIC_OVERRIDE = 1


async def _describe(bootstrap: str, names: list[str]) -> dict[str, dict[str, tuple[str, int]]]:
    """topic -> setting -> (value, where it is set)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    return {
        resource["resource_name"]: {
            entry["config_names"]: (entry["config_value"], entry["config_source"])
            for entry in resource["config_entries"]
        }
        for response in responses
        for resource in response.to_object()["resources"]
    }


async def _layout(bootstrap: str, names: list[str]) -> dict[str, list[int]]:
    """topic -> replica count of each partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {t["topic"]: [len(p["replicas"]) for p in t["partitions"]] for t in topics}


async def test_topics_get_the_settings_of_the_environment(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a service calls it (no settings passed): the FAPIAO_KAFKA_* variables decide."""
    monkeypatch.setenv("FAPIAO_KAFKA_REPLICATION_FACTOR", "1")
    monkeypatch.setenv("FAPIAO_KAFKA_MIN_INSYNC_REPLICAS", "1")
    monkeypatch.setenv("FAPIAO_KAFKA_RETENTION_MS", "7200000")
    prefix = f"r{uuid.uuid4().hex[:10]}."
    await ensure_topics(kafka_bootstrap, prefix)
    names = [f"{prefix}{spec.name}" for spec in ALL_TOPICS]
    configs = await _describe(kafka_bootstrap, names)
    for spec in ALL_TOPICS:
        topic = configs[f"{prefix}{spec.name}"]
        # Set on the topic itself, not inherited from the broker's defaults.
        assert topic["min.insync.replicas"] == ("1", _TOPIC_OVERRIDE), spec.name
        assert topic["unclean.leader.election.enable"] == ("false", _TOPIC_OVERRIDE), spec.name
        assert topic["cleanup.policy"][0] == "delete", spec.name
        kept_forever = spec in (LEDGER_TRANSACTIONS, LEDGER_SIGNATURES)
        assert topic["retention.ms"] == ("-1" if kept_forever else "7200000", _TOPIC_OVERRIDE), spec.name
        if kept_forever:
            assert topic["retention.bytes"] == ("-1", _TOPIC_OVERRIDE), spec.name
            assert topic["cleanup.policy"] == ("delete", _TOPIC_OVERRIDE), spec.name
    layout = await _layout(kafka_bootstrap, names)
    assert {name: len(replicas) for name, replicas in layout.items()} == {
        f"{prefix}{spec.name}": spec.partitions for spec in ALL_TOPICS
    }
    assert {count for replicas in layout.values() for count in replicas} == {1}


async def test_a_replication_factor_the_brokers_cannot_hold_is_an_error(kafka_bootstrap: str) -> None:
    prefix = f"r{uuid.uuid4().hex[:10]}."
    with pytest.raises(InvalidReplicationFactorError, match=f"{prefix}payments.v1"):
        await ensure_topics(kafka_bootstrap, prefix, [PAYMENTS], ReplicationSettings(2, 1), brokers_timeout_s=0)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert f"{prefix}payments.v1" not in await admin.list_topics()
    finally:
        await admin.close()


async def test_existing_topics_with_other_settings_are_reported_and_made_safer(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"r{uuid.uuid4().hex[:10]}."
    ledger, payments = f"{prefix}{LEDGER_TRANSACTIONS.name}", f"{prefix}{PAYMENTS.name}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        created = await admin.create_topics(
            [
                NewTopic(ledger, 3, 1, topic_configs={"retention.ms": "1000", "cleanup.policy": "compact"}),
                NewTopic(
                    payments,
                    4,
                    1,
                    topic_configs={"retention.ms": "60000", "unclean.leader.election.enable": "true"},
                ),
            ]
        )
        assert {entry["error_code"] for entry in created.to_object()["topic_errors"]} == {0}
        for _ in range(100):  # until the broker's metadata lists them
            if {ledger, payments} <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()

    with caplog.at_level(logging.WARNING, logger="fapiao_runtime.kafka"):
        await ensure_topics(kafka_bootstrap, prefix, [LEDGER_TRANSACTIONS, PAYMENTS], ReplicationSettings(1, 1, 1000))
    reported = {
        getattr(record, "topic", ""): getattr(record, "differences", "")
        for record in caplog.records
        if record.getMessage() == "topic settings differ from the configured ones"
    }
    assert set(reported) == {ledger, payments}
    assert "partitions 3 (configured 2; never changed here)" in reported[ledger]
    assert "retention.ms 1000 (configured -1; corrected)" in reported[ledger]
    assert "cleanup.policy compact (configured delete; corrected)" in reported[ledger]
    # A shorter retention could delete what a consumer has not read yet: reported, not applied.
    assert "retention.ms 60000 (configured 1000; left as it is)" in reported[payments]
    assert "unclean.leader.election.enable true (configured false; corrected)" in reported[payments]

    # The controller applies a change to the brokers' view a moment later.
    for _ in range(100):
        configs = await _describe(kafka_bootstrap, [ledger, payments])
        if configs[ledger]["retention.ms"][0] == "-1" and configs[payments]["unclean.leader.election.enable"][0] == (
            "false"
        ):
            break
        await asyncio.sleep(0.1)
    assert configs[ledger]["retention.ms"][0] == "-1"
    assert configs[ledger]["retention.bytes"][0] == "-1"
    assert configs[ledger]["cleanup.policy"][0] == "delete"
    assert configs[payments]["unclean.leader.election.enable"][0] == "false"
    # The topic's own settings that were not corrected are kept (AlterConfigs replaces them all).
    assert configs[payments]["retention.ms"] == ("60000", _TOPIC_OVERRIDE)
    assert (await _layout(kafka_bootstrap, [ledger]))[ledger] == [1, 1, 1]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fapiao_runtime.kafka"):
        await ensure_topics(kafka_bootstrap, prefix, [LEDGER_TRANSACTIONS], ReplicationSettings(1, 1, 1000))
    remaining = [getattr(record, "differences", "") for record in caplog.records]
    assert remaining == ["partitions 3 (configured 2; never changed here)"]
