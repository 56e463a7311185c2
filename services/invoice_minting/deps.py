"""What handlers of invoice_minting share: settings, the issuer key store, the producer name."""

from __future__ import annotations

from dataclasses import dataclass

from invoice_minting.issuer_keys import IssuerKeyStore
from invoice_minting.secrets_box import SecretsBox
from invoice_minting.settings import MintingSettings


@dataclass(frozen=True)
class MintingDeps:
    settings: MintingSettings
    keys: IssuerKeyStore
    box: SecretsBox
    producer: str = "invoice_minting"
