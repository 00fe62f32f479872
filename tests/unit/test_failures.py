"""The one failure classifier on errors as the libraries build them (the integration test
`test_failure_classifier.py` makes the real services raise them)."""

import errno

import kombu.exceptions
import psycopg
import psycopg.errors
import pytest
import redis.exceptions
from pymilvus.exceptions import MilvusException, MilvusUnavailableException

from workers.core.errors import ChunkTooLong, DeviceOutOfMemory, InvalidInput, ServiceUnavailable
from workers.core.failures import Failure, as_unavailable, chain, classify, explain, is_outage, service_of


def caused(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    "error",
    [
        ServiceUnavailable("down"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        TimeoutError("timed out"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        psycopg.OperationalError("connection failed: Connection refused"),  # client side: no SQLSTATE
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.CannotConnectNow("the database system is starting up"),
        psycopg.errors.TooManyConnections("sorry, too many clients already"),
        psycopg.InterfaceError("the connection is closed"),
        redis.exceptions.ConnectionError("Error 111 connecting"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379"),
        MilvusUnavailableException(message="server unavailable"),
        MilvusException(code=2, message="Fail connecting to server on 127.0.0.1:19530"),
    ],
)
def test_outages(error):
    assert classify(error) is Failure.OUTAGE and is_outage(error)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.LockNotAvailable("could not obtain lock"),
        DeviceOutOfMemory("CUDA out of memory"),
    ],
)
def test_worth_one_more_try(error):
    assert classify(error) is Failure.RETRY_ONCE and not is_outage(error)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum"),
        psycopg.errors.UniqueViolation("duplicate key"),
        psycopg.errors.UndefinedTable("relation does not exist"),
        redis.exceptions.ResponseError("WRONGTYPE"),
        MilvusException(code=1100, message="invalid parameter"),
        InvalidInput("no such level"),
        ChunkTooLong("too long"),
        ValueError("bad input"),
        RuntimeError("CUDA error: illegal memory access"),
    ],
)
def test_permanent(error):
    assert classify(error) is Failure.PERMANENT and not is_outage(error)


def test_the_whole_chain_is_read_and_an_outage_anywhere_wins():
    # kombu wraps redis-py, which wraps the socket's error: the old check stopped at kombu's.
    wrapped = caused(kombu.exceptions.OperationalError("send failed"), redis.exceptions.ConnectionError("refused"))
    assert classify(caused(RuntimeError("task failed"), wrapped)) is Failure.OUTAGE
    timeout = caused(RuntimeError("claim failed"), psycopg.errors.QueryCanceled("statement timeout"))
    assert classify(timeout) is Failure.RETRY_ONCE
    context = RuntimeError("while handling")
    context.__context__ = TimeoutError("timed out")
    assert is_outage(context)


def test_a_cycle_in_the_chain_is_followed_once():
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__cause__, second.__cause__ = second, first
    assert chain(first) == [first, second]
    assert classify(first) is Failure.PERMANENT


def test_what_a_person_is_told():
    refused = caused(kombu.exceptions.OperationalError("Error 111 connecting"), ConnectionRefusedError(111, "refused"))
    assert service_of(refused) == "the broker"
    assert explain(refused) == "the broker is unavailable (Error 111 connecting)"
    assert explain(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")) == (
        "Postgres failed (canceling statement due to statement timeout)"
    )
    assert explain(ValueError("bad")) == "bad"
    unavailable = as_unavailable(redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"))
    assert isinstance(unavailable, ServiceUnavailable) and str(unavailable).startswith("Redis is unavailable")
    assert as_unavailable(psycopg.errors.UniqueViolation("duplicate")) is None
