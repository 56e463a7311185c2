"""What handlers of invoice_minting share: settings, the issuer keys, the secrets box, the producer name."""

from __future__ import annotations

from dataclasses import dataclass

from invoice_minting.issuer_keys import IssuerKeys
from invoice_minting.secrets_box import SecretsBox
from invoice_minting.settings import MintingSettings


@dataclass(frozen=True)
class MintingDeps:
    settings: MintingSettings
    keys: IssuerKeys
    box: SecretsBox
    producer: str = "invoice_minting"
