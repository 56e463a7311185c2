"""A refused lock (an invoice locked by another organisation) answers, through the real reimbursement API
behind mutual TLS, a google.rpc.ErrorInfo that grpcio-status decodes and that grpcurl shows."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.errors import ERROR_DOMAIN, reason_of
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.reimbursement.conftest import ApiUnderTest, api, pki  # noqa: F401 (fixtures)
from tests.reimbursement.support import new_tax_id

pytestmark = pytest.mark.integration

LOCK = "fapiao.reimbursement.v1.ReimbursementService/LockInvoice"
ROOT = Path(__file__).parents[2]


def grpcurl() -> str | None:
    """grpcurl on PATH, else where `make prometheus` installs it (.cache/go/bin)."""
    found = shutil.which("grpcurl")
    local = ROOT / ".cache" / "go" / "bin" / "grpcurl"
    return found or (str(local) if local.is_file() else None)


async def _locked_by_another(api: ApiUnderTest) -> tuple[str, str]:  # noqa: F811
    """An invoice locked by one organisation, and another organisation's tax id."""
    holder, other = new_tax_id(), new_tax_id()
    await api.add_org(holder)
    await api.add_org(other)
    number = api.issue(None)  # a personal invoice: any registered organisation may try to lock it
    async with api.channel(holder) as channel:
        await api.stub(channel).LockInvoice(rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="a"))
    return number, other


async def test_a_refused_lock_carries_error_info(api: ApiUnderTest) -> None:  # noqa: F811
    number, other = await _locked_by_another(api)
    async with api.channel(other) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(channel).LockInvoice(
                rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="b"), timeout=5
            )
    status = rpc_status.from_call(caught.value)
    assert status is not None and status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    assert (info.reason, info.domain) == ("ALREADY_LOCKED", ERROR_DOMAIN)
    assert info.metadata["method"] == f"/{LOCK}"
    assert reason_of(caught.value) == "ALREADY_LOCKED"


async def test_grpcurl_shows_the_error_info_of_a_refused_lock(api: ApiUnderTest, tmp_path: Path) -> None:  # noqa: F811
    tool = grpcurl()
    if tool is None:
        pytest.skip("grpcurl is not installed (make prometheus installs it into .cache/go/bin)")
    number, other = await _locked_by_another(api)
    cert = api.pki.org_cert(other)
    files = {"ca.pem": api.pki.ca.cert_pem, "org.pem": cert.cert_pem, "org.key": cert.key_pem}
    for name, pem in files.items():
        (tmp_path / name).write_bytes(pem)
    request = json.dumps({"invoiceNumber": number, "idempotencyKey": "c"})
    args = ["-cacert", "ca.pem", "-cert", "org.pem", "-key", "org.key", "-d", request]
    # grpcurl blocks the calling thread: run it off the event loop that serves the API.
    result = await asyncio.to_thread(
        subprocess.run,
        [tool, *args, f"127.0.0.1:{api.port}", LOCK],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "FailedPrecondition" in output and "type.googleapis.com/google.rpc.ErrorInfo" in output, output
    assert '"reason": "ALREADY_LOCKED"' in output and f'"domain": "{ERROR_DOMAIN}"' in output, output
