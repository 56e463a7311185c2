"""The gRPC edge with mutual TLS: payment systems without a certificate from the configured CA are refused."""

from __future__ import annotations

import asyncio
import secrets
import sys
import time

import grpc
import pytest
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao_runtime.pki import IssuedCertificate, create_ca, issue_organisation_certificate, issue_server_certificate
from fapiao_stack.harness import StackUnderTest
from fapiao_stack.procs import free_port, spawn, stop_pid
from fapiao_stack.services import http_health

from tests.payment_intake.support import TAX_ID, register, stub

pytestmark = pytest.mark.integration


async def test_grpc_edge_requires_a_client_certificate_when_a_client_ca_is_configured(stack: StackUnderTest) -> None:
    ca, other_ca = create_ca(), create_ca("Someone else's CA")
    server = issue_server_certificate(ca, "payment-intake")
    files = {}
    for name, pem in [("cert", server.cert_pem), ("key", server.key_pem), ("ca", ca.cert_pem)]:
        path = stack.tmp_path / f"{name}.pem"
        path.write_bytes(pem)
        files[name] = str(path)
    grpc_port, webhook_port, secrets_key = free_port(), free_port(), secrets.token_bytes(32)
    env = stack.env(
        FAPIAO_GRPC_PORT=str(grpc_port),
        FAPIAO_WEBHOOK_PORT=str(webhook_port),
        FAPIAO_SECRETS_KEY=secrets_key.hex(),
        FAPIAO_PAYER_HASH_KEY=secrets.token_hex(32),
        FAPIAO_INTAKE_TLS_CERT_FILE=files["cert"],
        FAPIAO_INTAKE_TLS_KEY_FILE=files["key"],
        FAPIAO_INTAKE_TLS_CLIENT_CA_FILE=files["ca"],
    )
    log = stack.tmp_path / "intake-tls.log"
    proc = spawn([sys.executable, "-m", "payment_intake"], log_file=log, env=env)
    try:
        deadline = time.monotonic() + 60
        while await http_health(webhook_port) != "SERVING":
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.2)
        await register(stack, secrets_key, "1230000109", b"k" * 32)
        request = service_pb2.GetPaymentRequest(merchant_id="1230000109", transaction_id="none")

        async def call(client_cert: IssuedCertificate | None) -> grpc.StatusCode:
            chain = (client_cert.key_pem, client_cert.cert_pem) if client_cert else (None, None)
            credentials = grpc.ssl_channel_credentials(ca.cert_pem, *chain)
            async with grpc.aio.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
                try:
                    await stub(channel).GetPayment(request, timeout=10)
                except grpc.aio.AioRpcError as error:
                    return error.code()
            return grpc.StatusCode.OK

        deadline = time.monotonic() + 30
        trusted = issue_organisation_certificate(ca, TAX_ID, "支付机构")
        while (code := await call(trusted)) == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert code == grpc.StatusCode.NOT_FOUND  # served: no such payment
        assert await call(None) == grpc.StatusCode.UNAVAILABLE  # handshake refused: no client certificate
        assert await call(issue_organisation_certificate(other_ca, TAX_ID, "冒充者")) == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub(plain).GetPayment(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop_pid(proc.pid, timeout_s=10)
    assert server.key_pem.decode() not in log.read_text()
