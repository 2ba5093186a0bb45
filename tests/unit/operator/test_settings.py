"""The operator's settings, read from ``ESPER_OPERATOR_*`` environment variables."""

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from esper_operator.settings import OperatorSettings


def test_defaults() -> None:
    made = OperatorSettings()
    assert made.namespaces == []
    assert made.urza_url_for_workers() == made.urza_url
    assert made.bus_url is None
    assert made.bus_url_for_workers() is None
    assert made.token() is None
    assert made.compile_cache is True
    assert made.max_gpu_jobs == 8
    assert 1 <= made.peering_priority < 2**31


def test_replicas_draw_their_own_peering_priority() -> None:
    drawn = {OperatorSettings().peering_priority for _ in range(8)}
    assert len(drawn) > 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("esper", ["esper"]),
        ("esper,team-a", ["esper", "team-a"]),
        (" esper , team-a ,, ", ["esper", "team-a"]),
        ("", []),
    ],
)
def test_namespaces_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("ESPER_OPERATOR_NAMESPACES", raw)
    assert OperatorSettings().namespaces == expected


def test_namespaces_as_a_list() -> None:
    assert OperatorSettings(namespaces=["a", "b"]).namespaces == ["a", "b"]


def test_structured_values_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ESPER_OPERATOR_GPU_TOLERATIONS",
        '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
    )
    monkeypatch.setenv("ESPER_OPERATOR_GPU_NODE_SELECTOR", '{"accelerator": "h100"}')
    monkeypatch.setenv(
        "ESPER_OPERATOR_COMPILE_RESOURCES",
        '{"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}',
    )
    monkeypatch.setenv("ESPER_OPERATOR_TRAINING_RESOURCES", '{"limits": {"cpu": "4"}}')
    monkeypatch.setenv("ESPER_OPERATOR_COMPILE_CACHE", "false")
    monkeypatch.setenv("ESPER_OPERATOR_MAX_GPU_JOBS", "3")
    made = OperatorSettings()
    assert made.gpu_tolerations == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert made.gpu_node_selector == {"accelerator": "h100"}
    assert made.compile_resources == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "8Gi"},
    }
    assert made.training_resources == {"limits": {"cpu": "4"}}
    assert made.benchmark_resources == {}
    assert made.compile_cache is False
    assert made.max_gpu_jobs == 3


def test_malformed_json_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_OPERATOR_GPU_TOLERATIONS", "[{not json")
    with pytest.raises(SettingsError, match="gpu_tolerations"):
        OperatorSettings()


@pytest.mark.parametrize("url", ["redis://oona:6379/0", "rediss://oona:6380"])
def test_a_redis_bus_url_is_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("ESPER_OPERATOR_BUS_URL", url)
    made = OperatorSettings()
    assert made.bus_url == url
    assert made.bus_url_for_workers() == url


@pytest.mark.parametrize("url", ["http://oona:6379", "oona:6379", "memory://"])
def test_a_bad_bus_url_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("ESPER_OPERATOR_BUS_URL", url)
    with pytest.raises(ValidationError, match="ESPER_OPERATOR_BUS_URL must be a redis://") as error:
        OperatorSettings()
    assert url in str(error.value)


def test_worker_addresses_override_the_operator_addresses() -> None:
    made = OperatorSettings(
        urza_url="http://urza:8420",
        worker_urza_url="http://urza.outside:8420",
        bus_url="redis://oona:6379",
        worker_bus_url="redis://oona.outside:6379",
    )
    assert made.urza_url_for_workers() == "http://urza.outside:8420"
    assert made.bus_url_for_workers() == "redis://oona.outside:6379"


def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_OPERATOR_URZA_TOKEN", "s3cret")
    made = OperatorSettings()
    assert made.token() == "s3cret"
    assert "s3cret" not in repr(made)


def test_the_token_file_wins_and_is_stripped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  from-file\n", encoding="utf-8")
    monkeypatch.setenv("ESPER_OPERATOR_URZA_TOKEN", "from-env")
    monkeypatch.setenv("ESPER_OPERATOR_URZA_TOKEN_FILE", str(token_file))
    assert OperatorSettings().token() == "from-file"


def test_a_missing_token_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ESPER_OPERATOR_URZA_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValidationError, match=r"ESPER_OPERATOR_URZA_TOKEN_FILE .* is not a file"):
        OperatorSettings()


def test_a_directory_is_not_a_token_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not a file"):
        OperatorSettings(urza_token_file=tmp_path)


def test_an_empty_token_file_is_refused_when_read(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(" \n", encoding="utf-8")
    made = OperatorSettings(urza_token_file=token_file)
    with pytest.raises(ValueError, match="is empty"):
        made.token()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ESPER_OPERATOR_MAX_GPU_JOBS", "0"),
        ("ESPER_OPERATOR_JOB_BACKOFF_LIMIT", "21"),
        ("ESPER_OPERATOR_QUEUE_RETRY_SECONDS", "0"),
        ("ESPER_OPERATOR_IMAGE_PULL_POLICY", "Sometimes"),
        ("ESPER_OPERATOR_LOG_FORMAT", "xml"),
        ("ESPER_OPERATOR_PEERING_NAME", "bad name"),
        ("ESPER_OPERATOR_URZA_URL", ""),
        ("ESPER_OPERATOR_HEALTH_PORT", "70000"),
    ],
)
def test_out_of_range_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        OperatorSettings()
