"""`python -m fapiao_runtime.healthcheck`, the probe of the compose healthchecks, against a real gRPC
health service and a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from fapiao_runtime import healthcheck
from fapiao_stack.procs import free_port
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

pytestmark = pytest.mark.unit


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(grace=None)


class _Healthz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_serving_exits_0_and_says_so(health_server, capsys, monkeypatch) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    monkeypatch.setenv("FAPIAO_GRPC_PORT", str(port))
    assert healthcheck.main([]) == 0
    assert capsys.readouterr().out == f"grpc 127.0.0.1:{port} SERVING\n"


def test_not_serving_exits_1(health_server, capsys) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main(["--port", str(port)]) == 1
    assert capsys.readouterr().out.endswith("NOT_SERVING\n")


def test_no_server_is_down_within_the_timeout(capsys) -> None:
    assert healthcheck.main(["--port", str(free_port()), "--timeout", "1"]) == 1
    assert capsys.readouterr().out.endswith(" DOWN\n")


def test_http_mode_asks_healthz_on_the_http_port(http_server, capsys, monkeypatch) -> None:
    port = http_server.server_address[1]
    monkeypatch.setenv("FAPIAO_HTTP_PORT", str(port))
    monkeypatch.setattr(_Healthz, "status", 200)
    assert healthcheck.main(["--http"]) == 0
    monkeypatch.setattr(_Healthz, "status", 503)
    assert healthcheck.main(["--http"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == f"http 127.0.0.1:{port} NOT_SERVING"


@pytest.mark.parametrize("port", [None, "", "0", "70000", "http"])
def test_without_a_valid_port_it_is_a_usage_error(port, monkeypatch, capsys) -> None:
    monkeypatch.delenv("FAPIAO_GRPC_PORT", raising=False)
    if port is not None:
        monkeypatch.setenv("FAPIAO_GRPC_PORT", port)
    assert healthcheck.main([]) == 2
    assert "FAPIAO_GRPC_PORT" in capsys.readouterr().err


def test_runs_as_a_module(health_server) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    done = subprocess.run(
        [sys.executable, "-m", "fapiao_runtime.healthcheck", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
