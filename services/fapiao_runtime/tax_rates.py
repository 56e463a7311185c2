"""VAT rates an invoice line may carry, shared so that intake never accepts a payment minting must refuse."""

from __future__ import annotations

# Basis points: 0%, 1%, 3%, 5%, 6%, 9%, 13% (the rates a 数电票 line may carry).
NATIONAL_VAT_RATES_BP = frozenset({0, 100, 300, 500, 600, 900, 1300})
