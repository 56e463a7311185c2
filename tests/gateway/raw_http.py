"""Raw HTTP/1.1 over a socket, for requests no HTTP client would send (raw header bytes, broken bodies)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def send_raw(base_url: str, head: bytes, body: bytes = b"", timeout_s: float = 10.0) -> RawResponse:
    """Send `head` (request line and headers, without the blank line; Host, Content-Length and
    Connection: close are added) and `body`; read the whole answer."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        request = head.rstrip(b"\r\n") + b"\r\nHost: " + (parts.netloc or "").encode() + b"\r\nConnection: close\r\n"
        if body or head.startswith(b"POST"):
            request += b"Content-Length: %d\r\n" % len(body)
        writer.write(request + b"\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    header_block, _, payload = raw.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(lines[0].split()[1]), headers, payload)


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Every client error was logged as plain lines: none at error level, none with a traceback."""
    loud = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not loud, [f"{r.name}: {r.getMessage()}" for r in loud]
