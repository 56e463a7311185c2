"""invoice_minting settings from the environment (on top of the shared RuntimeConfig)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fapiao_runtime.config import env_bool, env_int, env_str
from fapiao_runtime.topics import LEDGER_TRANSACTIONS, PAYMENTS

from invoice_minting.invoice_format import CHANNEL_CODE


@dataclass(frozen=True)
class MintingSettings:
    """claim_base_url: the QR code of an offer is claim_base_url + "/" + token.
    offer_ttl_s: how long a claim token stays valid (default 30 days).
    channel: 5th digit of invoice numbers (issuing channel).
    ledger_partitions: partitions of ledger.tx.v1; key registrations go to each.
    claim_workers / claim_batch_max / claim_queue_max: the group-commit claim pipeline's bounds.
    payment_consumers: members of the payments consumer group in this process (parallel offer creation).
    """

    secrets_key_text: str
    dev_mode: bool
    dev_state_dir: Path
    authority_key_file: str
    authority_key_id: str
    claim_base_url: str
    offer_ttl_s: int
    channel: str
    ledger_partitions: int
    claim_workers: int
    claim_batch_max: int
    claim_queue_max: int
    payment_consumers: int = PAYMENTS.partitions

    @classmethod
    def from_env(cls) -> MintingSettings:
        settings = cls(
            secrets_key_text=env_str("FAPIAO_SECRETS_KEY", ""),
            dev_mode=env_bool("FAPIAO_DEV_MODE", False),
            dev_state_dir=Path(env_str("FAPIAO_DEV_STATE_DIR", ".run")),
            authority_key_file=env_str("FAPIAO_LEDGER_AUTHORITY_KEY_FILE", ""),
            authority_key_id=env_str("FAPIAO_LEDGER_AUTHORITY_KEY_ID", "authority-1"),
            claim_base_url=env_str("FAPIAO_CLAIM_BASE_URL", "http://127.0.0.1:8080/claim").rstrip("/"),
            offer_ttl_s=env_int("FAPIAO_CLAIM_OFFER_TTL_S", 30 * 24 * 3600),
            channel=env_str("FAPIAO_INVOICE_CHANNEL", "2"),
            ledger_partitions=env_int("FAPIAO_LEDGER_PARTITIONS", LEDGER_TRANSACTIONS.partitions),
            claim_workers=env_int("FAPIAO_CLAIM_WORKERS", 2),
            claim_batch_max=env_int("FAPIAO_CLAIM_BATCH_MAX", 200),
            claim_queue_max=env_int("FAPIAO_CLAIM_QUEUE_MAX", 20_000),
            payment_consumers=env_int("FAPIAO_PAYMENT_CONSUMERS", PAYMENTS.partitions),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        if not CHANNEL_CODE.fullmatch(self.channel):
            raise ValueError("FAPIAO_INVOICE_CHANNEL must be one digit")
        if self.offer_ttl_s <= 0:
            raise ValueError("FAPIAO_CLAIM_OFFER_TTL_S must be positive")
        if not 1 <= self.ledger_partitions <= 1024:
            raise ValueError("FAPIAO_LEDGER_PARTITIONS must be 1..1024")
        if not 1 <= self.claim_workers <= 64 or not 1 <= self.claim_batch_max <= 1000:
            raise ValueError("FAPIAO_CLAIM_WORKERS must be 1..64 and FAPIAO_CLAIM_BATCH_MAX 1..1000")
        if not 1 <= self.payment_consumers <= 64:
            raise ValueError("FAPIAO_PAYMENT_CONSUMERS must be 1..64")
        if not 1 <= self.claim_queue_max <= 1_000_000:
            raise ValueError("FAPIAO_CLAIM_QUEUE_MAX must be 1..1000000")
        if not self.claim_base_url.startswith(("http://", "https://")):
            raise ValueError("FAPIAO_CLAIM_BASE_URL must be an http(s) URL")
