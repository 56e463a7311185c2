"""The master key that seals issuer private keys and claim tokens at rest (fapiao_runtime.sealing).

Associated data binds each sealed value to its row: the key id for private keys, the offer id for tokens.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fapiao_runtime.sealing import SecretsBox, decode_secret_key

log = logging.getLogger(__name__)

__all__ = ["SecretsBox", "load_secrets_key", "parse_key"]


def parse_key(text: str) -> bytes:
    """FAPIAO_SECRETS_KEY as bytes (hex or base64); ValueError otherwise."""
    return decode_secret_key(text)


def load_secrets_key(env_value: str, dev_mode: bool, dev_state_dir: Path) -> bytes:
    """The master key from FAPIAO_SECRETS_KEY; in explicit dev mode only, a generated key kept in a 0600 file.

    Raises RuntimeError when the key is missing outside dev mode: a production service must not invent
    a key it could lose (everything sealed under it would become unreadable).
    """
    if env_value:
        return parse_key(env_value)
    if not dev_mode:
        raise RuntimeError("FAPIAO_SECRETS_KEY is required (set FAPIAO_DEV_MODE=1 for a generated dev key)")
    path = dev_state_dir / "invoice_minting.secrets.key"
    if not path.exists():
        dev_state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(32).hex())
        log.warning("dev mode: generated a secrets key file", extra={"path": str(path)})
    return parse_key(path.read_text())
