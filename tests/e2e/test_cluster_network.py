"""The multi-host cluster's network and Kafka: hosts in network namespaces, a KRaft quorum of three
controllers and three brokers, a topic with 3 replicas and min ISR 2 written through isolations.

Real namespaces, real brokers, real faults (a host's switch port down, blackhole routes); the client
runs on the cluster's ops host. Needs root and `ip netns`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, NotEnoughReplicasAfterAppendError, NotEnoughReplicasError
from fapiao_stack.cluster import (
    OPS,
    POSTGRES_PORT,
    SERVICES_DB_HOST,
    bootstrap_of,
    broker_host,
    controller_host,
    host_layout,
    kafka_nodes,
    partition_leaders,
    start_kafka,
)
from fapiao_stack.hosts import Network, netns_available, port_open_in, run_in_netns
from fapiao_stack.kafka import KafkaBroker
from fapiao_stack.postgres import LocalPostgres

pytestmark = pytest.mark.e2e

_AVAILABLE, _WHY_NOT = netns_available()
needs_netns = pytest.mark.skipif(not _AVAILABLE, reason=f"multi-host tests need network namespaces: {_WHY_NOT}")

TOPIC = "cluster.probe"
# Bounded waits for what the cluster does by itself: fence a lost broker (9 s session timeout), drop a
# lagging follower from the ISR (10 s), elect leaders, and for the client to see it.
SETTLE_S = 90.0


def _hosts() -> dict[str, int]:
    wanted = {OPS, SERVICES_DB_HOST, *(controller_host(i) for i in (1, 2, 3)), *(broker_host(i) for i in (1, 2, 3))}
    return {host: offset for host, offset in host_layout().items() if host in wanted}


@pytest.fixture
def network() -> Iterator[Network]:
    net = Network(prefix=f"fapiao-t{os.getpid() % 100000}-")
    net.down()
    net.up(_hosts())
    try:
        yield net
    finally:
        net.down()


@pytest.fixture
def kafka(network: Network, tmp_path: Path) -> Iterator[list[KafkaBroker]]:
    nodes = kafka_nodes(network, tmp_path / "hosts", tmp_path / "logs")
    try:
        start_kafka(nodes, tmp_path / "pids", timeout_s=180)
        yield nodes
    finally:
        for node in reversed(nodes):
            node.stop()


def _producer(bootstrap: str) -> AIOKafkaProducer:
    # Not idempotent: an idempotent producer retries a refused write until it goes through; this one
    # gives the broker's refusal back once the request times out.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=6000, retry_backoff_ms=200, metadata_max_age_ms=2000
    )


async def _write_until_ok(producer: AIOKafkaProducer, value: bytes) -> None:
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            await producer.send_and_wait(TOPIC, value)
            return
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _refusal(producer: AIOKafkaProducer) -> KafkaError:
    """The error of the first write the cluster refuses with NOT_ENOUGH_REPLICAS (bounded wait: until
    the follower is out of the ISR, writes may still succeed or time out)."""
    deadline = time.monotonic() + SETTLE_S
    seen = []
    while time.monotonic() < deadline:
        try:
            await producer.send_and_wait(TOPIC, b"below-min-isr")
        except (NotEnoughReplicasError, NotEnoughReplicasAfterAppendError) as exc:
            return exc
        except KafkaError as exc:
            seen.append(type(exc).__name__)
        await asyncio.sleep(0.5)
    raise AssertionError(f"no NOT_ENOUGH_REPLICAS within {SETTLE_S}s; errors seen: {seen[-10:]}")


async def _scenario(network: Network, bootstrap: str) -> dict[str, object]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    TOPIC, 1, 3, topic_configs={"min.insync.replicas": "2", "unclean.leader.election.enable": "false"}
                )
            ]
        )
    finally:
        await admin.close()
    producer = _producer(bootstrap)
    await producer.start()
    acknowledged = []
    try:
        await _write_until_ok(producer, b"healthy")
        acknowledged.append(b"healthy")
        partition = TopicPartition(TOPIC, 0)
        leader = producer.client.cluster.leader_for_partition(partition)
        assert leader in (1, 2, 3)

        # The leader's host loses its link: a new leader is elected among the two others.
        network.isolate(broker_host(leader))
        await _write_until_ok(producer, b"one-isolated")
        acknowledged.append(b"one-isolated")
        new_leader = producer.client.cluster.leader_for_partition(partition)
        assert new_leader not in (None, leader)

        # A second broker's host loses its link: one replica is left in sync, below min ISR 2.
        follower = next(i for i in (1, 2, 3) if i not in (leader, new_leader))
        network.isolate(broker_host(follower))
        refusal = await _refusal(producer)

        network.heal_all()
        await _write_until_ok(producer, b"healed")
        acknowledged.append(b"healed")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(TOPIC, 0)])
        read: list[bytes] = []
        deadline = time.monotonic() + 30
        while not set(acknowledged) <= set(read) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            read += [record.value for records in batch.values() for record in records if record.value is not None]
    finally:
        await consumer.stop()
    return {"refusal": refusal, "acknowledged": acknowledged, "read": read}


@needs_netns
@pytest.mark.timeout(900)  # six JVMs started one after the other on a shared machine
def test_a_replicated_topic_writes_with_one_broker_isolated_and_refuses_below_min_isr(
    network: Network, kafka: list[KafkaBroker], tmp_path: Path
) -> None:
    # The hosts reach each other through the bridge, and nothing else: the machine has no route to them.
    ops = network.namespace(OPS)
    brokers = [node for node in kafka if node.roles == "broker"]
    assert all(port_open_in(ops, node.host, node.port) for node in brokers)

    outcome = run_in_netns(ops, asyncio.run, _scenario(network, bootstrap_of(network)))
    assert isinstance(outcome["refusal"], NotEnoughReplicasError | NotEnoughReplicasAfterAppendError)
    assert set(outcome["acknowledged"]) <= set(outcome["read"])  # type: ignore[arg-type]
    assert set(partition_leaders(network, bootstrap_of(network), TOPIC)) == {0}


@needs_netns
def test_postgres_listens_on_its_host_address_and_an_isolated_host_is_unreachable(
    network: Network, tmp_path: Path
) -> None:
    ops = network.namespace(OPS)
    # A PostgreSQL server on a host of its own, reachable from the others on its host's address.
    pg_address = network.address(host_layout()[SERVICES_DB_HOST])
    server = LocalPostgres(
        tmp_path / "pg" / "data",
        POSTGRES_PORT,
        tmp_path / "pg.log",
        host=pg_address,
        launcher=network.launcher(SERVICES_DB_HOST),
    )
    server.start()
    try:
        assert port_open_in(ops, pg_address, POSTGRES_PORT)
        network.isolate(SERVICES_DB_HOST)
        assert not port_open_in(ops, pg_address, POSTGRES_PORT)
        network.heal(SERVICES_DB_HOST)
        assert port_open_in(ops, pg_address, POSTGRES_PORT)
    finally:
        server.stop()


@needs_netns
def test_a_cut_separates_two_groups_both_ways_and_heals(network: Network) -> None:
    ops, one, two = network.namespace(OPS), broker_host(1), broker_host(2)
    where = {host: network.address(offset) for host, offset in host_layout().items()}
    listener = _listen(network, two, where[two])
    try:
        assert port_open_in(ops, where[two], 7000)
        with socket.socket() as sock:  # the machine itself has no way in, and sends nothing out for them
            sock.settimeout(2)
            assert sock.connect_ex((where[two], 7000)) == errno.EHOSTUNREACH
        network.cut([one], [two, SERVICES_DB_HOST])
        assert set(network.blackholes(one)) == {where[two], where[SERVICES_DB_HOST]}
        assert network.blackholes(two) == [where[one]]
        assert not port_open_in(network.namespace(one), where[two], 7000)
        assert port_open_in(ops, where[two], 7000)  # the rest of the network is untouched
        network.heal_all()
        assert network.blackholes(one) == [] and network.blackholes(two) == []
        assert port_open_in(network.namespace(one), where[two], 7000)
    finally:
        listener.kill()
        listener.wait()
    with pytest.raises(ValueError):
        network.cut([one], [one])


def _listen(network: Network, host: str, address: str) -> subprocess.Popen[bytes]:
    code = f"import socket,time\ns=socket.socket();s.bind(({address!r},7000));s.listen();time.sleep(120)"
    proc = subprocess.Popen([*network.launcher(host), sys.executable, "-c", code])
    deadline = time.monotonic() + 20
    while not port_open_in(network.namespace(host), address, 7000):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    return proc


@needs_netns
def test_down_removes_every_namespace_even_with_processes_left_inside() -> None:
    network = Network(prefix=f"fapiao-d{uuid.uuid4().hex[:6]}-", subnet="10.231.77.0/24")
    network.up({"a": 2, "b": 3})
    assert "unreachable 10.231.77.0/24" in _root_routes()
    assert network.up({"a": 2, "b": 3}) == {"a": network.address(2), "b": network.address(3)}  # idempotent
    orphan = _listen(network, "a", network.address(2))
    network.down()
    assert network.namespaces() == []
    assert orphan.wait(timeout=30) is not None
    assert "10.231.77.0/24" not in _root_routes()


def _root_routes() -> str:
    return subprocess.run(["ip", "route", "show"], capture_output=True, text=True, check=True).stdout


@needs_netns
def test_a_cluster_whose_prefix_extends_another_is_not_the_others() -> None:
    outer = Network(prefix=f"fapiao-o{uuid.uuid4().hex[:6]}-")
    inner = Network(prefix=f"{outer.prefix}in-")
    try:
        outer.up({"a": 2})
        inner.up({"a": 2})
        assert sorted(outer.namespaces()) == sorted([outer.switch, outer.namespace("a")])
        assert list(outer.hosts()) == ["a"]
        outer.down()
        assert sorted(inner.namespaces()) == sorted([inner.switch, inner.namespace("a")])
    finally:
        inner.down()
        outer.down()
    assert outer.namespaces() == [] and inner.namespaces() == []
