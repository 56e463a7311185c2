"""The multi-host cluster's layout, its Kafka nodes' settings and the listen addresses of its processes
(pure: no namespace, no process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fapiao_runtime.config import metrics_host
from fapiao_stack.cluster import (
    BROKERS,
    CONTROLLERS,
    OPS,
    REPLICATION_FACTOR,
    addresses,
    bootstrap_of,
    host_layout,
    kafka_nodes,
)
from fapiao_stack.config import LISTEN_HOST_VARIABLES, ledger_endpoints, process_environment, stack_environment
from fapiao_stack.hosts import Network
from fapiao_stack.kafka import KafkaBroker
from fapiao_stack.services import LEDGER_VALIDATORS, local_services

pytestmark = pytest.mark.unit


def test_every_process_has_a_host_and_every_host_an_address_of_its_own() -> None:
    layout = host_layout()
    services = {spec.name for spec in local_services()}
    assert services <= set(layout)
    assert OPS in layout
    assert len(layout) == 1 + CONTROLLERS + BROKERS + 1 + LEDGER_VALIDATORS + len(services)
    assert len(set(layout.values())) == len(layout), "two hosts share an address"
    where = addresses(Network(subnet="10.99.7.0/24"))
    assert all(address.startswith("10.99.7.") for address in where.values())


def test_the_subnet_must_be_private_ipv4_with_room_for_the_hosts() -> None:
    with pytest.raises(ValueError, match="private"):
        Network(subnet="8.8.8.0/24")
    with pytest.raises(ValueError):
        Network(subnet="10.0.0.0/31")
    network = Network(subnet="10.231.0.0/24")
    assert network.address(2) == "10.231.0.2"
    for outside in (0, 255):
        with pytest.raises(ValueError):
            network.address(outside)
    assert network.namespace("kafka-1") == "fapiao-kafka-1" and network.switch == "fapiao-switch"


def test_the_kafka_nodes_form_one_cluster_with_a_quorum_apart_from_three_brokers(tmp_path: Path) -> None:
    network = Network()
    nodes = kafka_nodes(network, tmp_path / "hosts", tmp_path / "logs")
    controllers = [n for n in nodes if n.roles == "controller"]
    brokers = [n for n in nodes if n.roles == "broker"]
    assert (len(controllers), len(brokers)) == (CONTROLLERS, BROKERS)
    assert len({n.cluster_id for n in nodes}) == 1 and nodes[0].cluster_id
    assert len({n.node_id for n in nodes}) == len(nodes)
    voters = {n.voter for n in controllers}
    for node in nodes:
        props = node.properties()
        assert set(props["controller.quorum.voters"].split(",")) == voters
        assert "127.0.0.1" not in props["listeners"] and node.host in props["listeners"]
        assert node.netns == network.namespace(node.data_dir.name)
    for broker in brokers:
        props = broker.properties()
        assert props["advertised.listeners"] == f"PLAINTEXT://{broker.host}:{broker.port}"
        assert props["offsets.topic.replication.factor"] == str(REPLICATION_FACTOR)
        assert props["transaction.state.log.replication.factor"] == str(REPLICATION_FACTOR)
        assert props["transaction.state.log.min.isr"] == "2" and props["min.insync.replicas"] == "2"
        assert props["unclean.leader.election.enable"] == "false"
    assert bootstrap_of(network).split(",") == [b.bootstrap for b in brokers]


def test_a_lone_broker_keeps_the_local_stacks_settings(tmp_path: Path) -> None:
    props = KafkaBroker(tmp_path, 19092, 19093, tmp_path / "kafka.log").properties()
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["offsets.topic.replication.factor"] == "1" and props["transaction.state.log.min.isr"] == "1"
    assert "replica.lag.time.max.ms" not in props
    with pytest.raises(ValueError, match="roles"):
        KafkaBroker(tmp_path, 1, 2, tmp_path / "k.log", roles="observer").properties()


def test_services_listen_on_their_hosts_address_and_reach_the_others_at_theirs(tmp_path: Path) -> None:
    where = addresses(Network())
    base = stack_environment(tmp_path, "10.231.0.21:9092", "postgresql://postgres@10.231.0.30:5432/fapiao", where)
    assert base["FAPIAO_LEDGER_ENDPOINTS"] == ledger_endpoints(where)
    assert all(
        e.split(":")[0] == where[f"ledger-{i}"] for i, e in enumerate(base["FAPIAO_LEDGER_ENDPOINTS"].split(","), 1)
    )
    assert base["FAPIAO_INTAKE_WEBHOOK_URL"].startswith(f"http://{where['payment_intake']}:")
    assert base["FAPIAO_MINTING_ENDPOINT"].startswith(f"{where['invoice_minting']}:")
    assert base["FAPIAO_CLAIM_BASE_URL"].startswith(f"http://{where['gateway']}:")
    for spec in local_services():
        env = process_environment(spec, tmp_path, base, where[spec.name])
        assert {env[name] for name in LISTEN_HOST_VARIABLES} == {where[spec.name]}
        if spec.module == "reimbursement":
            assert where[spec.name] in env["FAPIAO_REIMBURSEMENT_TLS_CERT_FILE"]
    # On one host everything stays on loopback, as before.
    local = stack_environment(tmp_path, "127.0.0.1:19092", "postgresql://postgres@127.0.0.1:15432/fapiao")
    assert "127.0.0.1" in local["FAPIAO_LEDGER_ENDPOINTS"] and "10.231" not in _settings(local)
    assert process_environment(local_services()[0], tmp_path, local)["FAPIAO_GRPC_HOST"] == "127.0.0.1"


def _settings(env: dict[str, str]) -> str:
    """Every FAPIAO_* value but the keys, in one string."""
    return " ".join(value for key, value in env.items() if key.startswith("FAPIAO_") and "KEY" not in key)


def test_the_metrics_address_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAPIAO_METRICS_HOST", raising=False)
    assert metrics_host() == "127.0.0.1"
    monkeypatch.setenv("FAPIAO_METRICS_HOST", "10.231.0.40")
    assert metrics_host() == "10.231.0.40"
