"""Gateway test fixtures: fake backends (in-process gRPC), an in-process gateway, headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from fapiao_runtime.http_edge import SERVER_ARGS
from fapiao_runtime.ledger_trust import parse_key_list, quorum_for
from gateway.app import build_app
from gateway.settings import GatewaySettings

from tests.gateway.fake_backends import FakeBackends, start_fake_backends

CHROMIUM = "/usr/bin/chromium"
# The exact command the Makefile should run too (Debian package; never `playwright install`).
CHROMIUM_INSTALL = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "screenshots"
TEST_SECRET = b"gateway-test-secret-0123456789abcdef"


@dataclass
class RunningGateway:
    url: str
    settings: GatewaySettings
    runner: web.AppRunner

    @property
    def app(self) -> web.Application:
        return self.runner.app


async def start_gateway(settings: GatewaySettings) -> RunningGateway:
    runner = web.AppRunner(build_app(settings), access_log=None, **SERVER_ARGS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return RunningGateway(f"http://127.0.0.1:{port}", replace(settings, http_port=port), runner)


def settings_for(backends: FakeBackends, **overrides: object) -> GatewaySettings:
    keys = parse_key_list(backends.world.validator_keys_env())
    # A dead validator first: reads must fail over to the live ones.
    dead = "127.0.0.1:1"
    settings = GatewaySettings(
        intake_webhook_url=backends.intake_url,
        minting_endpoint=f"127.0.0.1:{backends.minting_port}",
        ledger_endpoints=(dead, *(f"127.0.0.1:{port}" for port in backends.ledger_ports)),
        grpc_timeout_s=2.0,
        webhook_timeout_s=1.0,
        secret=TEST_SECRET,
        validator_keys=keys,
        quorum=quorum_for(len(keys)),
    )
    return replace(settings, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def backends() -> AsyncIterator[FakeBackends]:
    running = await start_fake_backends()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture(scope="module")
async def gateway(backends: FakeBackends) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(settings_for(backends))
    try:
        yield running
    finally:
        await running.runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def ensure_chromium() -> str:
    """/usr/bin/chromium, installing the Debian package first when it is missing."""
    if not Path(CHROMIUM).exists():
        if shutil.which("apt-get") is None:
            pytest.fail(f"{CHROMIUM} is missing and apt-get is unavailable; install Debian's chromium package")
        subprocess.run(["bash", "-c", CHROMIUM_INSTALL], check=True, timeout=900)
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser():  # type: ignore[no-untyped-def]
    from playwright.async_api import async_playwright

    executable = ensure_chromium()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()
