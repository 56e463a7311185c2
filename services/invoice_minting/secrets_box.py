"""The master key that seals issuer private keys and claim tokens at rest (fapiao_runtime.sealing).

Associated data binds each sealed value to its row: the key id for private keys, the offer id for tokens.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fapiao_runtime.sealing import SecretsBox, decode_secret_key, previous_keys_from_env

log = logging.getLogger(__name__)

__all__ = ["SecretsBox", "load_secrets_key", "parse_key", "previous_keys_from_env"]


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


async def reseal_all(database_url: str, schema: str, box: SecretsBox) -> dict[str, int]:
    """Re-seal issuer private keys and claim tokens under the box's current key (rotation)."""
    import asyncpg
    from fapiao_runtime.sealing import reseal_column

    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        keys = await reseal_column(
            conn,
            box,
            table="issuer_keys",
            id_column="key_id",
            sealed_column="private_key_sealed",
            associated_data=lambda key_id: str(key_id).encode(),
        )
        tokens = await reseal_column(
            conn,
            box,
            table="claim_offers",
            id_column="offer_id",
            sealed_column="token_sealed",
            associated_data=lambda offer_id: offer_id.bytes,  # type: ignore[attr-defined]
        )
    finally:
        await conn.close()
    return {"issuer_keys.private_key_sealed": keys, "claim_offers.token_sealed": tokens}


def main(argv: list[str] | None = None) -> int:
    """python -m invoice_minting.secrets_box reseal: after moving FAPIAO_SECRETS_KEY to a new key."""
    import argparse
    import asyncio
    import json
    import sys

    from fapiao_runtime.config import LOCAL_DATABASE_URL, env_str
    from fapiao_runtime.sealing import SealedValueError

    parser = argparse.ArgumentParser(prog="python -m invoice_minting.secrets_box", description=main.__doc__)
    parser.add_argument("command", choices=["reseal"])
    parser.parse_args(argv)
    try:
        box = SecretsBox(parse_key(os.environ.get("FAPIAO_SECRETS_KEY", "")), previous_keys_from_env())
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    database_url = env_str("DATABASE_URL", LOCAL_DATABASE_URL)
    try:
        counts = asyncio.run(reseal_all(database_url, env_str("FAPIAO_DB_SCHEMA", "invoice_minting"), box))
    except SealedValueError as exc:  # a value no configured key opens: its batch is unchanged
        print(json.dumps({"error": "SEALED_VALUE_DOES_NOT_OPEN", "message": str(exc)}), file=sys.stderr)
        return 2
    print(json.dumps({"resealed": counts}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
