"""Bounded admission for costly work: at most `running` at once, at most `waiting` more in line, and any
further request refused at once (with the error its service chooses) instead of queueing without end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fapiao_runtime.errors import FapiaoError


class AdmissionGate:
    def __init__(self, running: int, waiting: int, refuse: Callable[[], FapiaoError]) -> None:
        if running <= 0 or waiting < 0:
            raise ValueError("running must be positive and waiting not negative")
        self._slots = asyncio.Semaphore(running)
        self._capacity = running + waiting
        self._admitted = 0
        self._refuse = refuse

    @property
    def admitted(self) -> int:
        """Requests running or waiting now."""
        return self._admitted

    @asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        """Hold a slot for the block; raises the refusal when every slot and place in line is taken."""
        if self._admitted >= self._capacity:
            raise self._refuse()
        self._admitted += 1
        try:
            async with self._slots:
                yield
        finally:
            self._admitted -= 1
