"""Is this invoice genuine? The verification page's use of `fapiao_runtime.invoice_verify`.

The rules (receipts, claim, issuer signature, status) are the shared verifier's; this module adds
only the gateway's issuer-key lookup: invoice_minting's ListIssuerKeys delivers the key bytes, and the
verifier accepts them only when the ledger accepted the ISSUE under that key (see
`fapiao_runtime.issuer_keys`). The key is looked up only once the ISSUE receipt verified and the
number, date and total matched, so a faulty answer or a guess costs no call to minting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fapiao.ledger.v1 import ledger_service_pb2
from fapiao_runtime.invoice_verify import (
    ClaimedInvoice,
    Outcome,
    Verdict,
    decide,
    freshest,
    read_issue,
    signed_invoice_of,
)
from fapiao_runtime.issuer_keys import IssuerKey
from fapiao_runtime.ledger_trust import PublicKeys

# (merchant_id, key_id) -> the issuer public key, or None when the merchant has no such key.
IssuerKeyLookup = Callable[[str, str], Awaitable[Ed25519PublicKey | None]]

__all__ = ["IssuerKeyLookup", "Outcome", "Verdict", "freshest", "signed_invoice_of", "verify_invoice"]


async def verify_invoice(
    query: ClaimedInvoice,
    ledger: ledger_service_pb2.GetInvoiceStateResponse,
    validator_keys: PublicKeys,
    quorum: int,
    issuer_key: IssuerKeyLookup,
) -> Verdict:
    """The verdict for `query` from one validator's GetInvoiceState answer (`fapiao_runtime.invoice_verify`)."""
    issued = read_issue(query, ledger, validator_keys, quorum)
    if isinstance(issued, Verdict):
        return issued
    public_key = await issuer_key(issued.merchant_id, issued.key_id)
    key = None
    if public_key is not None:
        key = IssuerKey(issued.key_id, public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))
    return decide(issued, validator_keys, quorum, key)
