"""Validator settings from the environment (every variable is documented in docs/ledger.md)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao_runtime.config import env_int, env_str
from fapiao_runtime.ledger_client import SigningKey
from fapiao_runtime.ledger_trust import authority_keys_from_env, quorum_for, validator_keys_from_env

log = logging.getLogger(__name__)

# Shortest time between two time cuts of a chain under load. Every block costs each validator a fixed
# amount of work (a statement, a signature, four signature reads, finality, results), so on a busy
# machine a longer wait that makes blocks larger lowers latency rather than raising it
# (docs/benchmarks.md).
DEFAULT_CUT_MS = 50
# A chain whose previous cut is at least cut_ms old is not under load: its first pending transaction
# waits only this long for companions before the marker (latency at light load; see docs/ledger.md).
DEFAULT_CUT_IDLE_MS = 5
# Per chain, the latest heights whose header hash, finality and votes a validator keeps in memory. Older
# blocks are only in its database: a signature for one of them (a validator catching up from far
# behind, or the signature topic re-read after a restart) is checked against the stored header.
# Unbounded, these maps would grow by about 252 bytes per block for the life of the process (about
# 0.9 GB a day at 40 blocks per second) and a restart would read every block ever stored.
DEFAULT_RECENT_HEIGHTS = 10_000


@dataclass(frozen=True)
class LedgerSettings:
    """validator_keys includes this validator; quorum counts identical header signatures (2f+1)."""

    validator_id: str
    signing_key: SigningKey
    validator_keys: dict[str, Ed25519PublicKey]
    authority_keys: dict[str, Ed25519PublicKey]
    max_txs: int
    cut_ms: int
    quorum: int
    cut_idle_ms: int = DEFAULT_CUT_IDLE_MS
    # A chain's result publishers mark published blocks in batches: at most this long after the last.
    mark_published_ms: int = 200
    recent_heights: int = DEFAULT_RECENT_HEIGHTS

    @classmethod
    def from_env(cls) -> LedgerSettings:
        validator_id = env_str("FAPIAO_VALIDATOR_ID", "validator-1")
        key_file = os.environ.get("FAPIAO_LEDGER_KEY_FILE", "")
        if key_file:
            passphrase = os.environ.get("FAPIAO_LEDGER_KEY_PASSPHRASE", "").encode() or None
            signing_key = SigningKey.from_pem(validator_id, Path(key_file).read_bytes(), passphrase)
        else:
            # Development only: a throw-away key, trusted by nobody else. Configure a key file for a network.
            signing_key = SigningKey.generate(validator_id)
            log.warning("no FAPIAO_LEDGER_KEY_FILE: using an ephemeral validator key")
        validator_keys = validator_keys_from_env()
        if not validator_keys:
            validator_keys = {validator_id: signing_key.public_key}
            log.warning("no FAPIAO_LEDGER_VALIDATOR_KEYS: running as a single-validator network")
        if validator_id not in validator_keys:
            raise ValueError(f"{validator_id} is not listed in FAPIAO_LEDGER_VALIDATOR_KEYS")
        if validator_keys[validator_id].public_bytes_raw() != signing_key.public_raw:
            raise ValueError(f"FAPIAO_LEDGER_KEY_FILE does not match the public key listed for {validator_id}")
        max_txs = env_int("FAPIAO_LEDGER_MAX_TXS", 500)
        cut_ms = env_int("FAPIAO_LEDGER_CUT_MS", DEFAULT_CUT_MS)
        if not 1 <= max_txs <= 10_000:
            raise ValueError("FAPIAO_LEDGER_MAX_TXS must be within 1..10000")
        if not 1 <= cut_ms <= 60_000:
            raise ValueError("FAPIAO_LEDGER_CUT_MS must be within 1..60000")
        cut_idle_ms = env_int("FAPIAO_LEDGER_CUT_IDLE_MS", min(DEFAULT_CUT_IDLE_MS, cut_ms))
        if not 0 <= cut_idle_ms <= cut_ms:
            raise ValueError("FAPIAO_LEDGER_CUT_IDLE_MS must be within 0..FAPIAO_LEDGER_CUT_MS")
        mark_published_ms = env_int("FAPIAO_LEDGER_MARK_PUBLISHED_MS", 200)
        if not 1 <= mark_published_ms <= 3_600_000:
            raise ValueError("FAPIAO_LEDGER_MARK_PUBLISHED_MS must be within 1..3600000")
        recent_heights = env_int("FAPIAO_LEDGER_RECENT_HEIGHTS", DEFAULT_RECENT_HEIGHTS)
        if not 1 <= recent_heights <= 10_000_000:
            raise ValueError("FAPIAO_LEDGER_RECENT_HEIGHTS must be within 1..10000000")
        quorum = env_int("FAPIAO_LEDGER_QUORUM", quorum_for(len(validator_keys)))
        if not len(validator_keys) // 2 < quorum <= len(validator_keys):
            raise ValueError("FAPIAO_LEDGER_QUORUM must be a majority of the validators")
        return cls(
            validator_id=validator_id,
            signing_key=signing_key,
            validator_keys=validator_keys,
            authority_keys=authority_keys_from_env(),
            max_txs=max_txs,
            cut_ms=cut_ms,
            quorum=quorum,
            cut_idle_ms=cut_idle_ms,
            mark_published_ms=mark_published_ms,
            recent_heights=recent_heights,
        )
