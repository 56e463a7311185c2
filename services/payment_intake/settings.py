"""payment_intake settings read from the environment (on top of the shared RuntimeConfig)."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fapiao_runtime.config import env_int, env_str
from fapiao_runtime.grpc_server import TlsConfig
from fapiao_runtime.sealing import SecretsBox, decode_secret_key, previous_keys_from_env

log = logging.getLogger(__name__)

DB_SCHEMA = "payment_intake"
DEFAULT_GRPC_PORT = 50051
DEFAULT_WEBHOOK_PORT = 8081
DEFAULT_ADMIN_PORT = 50055
ADMIN_TLS_PREFIX = "FAPIAO_INTAKE_ADMIN_TLS"
_DEV_KEY_DIR = Path(__file__).resolve().parents[2] / ".run" / "secrets"


def decode_key(raw: str, *, name: str) -> bytes:
    """Decode a 32-byte key given as 64 hex digits or base64; raise ValueError naming the variable."""
    return decode_secret_key(raw, name=name)


def load_key(name: str) -> bytes:
    """Return the 32-byte key from env `name`, else from the file named by `name`_FILE.

    Without either, a development key file under .run/secrets/ is created once (mode 0600) so a local
    stack and the CLI agree; production sets the variable (or mounts the file) from a secret store.
    """
    value = os.environ.get(name, "")
    if value:
        return decode_key(value, name=name)
    path = Path(env_str(f"{name}_FILE", str(_DEV_KEY_DIR / f"{name.lower()}.key")))
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written to a private temporary name and linked into place, so a process starting at the same
        # moment either sees no file or the complete key (link fails if another process won the race).
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        try:
            os.link(temporary, path)
            log.warning("created a development key file", extra={"variable": name, "path": str(path)})
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return decode_key(path.read_text(), name=f"{name}_FILE")


def admin_tls_from_env() -> TlsConfig | None:
    """FAPIAO_INTAKE_ADMIN_TLS_CERT_FILE, _KEY_FILE and _CLIENT_CA_FILE (required with a certificate:
    the admin port serves mutual TLS only); None when no certificate is configured."""
    tls = TlsConfig.from_env(ADMIN_TLS_PREFIX)
    if tls is not None and tls.client_ca_pem is None:
        raise ValueError(f"{ADMIN_TLS_PREFIX}_CLIENT_CA_FILE is required: the admin port serves mutual TLS only")
    return tls


@dataclass(frozen=True)
class IntakeSettings:
    """secrets_key seals APIv3 keys at rest; payer_hash_key keys the payer_ref HMAC. Never logged."""

    webhook_host: str
    webhook_port: int
    secrets_key: bytes
    payer_hash_key: bytes
    clock_skew_s: int
    nonce_retention_s: int
    merchant_cache_ttl_s: int
    webhook_deadline_ms: int
    batch_max: int
    batch_workers: int
    batch_linger_ms: int
    max_pending: int
    # Worker processes sharing the gRPC and webhook ports (fapiao_runtime.workers); 1 = this process.
    processes: int = 1
    # Former FAPIAO_SECRETS_KEY values (FAPIAO_SECRETS_KEY_PREVIOUS) during a rotation: they still open.
    previous_secrets_keys: tuple[bytes, ...] = ()
    # MerchantAdminService on its own mutual-TLS port; None (no FAPIAO_INTAKE_ADMIN_TLS_CERT_FILE): not served.
    admin_port: int = DEFAULT_ADMIN_PORT
    admin_tls: TlsConfig | None = None

    def secrets_box(self) -> SecretsBox:
        return SecretsBox(self.secrets_key, self.previous_secrets_keys)

    @classmethod
    def from_env(cls) -> IntakeSettings:
        return cls(
            webhook_host=env_str("FAPIAO_WEBHOOK_HOST", "127.0.0.1"),
            webhook_port=env_int("FAPIAO_WEBHOOK_PORT", DEFAULT_WEBHOOK_PORT),
            secrets_key=load_key("FAPIAO_SECRETS_KEY"),
            payer_hash_key=load_key("FAPIAO_PAYER_HASH_KEY"),
            clock_skew_s=env_int("FAPIAO_WEBHOOK_CLOCK_SKEW_S", 300),
            nonce_retention_s=env_int("FAPIAO_WEBHOOK_NONCE_RETENTION_S", 900),
            merchant_cache_ttl_s=env_int("FAPIAO_MERCHANT_CACHE_TTL_S", 30),
            webhook_deadline_ms=env_int("FAPIAO_WEBHOOK_DEADLINE_MS", 3000),
            batch_max=env_int("FAPIAO_INTAKE_BATCH_MAX", 200),
            batch_workers=env_int("FAPIAO_INTAKE_BATCH_WORKERS", 2),
            batch_linger_ms=env_int("FAPIAO_INTAKE_BATCH_LINGER_MS", 1),
            max_pending=env_int("FAPIAO_INTAKE_MAX_PENDING", 10_000),
            processes=env_int("FAPIAO_INTAKE_PROCESSES", 1),
            previous_secrets_keys=tuple(previous_keys_from_env()),
            admin_port=env_int("FAPIAO_INTAKE_ADMIN_PORT", DEFAULT_ADMIN_PORT),
            admin_tls=admin_tls_from_env(),
        )

    def __repr__(self) -> str:  # keep keys out of any accidental log line
        return f"IntakeSettings(webhook={self.webhook_host}:{self.webhook_port}, keys=<redacted>)"
