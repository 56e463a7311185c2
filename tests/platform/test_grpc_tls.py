"""Any service can serve gRPC over (mutual) TLS from FAPIAO_GRPC_TLS_*; internal clients follow FAPIAO_GRPC_CA_FILE."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import grpc
import pytest
from fapiao.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from fapiao_runtime.grpc_client import internal_channel
from fapiao_runtime.grpc_server import TlsConfig
from fapiao_runtime.pki import (
    create_ca,
    issue_organisation_certificate,
    issue_server_certificate,
    issue_service_certificate,
)
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_stack.harness import StackUnderTest
from fapiao_stack.procs import free_port, spawn, stop_pid
from fapiao_stack.services import grpc_health

pytestmark = pytest.mark.integration


def _write(directory: Path, name: str, pem: bytes) -> str:
    path = directory / f"{name}.pem"
    path.write_bytes(pem)
    return str(path)


async def _get_block(port: int) -> grpc.StatusCode:
    async with internal_channel(f"127.0.0.1:{port}") as channel:
        stub = ledger_service_pb2_grpc.LedgerServiceStub(channel)
        try:
            await stub.GetBlock(ledger_service_pb2.GetBlockRequest(chain_id=0, height=1), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _use_client(monkeypatch: pytest.MonkeyPatch, directory: Path, name: str, cert_pem: bytes, key_pem: bytes) -> None:
    monkeypatch.setenv("FAPIAO_GRPC_CLIENT_CERT_FILE", _write(directory, name, cert_pem))
    monkeypatch.setenv("FAPIAO_GRPC_CLIENT_KEY_FILE", _write(directory, f"{name}-key", key_pem))


async def test_a_validator_serves_over_mutual_tls_and_internal_clients_follow_the_environment(
    stack: StackUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, other_ca = create_ca(), create_ca("Someone else's CA")
    server = issue_server_certificate(ca, "validator-1")
    client = issue_service_certificate(ca, "reimbursement")
    not_allowed = issue_service_certificate(ca, "invoice_minting")
    organisation = issue_organisation_certificate(
        ca, "9144030071526726X" + uscc_check_char("9144030071526726X"), "Buyer Co"
    )
    stranger = issue_service_certificate(other_ca, "reimbursement")
    d = stack.tmp_path
    port = free_port()
    env = stack.env(
        FAPIAO_GRPC_PORT=str(port),
        FAPIAO_VALIDATOR_ID="validator-1",
        FAPIAO_DB_SCHEMA="ledger_tls",
        FAPIAO_GRPC_TLS_CERT_FILE=_write(d, "server", server.cert_pem),
        FAPIAO_GRPC_TLS_KEY_FILE=_write(d, "server-key", server.key_pem),
        FAPIAO_GRPC_TLS_CLIENT_CA_FILE=_write(d, "ca", ca.cert_pem),
        FAPIAO_GRPC_TLS_ALLOWED_CLIENTS="reimbursement, gateway",
    )
    log = d / "ledger-tls.log"
    proc = spawn([sys.executable, "-m", "ledger"], log_file=log, env=env)
    try:
        monkeypatch.setenv("FAPIAO_GRPC_CA_FILE", _write(d, "ca", ca.cert_pem))
        _use_client(monkeypatch, d, "client", client.cert_pem, client.key_pem)
        deadline = time.monotonic() + 60
        while await grpc_health(port) != "SERVING":
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.2)
        assert await _get_block(port) == grpc.StatusCode.NOT_FOUND  # served over mutual TLS: no block yet

        # The same CA's certificates for a service not on FAPIAO_GRPC_TLS_ALLOWED_CLIENTS, or for an
        # organisation, pass the handshake (and health checks) but may not call the ledger's methods.
        for name, issued in (("not-allowed", not_allowed), ("organisation", organisation)):
            _use_client(monkeypatch, d, name, issued.cert_pem, issued.key_pem)
            assert await _get_block(port) == grpc.StatusCode.PERMISSION_DENIED, name
            assert await grpc_health(port) == "SERVING", name

        _use_client(monkeypatch, d, "stranger", stranger.cert_pem, stranger.key_pem)
        assert await _get_block(port) == grpc.StatusCode.UNAVAILABLE  # a certificate from another CA

        monkeypatch.delenv("FAPIAO_GRPC_CLIENT_CERT_FILE")
        monkeypatch.delenv("FAPIAO_GRPC_CLIENT_KEY_FILE")
        assert await _get_block(port) == grpc.StatusCode.UNAVAILABLE  # no client certificate

        monkeypatch.delenv("FAPIAO_GRPC_CA_FILE")
        assert await grpc_health(port) == "DOWN"  # plaintext is refused
    finally:
        stop_pid(proc.pid, timeout_s=10)
    assert server.key_pem.decode() not in log.read_text()


def test_a_client_certificate_without_its_key_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = create_ca()
    monkeypatch.setenv("FAPIAO_GRPC_CA_FILE", _write(tmp_path, "ca", ca.cert_pem))
    monkeypatch.setenv("FAPIAO_GRPC_CLIENT_CERT_FILE", _write(tmp_path, "cert", ca.cert_pem))
    monkeypatch.delenv("FAPIAO_GRPC_CLIENT_KEY_FILE", raising=False)
    with pytest.raises(ValueError, match="go together"):
        internal_channel("127.0.0.1:1")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ALLOWED_CLIENTS", "gateway", (frozenset({"gateway"}), {})),
        ("METHOD_CLIENTS", "RotateIssuerKey=fapiao-cli", (frozenset(), {"RotateIssuerKey": frozenset({"fapiao-cli"})})),
    ],
)
def test_client_restrictions_need_mutual_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: tuple[object, object]
) -> None:
    ca = create_ca()
    server = issue_server_certificate(ca, "validator-1")
    monkeypatch.setenv(f"FAPIAO_GRPC_TLS_{variable}", value)
    with pytest.raises(ValueError, match=variable):
        TlsConfig.from_env()
    monkeypatch.setenv("FAPIAO_GRPC_TLS_CERT_FILE", _write(tmp_path, "server", server.cert_pem))
    monkeypatch.setenv("FAPIAO_GRPC_TLS_KEY_FILE", _write(tmp_path, "server-key", server.key_pem))
    with pytest.raises(ValueError, match="CLIENT_CA_FILE"):
        TlsConfig.from_env()
    monkeypatch.setenv("FAPIAO_GRPC_TLS_CLIENT_CA_FILE", _write(tmp_path, "ca", ca.cert_pem))
    config = TlsConfig.from_env()
    assert config is not None and (config.allowed_clients, config.method_clients) == expected
