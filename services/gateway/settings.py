"""Gateway settings from the environment (every variable is documented in docs/gateway.md)."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao_runtime.config import env_int, env_str
from fapiao_runtime.ledger_trust import quorum_for, validator_keys_from_env

log = logging.getLogger(__name__)

DEFAULT_LEDGER_ENDPOINTS = ",".join(f"127.0.0.1:{port}" for port in range(50061, 50065))


@dataclass(frozen=True)
class GatewaySettings:
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    intake_webhook_url: str = "http://127.0.0.1:8081"
    webhook_timeout_s: float = 4.0
    minting_endpoint: str = "127.0.0.1:50052"
    ledger_endpoints: tuple[str, ...] = tuple(DEFAULT_LEDGER_ENDPOINTS.split(","))
    grpc_timeout_s: float = 3.0
    # Never printed: repr=False.
    secret: bytes = field(default=b"", repr=False)
    view_token_ttl_s: int = 7 * 24 * 3600
    verify_burst: int = 10
    verify_per_minute: float = 30.0
    rate_limit_clients: int = 10_000
    # Failed (no match) checks allowed per invoice number: stops guessing date and total of a known number.
    invoice_failure_burst: int = 10
    invoice_failures_per_day: int = 20
    validator_keys: dict[str, Ed25519PublicKey] = field(default_factory=dict, repr=False)
    quorum: int = 0
    pdf_font: str = ""
    # PDFs rendered at once, downloads waiting for a turn beyond those, PDFs kept rendered.
    pdf_renders: int = 2
    pdf_queue: int = 16
    pdf_cache_entries: int = 128
    metrics_port: int = 0

    @classmethod
    def from_env(cls) -> GatewaySettings:
        """Read FAPIAO_* variables. Without FAPIAO_GATEWAY_SECRET a random per-process secret is used
        (view links then stop working when the process restarts, and differ between replicas)."""
        raw_secret = os.environ.get("FAPIAO_GATEWAY_SECRET", "")
        if raw_secret:
            secret = raw_secret.encode()
        else:
            log.warning("FAPIAO_GATEWAY_SECRET is not set: using a random per-process secret")
            secret = secrets.token_bytes(32)
        validator_keys = validator_keys_from_env()
        quorum = env_int("FAPIAO_LEDGER_QUORUM", 0) or (quorum_for(len(validator_keys)) if validator_keys else 0)
        endpoints = tuple(e.strip() for e in env_str("FAPIAO_LEDGER_ENDPOINTS", DEFAULT_LEDGER_ENDPOINTS).split(","))
        return cls(
            http_host=env_str("FAPIAO_HTTP_HOST", "127.0.0.1"),
            http_port=env_int("FAPIAO_HTTP_PORT", 8080),
            intake_webhook_url=env_str("FAPIAO_INTAKE_WEBHOOK_URL", "http://127.0.0.1:8081").rstrip("/"),
            webhook_timeout_s=env_int("FAPIAO_WEBHOOK_TIMEOUT_MS", 4000) / 1000,
            minting_endpoint=env_str("FAPIAO_MINTING_ENDPOINT", "127.0.0.1:50052"),
            ledger_endpoints=tuple(e for e in endpoints if e),
            grpc_timeout_s=env_int("FAPIAO_GATEWAY_GRPC_TIMEOUT_MS", 3000) / 1000,
            secret=secret,
            view_token_ttl_s=env_int("FAPIAO_VIEW_TOKEN_TTL_S", 7 * 24 * 3600),
            verify_burst=env_int("FAPIAO_VERIFY_BURST", 10),
            verify_per_minute=float(env_int("FAPIAO_VERIFY_PER_MINUTE", 30)),
            rate_limit_clients=env_int("FAPIAO_RATE_LIMIT_CLIENTS", 10_000),
            invoice_failure_burst=env_int("FAPIAO_VERIFY_INVOICE_FAILURE_BURST", 10),
            invoice_failures_per_day=env_int("FAPIAO_VERIFY_INVOICE_FAILURES_PER_DAY", 20),
            validator_keys=validator_keys,
            quorum=quorum,
            pdf_font=env_str("FAPIAO_PDF_FONT", ""),
            pdf_renders=env_int("FAPIAO_PDF_RENDERS", 2),
            pdf_queue=env_int("FAPIAO_PDF_QUEUE", 16),
            pdf_cache_entries=env_int("FAPIAO_PDF_CACHE_ENTRIES", 128),
            metrics_port=env_int("FAPIAO_METRICS_PORT", 0),
        )
