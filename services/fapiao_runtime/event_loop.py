"""The event loop every service process runs on: uvloop by default, the standard library's on request.

uvloop (libuv, the loop of asyncpg's authors) runs the same asyncio code with less CPU per callback,
socket read and timer; grpc.aio, aiokafka, asyncpg and aiohttp all run on it. The CPU it saves per
request is measured in docs/benchmarks.md.
`FAPIAO_EVENT_LOOP=asyncio` selects the standard loop, e.g. to rule uvloop out when chasing a bug.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fapiao_runtime.config import env_str

T = TypeVar("T")

LOOPS = ("uvloop", "asyncio")


def loop_factory(name: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory of the loop named `name` (default: FAPIAO_EVENT_LOOP, else uvloop)."""
    chosen = name or env_str("FAPIAO_EVENT_LOOP", "uvloop")
    if chosen == "asyncio":
        return asyncio.new_event_loop
    if chosen == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"environment variable FAPIAO_EVENT_LOOP must be one of {', '.join(LOOPS)}, got {chosen!r}")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the configured kind (for APIs that take a loop, such as aiohttp's run_app)."""
    return loop_factory()()


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the configured loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def loop_name() -> str:
    """The kind of the running loop, for start-up logs and `fapiao status`."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
