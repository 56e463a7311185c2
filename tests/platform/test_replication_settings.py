"""Replication settings read from the environment: every service reads them the same way."""

from __future__ import annotations

import pytest
from fapiao_runtime.kafka import ReplicationSettings
from fapiao_runtime.topics import LEDGER_SIGNATURES, LEDGER_TRANSACTIONS, PAYMENTS

pytestmark = pytest.mark.unit

_VARIABLES = ("FAPIAO_KAFKA_REPLICATION_FACTOR", "FAPIAO_KAFKA_MIN_INSYNC_REPLICAS", "FAPIAO_KAFKA_RETENTION_MS")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_suit_a_single_broker() -> None:
    settings = ReplicationSettings.from_env()
    assert settings == ReplicationSettings(replication_factor=1, min_insync_replicas=1, retention_ms=None)
    assert settings.topic_configs(PAYMENTS) == {
        "min.insync.replicas": "1",
        "unclean.leader.election.enable": "false",
    }


def test_a_cluster_reads_its_factor_quorum_and_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("FAPIAO_KAFKA_MIN_INSYNC_REPLICAS", "2")
    monkeypatch.setenv("FAPIAO_KAFKA_RETENTION_MS", "604800000")
    settings = ReplicationSettings.from_env()
    assert (settings.replication_factor, settings.min_insync_replicas, settings.retention_ms) == (3, 2, 604_800_000)
    assert settings.topic_configs(PAYMENTS) == {
        "min.insync.replicas": "2",
        "unclean.leader.election.enable": "false",
        "retention.ms": "604800000",
    }


@pytest.mark.parametrize("spec", [LEDGER_TRANSACTIONS, LEDGER_SIGNATURES], ids=lambda s: s.name)
def test_the_ledgers_topics_are_kept_forever_whatever_the_retention(
    monkeypatch: pytest.MonkeyPatch, spec: object
) -> None:
    monkeypatch.setenv("FAPIAO_KAFKA_RETENTION_MS", "3600000")
    monkeypatch.setenv("FAPIAO_KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("FAPIAO_KAFKA_MIN_INSYNC_REPLICAS", "2")
    configs = ReplicationSettings.from_env().topic_configs(spec)  # type: ignore[arg-type]
    assert configs == {
        "min.insync.replicas": "2",
        "unclean.leader.election.enable": "false",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
    }


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"FAPIAO_KAFKA_REPLICATION_FACTOR": "0"}, "FAPIAO_KAFKA_REPLICATION_FACTOR"),
        ({"FAPIAO_KAFKA_REPLICATION_FACTOR": "three"}, "FAPIAO_KAFKA_REPLICATION_FACTOR"),
        ({"FAPIAO_KAFKA_MIN_INSYNC_REPLICAS": "2"}, "FAPIAO_KAFKA_MIN_INSYNC_REPLICAS"),
        ({"FAPIAO_KAFKA_REPLICATION_FACTOR": "3", "FAPIAO_KAFKA_MIN_INSYNC_REPLICAS": "0"}, "MIN_INSYNC"),
        ({"FAPIAO_KAFKA_RETENTION_MS": "0"}, "FAPIAO_KAFKA_RETENTION_MS"),
        ({"FAPIAO_KAFKA_RETENTION_MS": "-5"}, "FAPIAO_KAFKA_RETENTION_MS"),
        ({"FAPIAO_KAFKA_RETENTION_MS": "1h"}, "FAPIAO_KAFKA_RETENTION_MS"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=named):
        ReplicationSettings.from_env()


def test_retention_forever_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_KAFKA_RETENTION_MS", "-1")
    assert ReplicationSettings.from_env().topic_configs(PAYMENTS)["retention.ms"] == "-1"
