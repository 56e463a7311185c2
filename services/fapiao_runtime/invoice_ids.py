"""Invoice ids derived from invoice numbers: one number, one invoice id, one ledger chain.

Transactions are keyed by invoice id on the ledger topic, so each chain (partition) decides alone.
If an ISSUE could name any invoice id, one number could be issued twice on two chains and reimbursed
once per copy. The ledger therefore accepts an ISSUE only when its invoice id is derived from its
number: every ISSUE of a number lands on the same chain, where the second is ALREADY_ISSUED.
"""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://fapiao.dev/invoice-number")


def invoice_id_for_number(invoice_number: str) -> str:
    """The only invoice id the ledger accepts for an ISSUE of `invoice_number`."""
    return str(uuid.uuid5(_NAMESPACE, invoice_number))
