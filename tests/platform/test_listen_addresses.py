"""Every server of every service listens where its settings say: no listen address is written into the code."""

from __future__ import annotations

import ast
import socket
import urllib.request
from pathlib import Path

import pytest
from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.metrics import serve_metrics
from fapiao_stack.procs import free_port
from gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit

SERVICES = Path(__file__).parents[2] / "services"
# Calls that bind a listening socket, and the argument (position, keyword) naming the host.
BINDING_CALLS = {
    "start_http_server": (1, "addr"),
    "TCPSite": (1, "host"),
    "run_app": (None, "host"),
    "add_insecure_port": (0, "address"),
    "add_secure_port": (0, "address"),
    "start_webhook": (1, "host"),
}
# Benchmarks and developer tools bind loopback on purpose; they are not services.
TOOLS = ("fapiao_bench", "fapiao_cli", "gateway/bench.py", "reimbursement/devstack.py")


def _literal_hosts(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in BINDING_CALLS:
            continue
        position, keyword = BINDING_CALLS[name]
        args = [node.args[position]] if position is not None and len(node.args) > position else []
        args += [k.value for k in node.keywords if k.arg == keyword]
        for arg in args:
            if isinstance(arg, ast.Constant | ast.JoinedStr):
                found.append((node.lineno, ast.unparse(arg)))
    return found


def test_no_service_binds_an_address_written_in_its_code() -> None:
    offenders = []
    for path in sorted(SERVICES.rglob("*.py")):
        relative = path.relative_to(SERVICES).as_posix()
        if relative.startswith(TOOLS):
            continue
        for line, host in _literal_hosts(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{relative}:{line}: {host}")
    assert offenders == []


def test_the_scan_finds_a_literal_address() -> None:
    sample = 'start_http_server(9100, addr="127.0.0.1")\nweb.TCPSite(runner, "0.0.0.0", port)\nsite(port, host)'
    assert [host for _, host in _literal_hosts(ast.parse(sample))] == ["'127.0.0.1'", "'0.0.0.0'"]


def test_every_listen_host_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAPIAO_GRPC_HOST", "FAPIAO_HTTP_HOST", "FAPIAO_METRICS_HOST"):
        monkeypatch.setenv(name, "10.1.2.3")
    assert RuntimeConfig.from_env("x", 1).grpc_host == "10.1.2.3"
    assert GatewaySettings.from_env().http_host == "10.1.2.3"


def test_metrics_listen_on_the_configured_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_METRICS_HOST", "127.0.0.2")  # another loopback address, not the default
    port = free_port()
    server = serve_metrics(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5) as response:
            assert b"# TYPE grpc_server_started_total counter" in response.read()
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        server.shutdown()
        server.server_close()
