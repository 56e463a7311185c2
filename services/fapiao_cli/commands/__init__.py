"""Sub-commands of `fapiao`."""
