"""Invoice ids derived from invoice numbers: one number, one invoice id, one ledger chain.

Transactions are keyed by invoice id on the ledger topic, so each chain (partition) decides alone.
If an ISSUE could name any invoice id, one number could be issued twice on two chains and reimbursed
once per copy. The ledger therefore accepts an ISSUE only when its invoice id is derived from its
number: every ISSUE of a number lands on the same chain, where the second is ALREADY_ISSUED.
"""

from __future__ import annotations

import hashlib
import struct
import uuid

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://fapiao.dev/invoice-number")
_NAMESPACE_BYTES = _NAMESPACE.bytes


def invoice_id_for_number(invoice_number: str) -> str:
    """The only invoice id the ledger accepts for an ISSUE of `invoice_number`:
    str(uuid.uuid5(_NAMESPACE, invoice_number)), computed without building a UUID object (every
    validator checks it for every ISSUE)."""
    # SHA-1 is what RFC 4122 version 5 specifies (uuid.uuid5 calls it the same way).
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + invoice_number.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def chain_of(invoice_id: str, chains: int) -> int:
    """The chain (partition of ledger.tx.v1) of `invoice_id` among `chains`: the partition Kafka's
    default partitioner gives the record key `invoice_id` (murmur2, as in the Java client and aiokafka),
    so every producer that keys transactions by invoice id sends them to the right chain."""
    return (murmur2(invoice_id.encode()) & 0x7FFFFFFF) % chains


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as aiokafka's `murmur2` but with
    the key's words unpacked at once: half its cost, and every validator runs it for every transaction."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length // 4
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = data[words * 4 :]
    if tail:
        if len(tail) >= 3:
            h ^= tail[2] << 16
        if len(tail) >= 2:
            h ^= tail[1] << 8
        h = ((h ^ tail[0]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)
