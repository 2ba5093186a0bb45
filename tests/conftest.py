"""Shared fixtures: throwaway PostgreSQL, Redis and S3 (MinIO) servers.

Servers are session-scoped and start lazily, the first time a test requests them. Function-scoped
fixtures hand each test an isolated resource on them (a fresh database, a flushed Redis, a fresh
bucket) and restart a server that an earlier test left stopped. The logic lives in tests/servers;
see docs/test-infrastructure.md.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest

from tests.servers import PostgresServer, RedisServer, S3Location, S3Server, to_sqlalchemy_url

_resource_numbers = itertools.count(1)


def _resource_name(request: pytest.FixtureRequest, max_length: int, separator: str) -> str:
    """A deterministic, unique, lowercase name derived from the test name (t0001_test_foo)."""
    slug = re.sub(r"[^a-z0-9]+", separator, request.node.name.lower()).strip(separator)
    return f"t{next(_resource_numbers):04d}{separator}{slug}"[:max_length].rstrip(separator)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server shared by the session (use postgres_dsn for an isolated database)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server shared by the session (use redis_url for a flushed server)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A MinIO server shared by the session (use s3_bucket for an isolated bucket)."""
    with S3Server() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN (postgresql://...) of a fresh, empty database, dropped after the test."""
    postgres_server.ensure_running()
    dbname = _resource_name(request, max_length=63, separator="_")
    dsn = postgres_server.create_database(dbname)
    yield dsn
    postgres_server.ensure_running()
    postgres_server.drop_database(dbname)


@pytest.fixture
def postgres_sqlalchemy_url(postgres_dsn: str) -> str:
    """SQLAlchemy URL (postgresql+psycopg://...) of the test's fresh database."""
    return to_sqlalchemy_url(postgres_dsn)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL (redis://...) of a Redis server whose databases are all empty at test start."""
    redis_server.ensure_running()
    redis_server.flush_all()
    return redis_server.url()


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> Iterator[S3Location]:
    """A fresh, empty bucket (with endpoint and credentials), deleted after the test."""
    s3_server.ensure_running()
    location = s3_server.create_bucket(_resource_name(request, max_length=63, separator="-"))
    yield location
    s3_server.ensure_running()
    s3_server.delete_bucket(location.bucket)
