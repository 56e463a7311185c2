"""The `fapiao` command: run the local stack and act as its operators, payment platform and users."""
