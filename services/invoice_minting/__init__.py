"""invoice_minting service."""
