"""Shared fixtures: throwaway PostgreSQL, Redis and S3 (MinIO) servers, and a Kubernetes cluster.

Servers are session-scoped and start lazily, the first time a test requests them. Function-scoped
fixtures hand each test an isolated resource on them (a fresh database, a flushed Redis, a fresh
bucket) and restart a server that an earlier test left stopped. The logic lives in tests/servers;
see docs/test-infrastructure.md.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.servers import PostgresServer, RedisServer, S3Location, S3Server, to_sqlalchemy_url
from tests.servers.kube import ControlPlane

if TYPE_CHECKING:
    from tests.support.kubelet import StandInKubelet

pytest_plugins = ("tests.support.reliability",)

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


# -- Kubernetes: the envtest-style control plane and the stand-in kubelet (docs/control-plane.md) --


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler with the CRDs applied.

    Fails (never skips) when the binaries are missing; the error names the build command.
    """
    with ControlPlane() as plane:
        yield plane


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane) -> Iterator[StandInKubelet]:
    """The test-only stand-in kubelet: Nodes esper-gpu-0 and esper-cpu-0 running Pods locally."""
    from tests.support.kubelet import StandInKubelet  # the kubernetes client takes ~1 s to import

    with StandInKubelet(control_plane.kubeconfig) as stand_in:
        yield stand_in


@pytest.fixture
def kube_namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted after the test.

    The namespace controller starts deleting 5 s after the request, so teardown waits (best
    effort, at most 30 s) only while Pods of the namespace may still be running; otherwise the
    deletion finishes in the background.
    """
    control_plane.ensure_running()
    name = f"{_resource_name(request, max_length=56, separator='-')}-{secrets.token_hex(3)}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.wait_for_service_account(name)
    yield name
    control_plane.ensure_running()
    live_pods = control_plane.kubectl(
        "get", "pods", "-n", name, "-o", "name",
        "--field-selector=status.phase!=Succeeded,status.phase!=Failed",
    ).stdout.strip()  # fmt: skip
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
    if live_pods:
        control_plane.kubectl(
            "wait", "--for=delete", f"namespace/{name}", "--timeout=30s", check=False, timeout=60
        )
