"""Checks docker-compose.yml through the real `docker-compose config` (no engine needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SERVERS = ("postgres", "redis", "minio")

pytestmark = pytest.mark.timeout(120)


def _docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose not found: install the Debian package 'docker-compose' "
            "(apt-get install docker-compose); 'config' needs no Docker engine"
        )
    return binary


def _compose_config(tmp_dir: Path, **overrides: str) -> dict[str, Any]:
    """Run ``docker-compose config`` with a controlled environment and parse its output."""
    env_file = tmp_dir / "empty.env"  # ignore a developer's .env next to the compose file
    env_file.write_text("")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_dir),
        **overrides,
    }
    result = subprocess.run(
        [_docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _compose_config(tmp_path_factory.mktemp("compose"))


def test_services_present(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"postgres", "redis", "minio", "minio-init"}


def test_images(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    assert services["minio-init"]["image"].startswith("minio/mc:RELEASE.")


@pytest.mark.parametrize("service", SERVERS)
def test_servers_have_healthchecks(config: dict[str, Any], service: str) -> None:
    healthcheck = config["services"][service]["healthcheck"]
    assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}
    assert healthcheck["interval"]
    assert healthcheck["retries"] >= 3
    assert not healthcheck.get("disable", False)


@pytest.mark.parametrize(
    ("service", "published"),
    [
        ("postgres", {"127.0.0.1:5432:5432/tcp"}),
        ("redis", {"127.0.0.1:6379:6379/tcp"}),
        ("minio", {"127.0.0.1:9000:9000/tcp", "127.0.0.1:9001:9001/tcp"}),
    ],
)
def test_ports_bound_to_loopback(config: dict[str, Any], service: str, published: set[str]) -> None:
    assert set(config["services"][service]["ports"]) == published


def test_only_servers_publish_ports(config: dict[str, Any]) -> None:
    assert "ports" not in config["services"]["minio-init"]


@pytest.mark.parametrize(
    ("service", "volume", "target"),
    [
        ("postgres", "postgres-data", "/var/lib/postgresql/data"),
        ("redis", "redis-data", "/data"),
        ("minio", "minio-data", "/data"),
    ],
)
def test_named_volumes(config: dict[str, Any], service: str, volume: str, target: str) -> None:
    assert volume in config["volumes"]
    mounts = config["services"][service]["volumes"]
    assert any(mount.split(":")[:2] == [volume, target] for mount in mounts), mounts


def test_credentials_defaults(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["postgres"]["environment"] == {
        "POSTGRES_USER": "esper",
        "POSTGRES_PASSWORD": "esper",
        "POSTGRES_DB": "esper",
    }
    assert services["minio"]["environment"] == {
        "MINIO_ROOT_USER": "esperadmin",
        "MINIO_ROOT_PASSWORD": "esperadmin-secret",
    }
    assert services["minio-init"]["environment"] == {
        "S3_ACCESS_KEY": "esperadmin",
        "S3_SECRET_KEY": "esperadmin-secret",
        "S3_BUCKET": "esper-artifacts",
    }


def test_redis_appendonly(config: dict[str, Any]) -> None:
    command = config["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


def test_bucket_init_waits_for_healthy_minio(config: dict[str, Any]) -> None:
    init = config["services"]["minio-init"]
    assert init["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert init["restart"] == "no"
    script = " ".join(init["command"])
    assert "mc mb --ignore-existing" in script
    assert "S3_BUCKET" in script


def test_port_override_stays_on_loopback(tmp_path: Path) -> None:
    config = _compose_config(tmp_path, ESPER_POSTGRES_PORT="15432", ESPER_S3_PORT="19000")
    assert config["services"]["postgres"]["ports"] == ["127.0.0.1:15432:5432/tcp"]
    assert "127.0.0.1:19000:9000/tcp" in config["services"]["minio"]["ports"]
