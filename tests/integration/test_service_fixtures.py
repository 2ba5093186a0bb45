"""Smoke and restart tests for the throwaway servers in tests/servers."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis

from tests.servers import (
    BinaryNotFoundError,
    PostgresServer,
    RedisServer,
    S3Location,
    S3Server,
    ServerError,
    _process,
)
from tests.servers.postgres import find_pg_bin_dir
from tests.servers.redis_server import find_redis_server
from tests.servers.s3 import find_minio

pytestmark = pytest.mark.timeout(120)

# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_round_trip(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE seeds (id serial PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO seeds (name) VALUES (%s), (%s)", ("alpha", "beta"))
        conn.commit()
        rows = conn.execute("SELECT id, name FROM seeds ORDER BY id").fetchall()
        server_user = conn.execute("SELECT current_user").fetchone()
    assert rows == [(1, "alpha"), (2, "beta")]
    assert server_user == ("esper",)


@pytest.mark.postgres
def test_postgres_databases_are_isolated(
    postgres_dsn: str, postgres_server: PostgresServer
) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        dbname = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert dbname is not None
    assert dbname[0].startswith("t")
    assert dbname[0].endswith("_test_postgres_databases_are_isolated")
    assert tables == (0,)  # the previous test's table lives in another, dropped database
    assert postgres_dsn == postgres_server.dsn(dbname[0])


@pytest.mark.postgres
def test_postgres_runs_unprivileged(postgres_server: PostgresServer) -> None:
    assert postgres_server.pid is not None
    server_uid = os.stat(f"/proc/{postgres_server.pid}").st_uid
    if os.geteuid() == 0:
        assert server_uid != 0
        assert postgres_server.data_dir.stat().st_uid == server_uid
    else:
        assert server_uid == os.geteuid()


@pytest.mark.postgres
def test_postgres_restart_keeps_port_and_data(
    postgres_dsn: str, postgres_server: PostgresServer
) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE survivors (value int)")
        conn.execute("INSERT INTO survivors VALUES (42)")
        conn.commit()
    port = postgres_server.port

    postgres_server.stop()
    assert not postgres_server.is_running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_dsn, connect_timeout=2)

    postgres_server.start()
    assert postgres_server.port == port
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT value FROM survivors").fetchall() == [(42,)]


@pytest.mark.postgres
def test_postgres_crash_keeps_committed_data(
    postgres_dsn: str, postgres_server: PostgresServer
) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE ledger (value int)")
        conn.execute("INSERT INTO ledger VALUES (7)")
        conn.commit()
    old_pid = postgres_server.pid

    postgres_server.kill()
    assert not postgres_server.is_running
    postgres_server.start()  # crash recovery replays the WAL

    assert postgres_server.pid != old_pid
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT value FROM ledger").fetchall() == [(7,)]


@pytest.mark.postgres
def test_postgres_sqlalchemy_url(postgres_sqlalchemy_url: str, postgres_dsn: str) -> None:
    assert postgres_sqlalchemy_url.startswith("postgresql+psycopg://esper:esper@127.0.0.1:")
    assert postgres_sqlalchemy_url.split("://", 1)[1] == postgres_dsn.split("://", 1)[1]


# -- Redis ---------------------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_stream_round_trip(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        first = client.xadd("esper:events", {"kind": "seed_germinated", "seed": "s1"})
        second = client.xadd("esper:events", {"kind": "seed_culled", "seed": "s2"})
        streams = client.xread({"esper:events": "0-0"}, count=10, block=1000)
    assert streams == [
        [
            b"esper:events",
            [
                (first, {b"kind": b"seed_germinated", b"seed": b"s1"}),
                (second, {b"kind": b"seed_culled", b"seed": b"s2"}),
            ],
        ]
    ]


@pytest.mark.redis
def test_redis_is_flushed_between_tests(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0  # the previous test's stream is gone
        assert client.config_get("appendonly") == {"appendonly": "yes"}


@pytest.mark.redis
def test_redis_restart_keeps_port_and_data(redis_url: str, redis_server: RedisServer) -> None:
    with redis.Redis.from_url(redis_url) as client:
        entry = client.xadd("esper:durable", {"n": "1"})
        client.set("esper:key", "value")
    port = redis_server.port

    redis_server.stop()
    assert not redis_server.is_running
    with (
        redis.Redis.from_url(redis_url, socket_connect_timeout=1) as client,
        pytest.raises(redis.ConnectionError),
    ):
        client.ping()

    redis_server.start()
    assert redis_server.port == port
    with redis.Redis.from_url(redis_url) as client:
        assert client.xrange("esper:durable") == [(entry, {b"n": b"1"})]
        assert client.get("esper:key") == b"value"


@pytest.mark.redis
def test_redis_crash_with_appendfsync_always_loses_nothing() -> None:
    with RedisServer(appendfsync="always") as server:
        with redis.Redis.from_url(server.url()) as client:
            client.xadd("esper:crash", {"n": "1"})
        server.kill()
        server.start()
        with redis.Redis.from_url(server.url()) as client:
            assert client.xlen("esper:crash") == 1


def _listening_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.mark.redis
def test_first_start_moves_to_another_port_when_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with _listening_socket() as blocker:
        taken = blocker.getsockname()[1]
        offered = [taken]
        real_free_port = _process.free_port

        def free_port() -> int:
            return offered.pop() if offered else real_free_port()

        monkeypatch.setattr(_process, "free_port", free_port)
        with RedisServer() as server:
            assert server.port != taken
            assert server.command("PING") == b"+PONG"
            assert f"port {taken}" in server.log_path.read_text()


@pytest.mark.redis
def test_restart_on_a_taken_port_fails_clearly() -> None:
    with RedisServer() as server:
        server.stop()
        assert server.port is not None
        with (
            _listening_socket(server.port),
            pytest.raises(ServerError, match="exited during startup"),
        ):
            server.start()
        assert not server.is_running
        server.start()  # the port is free again
        assert server.command("PING") == b"+PONG"


# -- S3 (MinIO) ----------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_put_get_round_trip(s3_bucket: S3Location) -> None:
    payload = os.urandom(256 * 1024)
    client = s3_bucket.client()
    try:
        client.put_object(Bucket=s3_bucket.bucket, Key="blueprints/b1/kernel.pt", Body=payload)
        fetched = client.get_object(Bucket=s3_bucket.bucket, Key="blueprints/b1/kernel.pt")
        body = fetched["Body"].read()
        listed = client.list_objects_v2(Bucket=s3_bucket.bucket)
    finally:
        client.close()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert [obj["Key"] for obj in listed["Contents"]] == ["blueprints/b1/kernel.pt"]


@pytest.mark.s3
def test_s3_buckets_are_isolated(s3_bucket: S3Location, s3_server: S3Server) -> None:
    assert s3_bucket.endpoint_url == s3_server.endpoint_url
    client = s3_bucket.client()
    try:
        assert client.list_objects_v2(Bucket=s3_bucket.bucket)["KeyCount"] == 0
        buckets = {b["Name"] for b in client.list_buckets()["Buckets"]}
    finally:
        client.close()
    assert {s3_server.default_bucket, s3_bucket.bucket} <= buckets


@pytest.mark.s3
def test_s3_restart_keeps_port_and_data(s3_bucket: S3Location, s3_server: S3Server) -> None:
    client = s3_bucket.client()
    try:
        client.put_object(Bucket=s3_bucket.bucket, Key="artifact.bin", Body=b"\x00esper\xff")
    finally:
        client.close()
    port = s3_server.port

    s3_server.stop()
    assert not s3_server.is_running
    s3_server.start()

    assert s3_server.port == port
    client = s3_bucket.client()
    try:
        body = client.get_object(Bucket=s3_bucket.bucket, Key="artifact.bin")["Body"].read()
    finally:
        client.close()
    assert body == b"\x00esper\xff"


# -- Binary discovery ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "finder", "hint"),
    [
        ("ESPER_PG_BIN", find_pg_bin_dir, "initdb and postgres"),
        ("ESPER_REDIS_SERVER", find_redis_server, "Debian package 'redis-server'"),
        ("ESPER_MINIO", find_minio, "not an executable file"),
    ],
)
def test_missing_binary_override_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, variable: str, finder: Callable[[], Path], hint: str
) -> None:
    monkeypatch.setenv(variable, "/nonexistent/esper-test-binary")
    with pytest.raises(BinaryNotFoundError, match=hint):
        finder()


def test_missing_minio_build_names_the_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ESPER_MINIO", raising=False)
    monkeypatch.setenv("ESPER_TOOLS_CACHE", str(tmp_path))
    with pytest.raises(BinaryNotFoundError, match=r"scripts/build-minio\.sh"):
        find_minio()


def test_missing_postgres_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESPER_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("tests.servers.postgres.glob.glob", lambda _pattern: [])
    with pytest.raises(BinaryNotFoundError, match="Debian package 'postgresql'"):
        find_pg_bin_dir()
