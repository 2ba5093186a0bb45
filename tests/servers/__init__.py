"""Throwaway servers for tests: PostgreSQL, Redis and an S3 server (MinIO).

Each server runs as a child process on a free 127.0.0.1 port with its data in a private temporary
directory, waits until it really answers requests, and can be stopped and started again on the same
port with the same data. ``tests/conftest.py`` wraps them in session fixtures; see
``docs/test-infrastructure.md``.
"""

from tests.servers._process import BinaryNotFoundError, ServerError, ServerProcess, free_port
from tests.servers.postgres import PostgresServer, to_sqlalchemy_url
from tests.servers.redis_server import RedisServer
from tests.servers.s3 import S3Location, S3Server

__all__ = [
    "BinaryNotFoundError",
    "PostgresServer",
    "RedisServer",
    "S3Location",
    "S3Server",
    "ServerError",
    "ServerProcess",
    "free_port",
    "to_sqlalchemy_url",
]
