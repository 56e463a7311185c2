"""Invariants whose violation would corrupt a chain: checked where they could break, never assumed.

A violation is a defect, not a lost dependency: the run ends with `InvariantViolation` (the runtime
stops the process rather than restart the run, `fapiao_runtime.service.Task`) and nothing more is
signed or stored from the broken state.
"""

from __future__ import annotations


class InvariantViolation(RuntimeError):
    """The validator reached a state it must never reach (a chain would be corrupted by going on)."""
