"""The failure classifier against what the real libraries raise when real services fail: a
redis-server stopped, paused (SIGSTOP) and replaying its data; a Postgres server stopped, a
statement past its timeout, a limit of the database; a Milvus server stopped. Each error is
classified as it reaches our code: through kombu and Celery's sending, through pymilvus, and
through our own stores' wrappers."""

import contextlib
import os
import signal
import threading
import time

import psycopg
import pytest
import redis
from pymilvus import MilvusClient

from tests.integration.faults import MilvusServer, RedisServer
from workers.core import sending
from workers.core.broker import broker_app
from workers.core.errors import ServiceUnavailable
from workers.core.failures import Failure, classify, explain
from workers.core.stores import milvus, postgres

pytestmark = pytest.mark.integration


def raised(call) -> BaseException:
    try:
        call()
    except Exception as err:
        return err
    raise AssertionError(f"{call} raised nothing")


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path, "--enable-debug-command", "yes")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.kill()


def test_redis_stopped_is_an_outage_also_through_kombu_and_our_sending(own_redis, make_settings, migrated_url):
    settings = make_settings(broker_url=own_redis.url, database_url=migrated_url, redis_timeout_s=1)
    client = redis.Redis.from_url(own_redis.url, socket_timeout=1, socket_connect_timeout=1)
    assert client.ping()
    own_redis.kill()
    assert classify(raised(client.ping)) is Failure.OUTAGE
    app = broker_app(settings)
    sent = raised(lambda: app.send_task("fleet.embed", kwargs={}, retry=True, retry_policy={"max_retries": 1}))
    assert type(sent).__module__.startswith("kombu") and classify(sent) is Failure.OUTAGE
    with postgres.connect(settings) as conn:
        error = raised(lambda: sending.send(app, conn, 1, ["0" * 32], 10))
    assert isinstance(error, ServiceUnavailable) and "broker" in str(error)


def test_redis_paused_is_an_outage(own_redis):
    client = redis.Redis.from_url(own_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    assert client.ping()
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        error = raised(client.ping)
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    assert isinstance(error, redis.exceptions.TimeoutError) and classify(error) is Failure.OUTAGE


def test_redis_replaying_its_data_is_an_outage_not_a_failure_of_the_work(own_redis):
    """BusyLoadingError: what a restarted Redis answers while it loads its AOF or RDB."""
    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command("DEBUG", "POPULATE", "200000")
    admin.config_set("key-load-delay", "100")  # microseconds per key: a reload of seconds
    admin.config_set("loading-process-events-interval-bytes", "1024")  # answering clients meanwhile
    threading.Thread(target=reload, args=(admin,), daemon=True).start()
    client = redis.Redis.from_url(own_redis.url, socket_timeout=5)
    deadline, error = time.monotonic() + 10, None
    while error is None and time.monotonic() < deadline:
        try:
            client.get("key:1")
        except redis.exceptions.BusyLoadingError as err:
            error = err
    assert error is not None, "Redis never said it was loading"
    assert classify(error) is Failure.OUTAGE and explain(error).startswith("Redis is unavailable")


def reload(admin: redis.Redis) -> None:
    """Make Redis load its data again, as after a restart; the server is killed before it ends."""
    with contextlib.suppress(redis.RedisError):
        admin.execute_command("DEBUG", "RELOAD")


def test_postgres_stopped_is_an_outage(tmp_path):
    import pgserver

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    conn = psycopg.connect(server.get_uri(), autocommit=True)
    server.cleanup()  # a fast shutdown: open connections are told, new ones refused
    cut = raised(lambda: conn.execute("SELECT 1"))
    assert cut.sqlstate == "57P01" and classify(cut) is Failure.OUTAGE
    refused = raised(lambda: psycopg.connect(server.get_uri(), connect_timeout=2))
    assert classify(refused) is Failure.OUTAGE


def test_a_statement_past_its_timeout_is_worth_one_more_try_and_a_limit_is_permanent(pg_admin):
    pg_admin.execute("SET statement_timeout = 50")
    timeout = raised(lambda: pg_admin.execute("SELECT pg_sleep(2)"))
    assert isinstance(timeout, psycopg.errors.QueryCanceled) and classify(timeout) is Failure.RETRY_ONCE
    pg_admin.execute("RESET statement_timeout")
    limit = raised(lambda: pg_admin.execute("SELECT repeat('x', 1073741824)"))
    assert isinstance(limit, psycopg.errors.ProgramLimitExceeded) and classify(limit) is Failure.PERMANENT


def test_milvus_stopped_is_an_outage(tmp_path, make_settings):
    server = MilvusServer(tmp_path)
    server.start()
    client = MilvusClient(uri=server.uri, timeout=5)
    client.list_collections()
    server.kill()
    assert classify(raised(lambda: client.list_collections(timeout=2))) is Failure.OUTAGE
    settings = make_settings(milvus_uri=server.uri, milvus_timeout_s=2)
    assert classify(raised(lambda: milvus.connect(settings).list_collections())) is Failure.OUTAGE
