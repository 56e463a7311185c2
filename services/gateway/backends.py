"""gRPC clients of the services the gateway fronts: invoice_minting and the ledger validators.

Errors from the services arrive as grpc.aio.AioRpcError carrying "REASON: message"; `call` turns
them back into the matching FapiaoError so page handlers deal with one error type.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_pb2
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as minting_grpc
from fapiao.ledger.v1 import ledger_service_pb2
from fapiao_runtime.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FapiaoError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    reason_of,
)
from fapiao_runtime.grpc_client import internal_channel
from fapiao_runtime.ledger_client import FAILOVER_CODES, NoValidatorAnswered, ValidatorClient

log = logging.getLogger(__name__)
T = TypeVar("T")
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{2,63}$")

_BY_CODE: dict[grpc.StatusCode, type[FapiaoError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}
# Worth asking another validator: the one we asked is down, stopping, slow, or has not caught up yet.
_TRY_NEXT = FAILOVER_CODES | {grpc.StatusCode.NOT_FOUND}


def as_fapiao_error(error: grpc.aio.AioRpcError, service: str) -> FapiaoError:
    """The FapiaoError a service meant; codes without a mapping become Unavailable(<SERVICE>_FAILED)."""
    cls = _BY_CODE.get(error.code())
    if cls is None:
        log.warning("%s call failed with %s", service, error.code().name)
        return Unavailable(f"{service.upper()}_FAILED", f"{service} could not answer")
    details = error.details() or ""
    reason = reason_of(error)
    if not _REASON.match(reason):
        # Not a Fapiao "REASON: message" (e.g. grpc's own "failed to connect ..."): name the service.
        suffix = "UNAVAILABLE" if cls in (Unavailable, DeadlineExceeded) else "FAILED"
        return cls(f"{service.upper()}_{suffix}", f"{service} could not answer")
    return cls(reason, details.split(":", 1)[1].strip() if ":" in details else "")


async def call(service: str, rpc: Callable[[], Awaitable[T]]) -> T:
    try:
        return await rpc()
    except grpc.aio.AioRpcError as error:
        raise as_fapiao_error(error, service) from None


class MintingClient:
    """InvoiceMintingService over one channel (the service load-balances behind its endpoint)."""

    def __init__(self, endpoint: str, timeout_s: float) -> None:
        self._channel = internal_channel(endpoint)
        self._stub = minting_grpc.InvoiceMintingServiceStub(self._channel)
        self._timeout_s = timeout_s

    async def close(self) -> None:
        await self._channel.close()

    async def get_claim_offer(self, claim_token: str) -> minting_pb2.GetClaimOfferResponse:
        request = minting_pb2.GetClaimOfferRequest(claim_token=claim_token)
        return await call("minting", lambda: self._stub.GetClaimOffer(request, timeout=self._timeout_s))

    async def claim_invoice(self, request: minting_pb2.ClaimInvoiceRequest) -> minting_pb2.ClaimInvoiceResponse:
        # Claims wait for number allocation and signing; allow them a little longer than reads.
        return await call("minting", lambda: self._stub.ClaimInvoice(request, timeout=self._timeout_s * 2))

    async def get_invoice(self, invoice_id: str) -> minting_pb2.GetInvoiceResponse:
        request = minting_pb2.GetInvoiceRequest(invoice_id=invoice_id)
        return await call("minting", lambda: self._stub.GetInvoice(request, timeout=self._timeout_s))

    async def list_issuer_keys(self, merchant_id: str) -> minting_pb2.ListIssuerKeysResponse:
        request = minting_pb2.ListIssuerKeysRequest(merchant_id=merchant_id)
        return await call("minting", lambda: self._stub.ListIssuerKeys(request, timeout=self._timeout_s))


class LedgerClient:
    """LedgerService of several validators (`ValidatorClient`): each read goes to the next validator in
    turn and fails over when one is down, stopping, slow or has not caught up yet (NOT_FOUND).

    Nothing a validator answers is trusted blindly: callers verify receipts against the validators'
    public keys (gateway.verification), so no validator can forge an answer. One can still be behind,
    or faulty and answer an older (still valid) receipt: `get_invoice_states` asks several, for the
    public verification page to show the freshest verified status.
    """

    def __init__(self, endpoints: tuple[str, ...], timeout_s: float) -> None:
        self._validators = ValidatorClient(endpoints, timeout_s)
        self._timeout_s = timeout_s

    async def close(self) -> None:
        await self._validators.close()

    async def get_invoice_states(
        self, readers: int, *, invoice_number: str = ""
    ) -> list[ledger_service_pb2.GetInvoiceStateResponse]:
        """The answers of `readers` validators (the next ones in turn, asked at once) about an invoice;
        those that fail are left out. With readers = f + 1, at least one answer is an honest validator's.
        NotFound (or the failure) only when no validator asked answered."""
        request = ledger_service_pb2.GetInvoiceStateRequest(invoice_number=invoice_number)
        stubs = self._validators.in_turn(readers)
        outcomes = await asyncio.gather(
            *(stub.GetInvoiceState(request, timeout=self._timeout_s) for stub in stubs), return_exceptions=True
        )
        answers = [o for o in outcomes if isinstance(o, ledger_service_pb2.GetInvoiceStateResponse)]
        if answers:
            return answers
        errors = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        if len(errors) != len(outcomes):
            raise next(o for o in outcomes if isinstance(o, BaseException))
        if all(error.code() == grpc.StatusCode.NOT_FOUND for error in errors):
            raise as_fapiao_error(errors[0], "ledger")
        # None answered: one more try, failing over through every validator.
        return [await self.get_invoice_state(invoice_number=invoice_number)]

    async def get_invoice_state(
        self, *, invoice_number: str = "", invoice_id: str = ""
    ) -> ledger_service_pb2.GetInvoiceStateResponse:
        """State and receipts of one invoice; NotFound only when no validator knows it."""
        if invoice_number:
            request = ledger_service_pb2.GetInvoiceStateRequest(invoice_number=invoice_number)
        else:
            request = ledger_service_pb2.GetInvoiceStateRequest(invoice_id=invoice_id)
        try:
            answer: ledger_service_pb2.GetInvoiceStateResponse = await self._validators.call(
                "GetInvoiceState", request, failover=_TRY_NEXT
            )
            return answer
        except grpc.aio.AioRpcError as error:
            raise as_fapiao_error(error, "ledger") from None
        except NoValidatorAnswered as failed:
            # A validator that answered "not found" outranks one that could not be reached.
            answered = [error for error in failed.errors if error.code() == grpc.StatusCode.NOT_FOUND]
            raise as_fapiao_error((answered or failed.errors)[-1], "ledger") from None
