"""Urza's settings, the blob store they choose, and the API options they produce."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from esper.config import UrzaSettings, esper_home
from esper.urza.api.limits import RateLimit
from esper.urza.api.options import ApiOptions
from esper.urza.blobs import LocalBlobStore, S3BlobStore
from esper.urza.service import build_service, make_blob_store


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ESPER_* variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ESPER_HOME", str(tmp_path / "home"))


def _settings(**values: object) -> UrzaSettings:
    return UrzaSettings.model_validate(values)


# Defaults and the environment -------------------------------------------------------------


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = UrzaSettings()
    home = tmp_path / "home"
    assert esper_home() == home
    assert settings.database_url == f"sqlite:///{home / 'urza.sqlite'}"
    assert settings.artifact_dir == home / "artifacts"
    assert settings.blob_store == "local"
    assert settings.auto_migrate is True
    assert settings.host == "127.0.0.1"
    assert settings.token() is None
    assert settings.writes_open() is True
    # Limits are on by default, but generous enough that the embedded stack (every worker on
    # one loopback address) never meets them.
    assert settings.max_json_bytes == 1024 * 1024
    assert settings.rate_limit_per_second == 50.0
    assert settings.rate_limit_burst == 200
    assert settings.rate_limit_reads is False


def test_limits_reach_the_api_options() -> None:
    limited = build_service(
        _settings(
            max_json_bytes=4096,
            rate_limit_per_second=2.5,
            rate_limit_burst=7,
            rate_limit_reads=True,
        )
    )
    options = limited.app.state.urza.options
    assert options.max_json_bytes == 4096
    assert options.rate_limit == RateLimit(per_second=2.5, burst=7, reads=True)
    unlimited = build_service(_settings(rate_limit_per_second=0))
    assert unlimited.app.state.urza.options.rate_limit is None
    limited.engine.dispose()
    unlimited.engine.dispose()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_URZA_DATABASE_URL", "postgresql+psycopg://u:p@db:5432/urza")
    monkeypatch.setenv("ESPER_URZA_BLOB_STORE", "s3")
    monkeypatch.setenv("ESPER_URZA_S3_BUCKET", "artifacts")
    monkeypatch.setenv("ESPER_URZA_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("ESPER_URZA_S3_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("ESPER_URZA_S3_SECRET_ACCESS_KEY", "s3-pa55word")
    monkeypatch.setenv("ESPER_URZA_AUTO_MIGRATE", "false")
    monkeypatch.setenv("ESPER_URZA_AUTH_TOKEN", "t0ken")

    settings = UrzaSettings()

    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/urza"
    assert settings.blob_store == "s3"
    assert settings.s3_bucket == "artifacts"
    assert settings.auto_migrate is False
    assert settings.token() == "t0ken"
    # Secrets stay out of reprs and logs.
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "s3-pa55word"
    assert "s3-pa55word" not in repr(settings)
    assert "t0ken" not in repr(settings)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("blob_store", "gcs"),
        ("port", 0),
        ("port", 70000),
        ("presign_seconds", 0),
        ("presign_seconds", 604801),
        ("max_upload_bytes", 0),
        ("max_json_bytes", 1023),
        ("rate_limit_per_second", -1.0),
        ("rate_limit_burst", 0),
        ("database_url", ""),
    ],
)
def test_out_of_range_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        _settings(**{field: value})


# Cross-field validation -------------------------------------------------------------------


def test_s3_without_a_bucket_is_refused() -> None:
    with pytest.raises(ValidationError, match="ESPER_URZA_S3_BUCKET"):
        _settings(blob_store="s3")
    with pytest.raises(ValidationError, match="ESPER_URZA_S3_BUCKET"):
        _settings(blob_store="s3", s3_bucket="")


def test_missing_token_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    with pytest.raises(
        ValidationError, match=f"ESPER_URZA_AUTH_TOKEN_FILE {missing} is not a file"
    ):
        _settings(auth_token_file=missing)
    with pytest.raises(ValidationError, match="is not a file"):
        _settings(auth_token_file=tmp_path)  # a directory is not a token file


def test_token_file_is_read_stripped_and_wins_over_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  from-secret\n", encoding="utf-8")

    settings = _settings(auth_token_file=token_file, auth_token="from-env")

    assert settings.token() == "from-secret"
    assert settings.writes_open() is False
    # A rotated secret is picked up: the file is read each time.
    token_file.write_text("rotated\n", encoding="utf-8")
    assert settings.token() == "rotated"


def test_empty_token_file_is_an_error_not_an_open_door(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(" \n\n", encoding="utf-8")
    settings = _settings(auth_token_file=token_file)

    with pytest.raises(ValueError, match=f"auth token file {token_file} is empty"):
        settings.token()
    with pytest.raises(ValueError, match="is empty"):
        settings.writes_open()
    # With anonymous writes requested, the emptiness is caught while validating.
    with pytest.raises(ValidationError, match="is empty"):
        _settings(auth_token_file=token_file, allow_anonymous_writes=True)


@pytest.mark.parametrize("source", ["token", "file"])
def test_anonymous_writes_contradict_a_token(tmp_path: Path, source: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("secret\n", encoding="utf-8")
    values: dict[str, object] = (
        {"auth_token": "secret"} if source == "token" else {"auth_token_file": token_file}
    )
    with pytest.raises(ValidationError, match="allow_anonymous_writes contradicts"):
        _settings(allow_anonymous_writes=True, **values)


@pytest.mark.parametrize(
    ("host", "open_writes"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("urza.example.com", False),
    ],
)
def test_writes_are_open_without_a_token_only_on_loopback(host: str, open_writes: bool) -> None:
    assert _settings(host=host).writes_open() is open_writes
    # The explicit flag opens them anywhere; a token closes them everywhere.
    assert _settings(host=host, allow_anonymous_writes=True).writes_open() is True
    assert _settings(host=host, auth_token="secret").writes_open() is False


# The blob store the settings choose -------------------------------------------------------


def test_make_blob_store_local(tmp_path: Path) -> None:
    store = make_blob_store(_settings(artifact_dir=tmp_path / "blobs"))
    assert isinstance(store, LocalBlobStore)
    assert store.root == (tmp_path / "blobs").resolve()
    assert store.root.is_dir()


def test_make_blob_store_s3_passes_endpoint_region_and_credentials() -> None:
    settings = _settings(
        blob_store="s3",
        s3_bucket="artifacts",
        s3_endpoint_url="http://127.0.0.1:9",
        s3_region="eu-west-3",
        s3_access_key_id="access",
        s3_secret_access_key="secret",
    )

    store = make_blob_store(settings)

    assert isinstance(store, S3BlobStore)
    assert store.bucket == "artifacts"
    client = store._client
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.region_name == "eu-west-3"
    credentials = client._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key) == ("access", "secret")
    assert store.uri("a" * 64) == f"s3://artifacts/sha256/aa/{'a' * 64}"


def test_make_blob_store_s3_without_bucket_is_refused() -> None:
    # Settings built without validation (model_construct) still cannot reach S3 bucketless.
    settings = UrzaSettings.model_construct(blob_store="s3", s3_bucket=None)
    with pytest.raises(ValueError, match="ESPER_URZA_S3_BUCKET"):
        make_blob_store(settings)


# API options ------------------------------------------------------------------------------


def test_api_options_need_a_token_or_open_writes() -> None:
    with pytest.raises(ValueError, match="without a token must run with open writes"):
        ApiOptions(token=None, writes_open=False)


def test_api_options_refuse_open_writes_with_a_token() -> None:
    with pytest.raises(ValueError, match="open writes contradict a configured token"):
        ApiOptions(token="secret", writes_open=True)


def test_api_options_valid_combinations_and_defaults() -> None:
    protected = ApiOptions(token="secret", writes_open=False, require_auth_for_reads=True)
    open_ = ApiOptions(token=None, writes_open=True)
    assert protected.require_auth_for_reads is True
    assert open_.max_upload_bytes == 512 * 1024 * 1024
    assert open_.presign_seconds == 900
    assert open_.max_json_bytes == 1024 * 1024
    assert open_.rate_limit is None
    assert open_.require_auth_for_reads is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        open_.token = "late"  # type: ignore[misc]
