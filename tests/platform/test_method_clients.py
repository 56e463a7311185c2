"""Single methods can be narrowed to some services' certificates (`FAPIAO_GRPC_TLS_METHOD_CLIENTS`)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as service_grpc
from fapiao_runtime.grpc_client import internal_channel
from fapiao_runtime.grpc_server import GrpcServer, TlsConfig, parse_method_clients
from fapiao_runtime.pki import (
    create_ca,
    issue_organisation_certificate,
    issue_server_certificate,
    issue_service_certificate,
)
from fapiao_runtime.tax_id import uscc_check_char

from tests.platform.test_grpc_server import SERVICE, _Servicer

pytestmark = pytest.mark.unit


def _write(directory: Path, name: str, pem: bytes) -> str:
    path = directory / f"{name}.pem"
    path.write_bytes(pem)
    return str(path)


async def _call(port: int, method: str) -> tuple[grpc.StatusCode, str]:
    async with internal_channel(f"127.0.0.1:{port}") as channel:
        stub = service_grpc.PaymentIntakeServiceStub(channel)
        try:
            if method == "RecordPayment":
                await stub.RecordPayment(service_pb2.RecordPaymentRequest(), timeout=5)
            else:
                await stub.GetPayment(service_pb2.GetPaymentRequest(merchant_id="bad"), timeout=5)
        except grpc.aio.AioRpcError as error:
            reason = dict(error.trailing_metadata() or ()).get("fapiao-reason", "")
            return error.code(), str(reason)
    return grpc.StatusCode.OK, ""


async def test_a_method_rule_admits_only_the_services_it_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = create_ca()
    server_cert = issue_server_certificate(ca, "localhost")
    tls = TlsConfig(
        server_cert.cert_pem,
        server_cert.key_pem,
        ca.cert_pem,
        method_clients={"RecordPayment": frozenset({"fapiao-cli"})},
    )
    server = GrpcServer([SERVICE])
    server.add_servicer(service_grpc.add_PaymentIntakeServiceServicer_to_server, _Servicer())
    port = await server.start("127.0.0.1", 0, tls=tls)
    clients = {
        "fapiao-cli": issue_service_certificate(ca, "fapiao-cli"),
        "gateway": issue_service_certificate(ca, "gateway"),
        "organisation": issue_organisation_certificate(
            ca, "9144030071526726X" + uscc_check_char("9144030071526726X"), "Buyer Co"
        ),
    }
    monkeypatch.setenv("FAPIAO_GRPC_CA_FILE", _write(tmp_path, "ca", ca.cert_pem))
    try:
        seen = {}
        for name, issued in clients.items():
            monkeypatch.setenv("FAPIAO_GRPC_CLIENT_CERT_FILE", _write(tmp_path, name, issued.cert_pem))
            monkeypatch.setenv("FAPIAO_GRPC_CLIENT_KEY_FILE", _write(tmp_path, f"{name}-key", issued.key_pem))
            seen[name] = (await _call(port, "RecordPayment"), await _call(port, "GetPayment"))
    finally:
        await server.stop(0)
    denied = (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED")
    open_method = (grpc.StatusCode.INVALID_ARGUMENT, "BAD_MERCHANT")  # reached the servicer
    assert seen == {
        "fapiao-cli": ((grpc.StatusCode.OK, ""), open_method),
        "gateway": (denied, open_method),
        "organisation": (denied, open_method),
    }


async def test_a_rule_for_a_method_the_server_lacks_stops_it_from_starting() -> None:
    ca = create_ca()
    server_cert = issue_server_certificate(ca, "localhost")
    tls = TlsConfig(
        server_cert.cert_pem, server_cert.key_pem, ca.cert_pem, method_clients={"RotateKey": frozenset({"x"})}
    )
    server = GrpcServer([SERVICE])
    server.add_servicer(service_grpc.add_PaymentIntakeServiceServicer_to_server, _Servicer())
    try:
        with pytest.raises(ValueError, match="RotateKey"):
            await server.start("127.0.0.1", 0, tls=tls)
    finally:
        await server.stop(0)


def test_method_rules_are_parsed_strictly() -> None:
    assert parse_method_clients(" RotateIssuerKey = fapiao-cli ; GetClaimOfferByPayment=gateway, fapiao-cli;") == {
        "RotateIssuerKey": frozenset({"fapiao-cli"}),
        "GetClaimOfferByPayment": frozenset({"gateway", "fapiao-cli"}),
    }
    for bad in ("RotateIssuerKey", "RotateIssuerKey=", "=gateway", "/pkg.Svc/M=gateway", "A=x;A=y"):
        with pytest.raises(ValueError):
            parse_method_clients(bad)
