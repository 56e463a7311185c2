"""gateway: HTTP edge (webhook, claim page, verification page)."""
