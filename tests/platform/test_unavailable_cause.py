"""Which lost dependency an exception shows: the reason a caller sees with UNAVAILABLE / 503."""

from __future__ import annotations

import asyncio

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
