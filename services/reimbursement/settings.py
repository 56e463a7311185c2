"""Reimbursement settings: the process's, from the environment (beyond the shared RuntimeConfig),
and the tunables of the handlers and of VerifyInvoice that the process derives from them.

The API listens ONLY with mutual TLS on FAPIAO_REIMBURSEMENT_TLS_PORT; FAPIAO_GRPC_PORT serves just
the health and reflection services in plaintext, for orchestrators and the local stack's probes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fapiao_runtime.config import env_int, env_str

DEFAULT_TLS_PORT = 50054


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ValueError(f"environment variable {name} is required")
    return value


@dataclass(frozen=True)
class HandlerSettings:
    """Lock, unlock and close: how long a call waits for the ledger's outcome."""

    max_wait_s: float = 10.0
    # Stop waiting this long before the client's deadline so DEADLINE_EXCEEDED reaches it as our answer.
    deadline_margin_s: float = 0.05
    # The end of the wait kept for the checks that make the answer when the ledger has not decided (is
    # the request still in the outbox? has a validator decided meanwhile?), so that answer reaches the
    # client before its deadline. Half the wait at most.
    answer_reserve_s: float = 1.0


@dataclass(frozen=True)
class VerificationSettings:
    """VerifyInvoice's anti-enumeration limits, per calling organisation."""

    daily_checks_per_invoice: int = 5
    checks_per_second: float = 20.0


@dataclass(frozen=True)
class ReimbursementSettings:
    tls_port: int
    tls_cert_file: Path
    tls_key_file: Path
    client_ca_file: Path
    ledger_endpoints: tuple[str, ...]
    authority_key_file: Path
    authority_key_id: str
    signing_key_file: Path | None
    signing_key_id: str
    quorum: int | None
    max_wait_ms: int
    ledger_call_timeout_ms: int
    verify_daily_checks: int
    verify_per_second: int

    @classmethod
    def from_env(cls) -> ReimbursementSettings:
        """Read FAPIAO_REIMBURSEMENT_* and FAPIAO_LEDGER_*; ValueError names a missing or bad variable."""
        endpoints = tuple(e.strip() for e in _required("FAPIAO_LEDGER_ENDPOINTS").split(",") if e.strip())
        signing = env_str("FAPIAO_REIMBURSEMENT_SIGNING_KEY_FILE", "")
        quorum = env_int("FAPIAO_LEDGER_QUORUM", 0)
        settings = cls(
            tls_port=env_int("FAPIAO_REIMBURSEMENT_TLS_PORT", DEFAULT_TLS_PORT),
            tls_cert_file=Path(_required("FAPIAO_REIMBURSEMENT_TLS_CERT_FILE")),
            tls_key_file=Path(_required("FAPIAO_REIMBURSEMENT_TLS_KEY_FILE")),
            client_ca_file=Path(_required("FAPIAO_REIMBURSEMENT_CLIENT_CA_FILE")),
            ledger_endpoints=endpoints,
            authority_key_file=Path(_required("FAPIAO_LEDGER_AUTHORITY_KEY_FILE")),
            authority_key_id=env_str("FAPIAO_LEDGER_AUTHORITY_KEY_ID", "authority-1"),
            signing_key_file=Path(signing) if signing else None,
            signing_key_id=env_str("FAPIAO_REIMBURSEMENT_KEY_ID", ""),
            quorum=quorum or None,
            max_wait_ms=env_int("FAPIAO_REIMBURSEMENT_MAX_WAIT_MS", 10_000),
            ledger_call_timeout_ms=env_int("FAPIAO_LEDGER_CALL_TIMEOUT_MS", 2_000),
            verify_daily_checks=env_int("FAPIAO_REIMBURSEMENT_VERIFY_DAILY_CHECKS", 5),
            verify_per_second=env_int("FAPIAO_REIMBURSEMENT_VERIFY_PER_SECOND", 20),
        )
        if not 100 <= settings.max_wait_ms <= 60_000:
            raise ValueError("FAPIAO_REIMBURSEMENT_MAX_WAIT_MS must be within 100..60000")
        if settings.verify_daily_checks < 1 or settings.verify_per_second < 1:
            raise ValueError("verification limits must be positive")
        return settings

    @property
    def handlers(self) -> HandlerSettings:
        return HandlerSettings(max_wait_s=self.max_wait_ms / 1000)

    @property
    def verification(self) -> VerificationSettings:
        return VerificationSettings(self.verify_daily_checks, float(self.verify_per_second))
