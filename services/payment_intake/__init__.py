"""payment_intake service."""
