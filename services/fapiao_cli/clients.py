"""gRPC channels to the local stack's services (reimbursement over mutual TLS with an org certificate)."""

from __future__ import annotations

import asyncio
import time

import grpc
from fapiao.admin.v1 import merchant_admin_service_pb2_grpc as merchant_admin_grpc
from fapiao.admin.v1 import organisation_admin_service_pb2_grpc as org_admin_grpc
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_api
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as minting_grpc
from fapiao.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from fapiao.payments.v1 import payment_intake_service_pb2 as intake_api
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as intake_grpc
from fapiao.reimbursement.v1 import reimbursement_service_pb2_grpc as reimbursement_grpc
from fapiao_runtime.grpc_client import internal_channel
from fapiao_stack.config import LOCAL_OPERATOR

from fapiao_cli.local import PKI_DIR, grpc_address, ledger_addresses, reimbursement_address
from fapiao_cli.main import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, CliError

# Every channel a command opens stays referenced for the process's life: a stub does not keep its
# channel, and a channel collected before an intercepted call starts is closed under it.
_CHANNELS: list[grpc.aio.Channel] = []


def _kept(channel: grpc.aio.Channel) -> grpc.aio.Channel:
    _CHANNELS.append(channel)
    return channel


def minting() -> minting_grpc.InvoiceMintingServiceStub:
    return minting_grpc.InvoiceMintingServiceStub(_kept(internal_channel(grpc_address("invoice_minting"))))


def intake() -> intake_grpc.PaymentIntakeServiceStub:
    return intake_grpc.PaymentIntakeServiceStub(_kept(internal_channel(grpc_address("payment_intake"))))


def ledgers() -> list[ledger_grpc.LedgerServiceStub]:
    return [ledger_grpc.LedgerServiceStub(_kept(internal_channel(a))) for a in ledger_addresses()]


def reimbursement_for(org_tax_id: str) -> reimbursement_grpc.ReimbursementServiceStub:
    """Stub authenticated as the organisation whose certificate `fapiao ca issue --org-tax-id` wrote."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(PKI_DIR / "ca.crt").read_bytes(),
        private_key=(PKI_DIR / f"org-{org_tax_id}.key").read_bytes(),
        certificate_chain=(PKI_DIR / f"org-{org_tax_id}.crt").read_bytes(),
    )
    channel = grpc.aio.secure_channel(reimbursement_address(), credentials)
    return reimbursement_grpc.ReimbursementServiceStub(_kept(channel))


def operator_credentials(operator: str = LOCAL_OPERATOR) -> grpc.ChannelCredentials:
    """Mutual-TLS credentials of `operator` (the certificate `fapiao up` or `fapiao ca issue --operator`
    wrote); FileNotFoundError when there is none."""
    return grpc.ssl_channel_credentials(
        root_certificates=(PKI_DIR / "ca.crt").read_bytes(),
        private_key=(PKI_DIR / f"operator-{operator}.key").read_bytes(),
        certificate_chain=(PKI_DIR / f"operator-{operator}.crt").read_bytes(),
    )


def admin_refusal(exc: grpc.aio.AioRpcError) -> CliError:
    """The CliError of a refused admin call: usage error for bad input, unreachable for a lost service."""
    code = {
        grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
        grpc.StatusCode.UNAVAILABLE: EXIT_UNREACHABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNREACHABLE,
    }.get(exc.code(), EXIT_FAILED)
    return CliError(f"refused: {describe_refusal(exc)}", code)


def missing_operator_certificate(exc: FileNotFoundError) -> CliError:
    return CliError(f"no operator certificate ({exc.filename}): `fapiao up` issues one", EXIT_USAGE)


def organisation_admin() -> org_admin_grpc.OrganisationAdminServiceStub:
    """OrganisationAdminService of the local reimbursement service, called as the local operator."""
    channel = grpc.aio.secure_channel(reimbursement_address(), operator_credentials())
    return org_admin_grpc.OrganisationAdminServiceStub(_kept(channel))


def merchant_admin(address: str) -> merchant_admin_grpc.MerchantAdminServiceStub:
    """MerchantAdminService of payment_intake at `address`, called as the local operator."""
    channel = grpc.aio.secure_channel(address, operator_credentials())
    return merchant_admin_grpc.MerchantAdminServiceStub(_kept(channel))


async def payment_of(merchant_id: str, transaction_id: str) -> intake_api.GetPaymentResponse:
    reply: intake_api.GetPaymentResponse = await intake().GetPayment(
        intake_api.GetPaymentRequest(merchant_id=merchant_id, transaction_id=transaction_id), timeout=5
    )
    return reply


async def wait_for_claim_offer(
    merchant_id: str, payment_id: str, timeout_s: float = 30.0
) -> minting_api.GetClaimOfferByPaymentResponse:
    """The claim offer minted from a payment (it appears once the PaymentSucceeded event is consumed).

    The service holds each call until the offer commits (`wait_ms`), so this asks again only when a
    call's wait ran out before `timeout_s`.
    """
    stub = minting()
    deadline = time.monotonic() + timeout_s
    while True:
        wait_s = max(0.0, min(10.0, deadline - time.monotonic()))
        try:
            reply: minting_api.GetClaimOfferByPaymentResponse = await stub.GetClaimOfferByPayment(
                minting_api.GetClaimOfferByPaymentRequest(
                    merchant_id=merchant_id, payment_id=payment_id, wait_ms=int(wait_s * 1000)
                ),
                timeout=wait_s + 5,
            )
            return reply
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


def describe_refusal(exc: grpc.aio.AioRpcError) -> str:
    """`CODE REASON: message` of a refused call (the details already start with the reason)."""
    return f"{exc.code().name} {exc.details() or ''}".rstrip()


def claim_token_of(url_or_token: str) -> str:
    """Accept a claim URL (…/claim/<token>) or the bare token."""
    return url_or_token.rstrip("/").rsplit("/", 1)[-1]
