"""The local stack waits for its fixed ports instead of failing on a port a closed connection still holds."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest
from fapiao_stack import procs
from fapiao_stack.procs import free_port, port_bindable, wait_bindable

pytestmark = pytest.mark.unit


def test_free_port_never_hands_out_one_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may bind the port just released again; free_port then asks for another."""
    # Privileged ports: outside the range the kernel hands out for port 0, so no earlier call gave them.
    given = iter([1_001, 1_001, 1_001, 1_002])

    class _Socket:
        def __enter__(self) -> _Socket:
            return self

        def __exit__(self, *_: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(given)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(procs, "socket", SimpleNamespace(socket=_Socket))
    assert [procs.free_port(), procs.free_port()] == [1_001, 1_002]


def test_waits_until_a_held_port_is_released() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", free_port()))
    holder.listen()
    port = holder.getsockname()[1]
    assert not port_bindable(port)
    threading.Timer(0.5, holder.close).start()
    started = time.monotonic()
    wait_bindable([port], timeout_s=10, interval_s=0.05)
    assert time.monotonic() - started >= 0.4
    assert port_bindable(port)


def test_names_the_ports_still_held() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(RuntimeError, match=str(port)):
            wait_bindable([port, free_port()], timeout_s=0.2, interval_s=0.05)


def test_the_stacks_ports_lie_below_the_ephemeral_range() -> None:
    # An outgoing connection of any process (one of the stack's own services included) takes its local
    # port from this range, and could hold a port a service of the stack must listen on.
    from pathlib import Path

    from fapiao_stack.services import KAFKA_CONTROLLER_PORT, KAFKA_PORT, PORT_OFFSET, POSTGRES_PORT, local_services

    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    ephemeral_low = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    ports = [port for spec in local_services() for port in spec.ports()]
    ports += [KAFKA_PORT, KAFKA_CONTROLLER_PORT, POSTGRES_PORT]
    largest_offset = 9_000  # the private stacks of tests/e2e/conftest.py and fapiao_bench/e2e.py
    assert max(ports) - PORT_OFFSET + largest_offset < ephemeral_low
