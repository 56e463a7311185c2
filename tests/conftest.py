"""Session fixtures: one real Kafka broker and one real PostgreSQL server per test run.

Set FAPIAO_TEST_KAFKA_BOOTSTRAP or DATABASE_URL to use external ones instead. Each test gets its own
database and its own topic prefix, so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fapiao_runtime.kafka import ensure_topics
from fapiao_stack.harness import StackUnderTest, create_database, drop_database
from fapiao_stack.kafka import KafkaBroker
from fapiao_stack.postgres import LocalPostgres
from fapiao_stack.procs import free_port


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("FAPIAO_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    base = tmp_path_factory.mktemp("kafka")
    broker = KafkaBroker(base / "data", free_port(), free_port(), base / "kafka.log", heap="1g")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    base = Path(tmp_path_factory.mktemp("postgres"))
    server = LocalPostgres(base / "data", free_port(), base / "postgres.log")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    url = await create_database(postgres_admin_url, "t_")
    yield url
    await drop_database(postgres_admin_url, url)


@pytest.fixture
async def topic_prefix(kafka_bootstrap: str) -> str:
    """A unique topic prefix with every Fapiao topic created under it."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await ensure_topics(kafka_bootstrap, prefix)
    return prefix


@pytest.fixture
def stack(kafka_bootstrap: str, database_url: str, topic_prefix: str, tmp_path: Path) -> StackUnderTest:
    """Everything a test needs to run services against the real broker and database."""
    return StackUnderTest(kafka_bootstrap, database_url, topic_prefix, tmp_path)


TIERS = ("unit", "integration", "e2e", "browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test module declares exactly one tier (`pytestmark = pytest.mark.<tier>`) and every test has
    that tier only, so `-m unit` and the other tier selections never skip a file silently nor run a test
    of another tier."""
    wrong: dict[str, list[str]] = {}
    for item in items:
        module = item.module
        if module is None or module.__name__ in wrong:
            continue
        declared = getattr(module, "pytestmark", [])
        marks = declared if isinstance(declared, list) else [declared]
        tiers = sorted({m.name for m in marks if m.name in TIERS})
        if len(tiers) != 1:
            wrong[module.__name__] = tiers
            continue
        # ... and no test adds a second one of its own.
        own = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if own != tiers:
            wrong[f"{module.__name__}::{item.name}"] = own
    if wrong:
        listing = "; ".join(f"{name}: {tiers or 'none'}" for name, tiers in sorted(wrong.items()))
        raise pytest.UsageError(f"each test module needs exactly one tier marker of {TIERS}, found {listing}")
