"""Ledger keys for the local stack: one registry-authority key and one key per validator.

Keys are generated once under <run_dir>/keys (directory 0700, files 0600) and reused on later
starts, so a restarted stack keeps verifying its earlier blocks. Production deployments supply their
own key files and public-key lists through the same environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path

from fapiao_runtime.ledger_client import SigningKey
from fapiao_runtime.ledger_trust import AUTHORITY_KEYS_ENV, VALIDATOR_KEYS_ENV, format_key_list

AUTHORITY_KEY_ID = "authority-1"
AUTHORITY_KEY_FILE_ENV = "FAPIAO_LEDGER_AUTHORITY_KEY_FILE"


def validator_id(index: int) -> str:
    """Validator ids are validator-1 .. validator-N (also the key id of each validator's key)."""
    return f"validator-{index}"


def _load_or_create(path: Path, key_id: str) -> SigningKey:
    if path.exists():
        return SigningKey.from_pem(key_id, path.read_bytes())
    key = SigningKey.generate(key_id)
    # Create with 0600 from the start: the private key is never world-readable, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.to_pem())
    return key


def _keys_dir(run_dir: Path) -> Path:
    directory = run_dir / "keys"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory


def validator_key_files(run_dir: Path, validators: int) -> dict[str, Path]:
    """validator id -> its private key PEM path (created by ensure_local_keys)."""
    directory = _keys_dir(run_dir)
    return {validator_id(i): directory / f"{validator_id(i)}.pem" for i in range(1, validators + 1)}


def ensure_local_keys(run_dir: Path, validators: int) -> dict[str, str]:
    """Create missing keys and return the env every service needs.

    Returns FAPIAO_LEDGER_VALIDATOR_KEYS, FAPIAO_LEDGER_AUTHORITY_KEYS and
    FAPIAO_LEDGER_AUTHORITY_KEY_FILE (the authority's private key, for whoever registers submitters).
    """
    if validators < 1:
        raise ValueError("at least one validator")
    directory = _keys_dir(run_dir)
    authority_file = directory / f"{AUTHORITY_KEY_ID}.pem"
    authority = _load_or_create(authority_file, AUTHORITY_KEY_ID)
    publics = {}
    for vid, path in validator_key_files(run_dir, validators).items():
        publics[vid] = _load_or_create(path, vid).public_raw
    return {
        VALIDATOR_KEYS_ENV: format_key_list(publics),
        AUTHORITY_KEYS_ENV: format_key_list({AUTHORITY_KEY_ID: authority.public_raw}),
        AUTHORITY_KEY_FILE_ENV: str(authority_file),
    }


def validator_env(run_dir: Path, validators: int, index: int) -> dict[str, str]:
    """Per-validator env for validator `index` (1-based): id, key file and its own schema."""
    vid = validator_id(index)
    return {
        "FAPIAO_VALIDATOR_ID": vid,
        "FAPIAO_LEDGER_KEY_FILE": str(validator_key_files(run_dir, validators)[vid]),
        "FAPIAO_DB_SCHEMA": f"ledger_{index}",
    }


def load_authority_key(path: Path, key_id: str = AUTHORITY_KEY_ID) -> SigningKey:
    """The registry-authority signing key from its PEM file."""
    return SigningKey.from_pem(key_id, path.read_bytes())
