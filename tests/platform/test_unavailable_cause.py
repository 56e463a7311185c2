"""Which lost dependency an exception shows: the reason a caller sees with UNAVAILABLE / 503."""

from __future__ import annotations

import asyncio
import errno

import asyncpg
import grpc
import pytest
from aiokafka.errors import KafkaConnectionError, NotEnoughReplicasError
from fapiao_runtime.errors import unavailable_cause

pytestmark = pytest.mark.unit


async def test_a_refused_database_connection_is_the_database() -> None:
    with pytest.raises(OSError) as refused:
        await asyncpg.connect("postgresql://postgres@127.0.0.1:1/none", timeout=2)
    assert unavailable_cause(refused.value) == "database"


async def test_a_refused_connection_of_no_client_library_is_an_upstream() -> None:
    with pytest.raises(OSError) as refused:
        await asyncio.open_connection("127.0.0.1", 1)
    assert unavailable_cause(refused.value) == "upstream"


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle of operation"), "database"),
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), "database"),
        (asyncpg.exceptions.InternalClientError("another operation is in progress"), "database"),
        (KafkaConnectionError(), "kafka"),
        (NotEnoughReplicasError(), "kafka"),
        (grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata()), "upstream"),
        (ValueError("a bug"), None),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), None),
    ],
)
def test_each_kind_of_loss_is_named(error: BaseException, cause: str | None) -> None:
    assert unavailable_cause(error) == cause


def test_a_wrapped_loss_is_found_through_its_cause() -> None:
    try:
        try:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("gone")
        except asyncpg.PostgresError as inner:
            raise RuntimeError("could not store the payment") from inner
    except RuntimeError as outer:
        assert unavailable_cause(outer) == "database"


def _raise_inside(module: str, error: OSError) -> OSError:
    """`error` as raised by code of `module` (its traceback passes through that module)."""
    namespace: dict[str, object] = {"__name__": module}
    exec("def connect(error):\n    raise error\n", namespace)  # noqa: S102
    try:
        namespace["connect"](error)  # type: ignore[operator]
    except OSError as raised:
        return raised
    raise AssertionError("not raised")


@pytest.mark.parametrize(
    ("module", "cause"), [("asyncpg.connect_utils", "database"), ("aiokafka.conn", "kafka"), ("gateway.app", None)]
)
def test_an_unroutable_connect_is_the_loss_of_what_was_being_reached(module: str, cause: str | None) -> None:
    """A blackhole route makes connect() fail with EINVAL: inside a client library that is its peer's loss."""
    assert unavailable_cause(_raise_inside(module, OSError(errno.EINVAL, "Invalid argument"))) == cause


def test_an_unreachable_network_is_an_upstream() -> None:
    assert unavailable_cause(OSError(errno.ENETUNREACH, "Network is unreachable")) == "upstream"
