"""Bearer-token authentication of a real Urza, and the settings that decide it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from esper.config import UrzaSettings
from esper.urza.api.options import ApiOptions
from esper.urza.client import UrzaAuthError
from esper.urza.service import build_service

from .conftest import sqlite_local_settings
from .support import RunningUrza, blueprint, blueprint_document, cpu_target

pytestmark = [pytest.mark.timeout(120), pytest.mark.reliability("urza-auth")]

TOKEN = "correct-horse-battery-staple"

WRITES = [
    ("POST", "/v1/blueprints"),
    ("DELETE", "/v1/blueprints/" + "a" * 64),
    ("POST", "/v1/kernels"),
    ("POST", "/v1/kernels/k-" + "0" * 24 + "/phase"),
    ("PUT", "/v1/kernels/k-" + "0" * 24 + "/artifact"),
    ("POST", "/v1/kernels/k-" + "0" * 24 + "/report"),
    ("POST", "/v1/kernels/k-" + "0" * 24 + "/compile-records"),
    ("DELETE", "/v1/kernels/k-" + "0" * 24),
]
READS = [
    "/v1/blueprints",
    "/v1/blueprints/" + "a" * 64,
    "/v1/kernels",
    "/v1/kernels/k-" + "0" * 24,
    "/v1/kernels/k-" + "0" * 24 + "/artifact",
    "/v1/kernels/k-" + "0" * 24 + "/artifact-link",
    "/v1/kernels/k-" + "0" * 24 + "/compile-records",
]
BAD_AUTHORIZATION = [
    None,
    "Bearer wrong-token",
    f"Basic {TOKEN}",
    "Bearer",
    f"bearer {TOKEN}x",
]


@pytest.fixture
def guarded(start_urza: Callable[..., RunningUrza], tmp_path: Path) -> RunningUrza:
    return start_urza(sqlite_local_settings(tmp_path, auth_token=TOKEN))


def _assert_unauthorised(response, what: str) -> None:
    assert response.status_code == 401, what
    assert response.headers["WWW-Authenticate"] == "Bearer", what
    detail = response.json()["detail"]
    assert "bearer" in detail.lower(), what


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION)
def test_writes_need_the_token(guarded: RunningUrza, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    http = guarded.http(authorised=False)
    for method, path in WRITES:
        response = http.request(method, path, headers=headers, json={})
        _assert_unauthorised(response, f"{method} {path} with {authorization!r}")
    assert guarded.client().list_blueprints().items == []


def test_with_the_token_writes_succeed_and_reads_stay_open(guarded: RunningUrza) -> None:
    client = guarded.client()
    record = client.submit_blueprint(blueprint())
    kernel = client.create_kernel(record.hash, cpu_target())
    # The scheme is case-insensitive and extra blanks before the token are ignored.
    relaxed = guarded.http(authorised=False).post(
        "/v1/blueprints",
        json=blueprint_document(),
        headers={"Authorization": f"bearer   {TOKEN}"},
    )
    assert relaxed.status_code == 200

    anonymous = guarded.http(authorised=False)
    for path in READS:
        assert anonymous.get(path).status_code != 401, path
    assert anonymous.get(f"/v1/blueprints/{record.hash}").status_code == 200
    assert anonymous.get(f"/v1/kernels/{kernel.id}").status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert anonymous.get(path).status_code == 200, path


def test_client_with_a_wrong_token_raises_auth_error(guarded: RunningUrza) -> None:
    client = guarded.client(token="nope")
    with pytest.raises(UrzaAuthError, match="the bearer token is not valid") as caught:
        client.submit_blueprint(blueprint())
    assert caught.value.status == 401
    anonymous = guarded.client(token=None)
    with pytest.raises(UrzaAuthError, match="needs 'Authorization: Bearer <token>'"):
        anonymous.submit_blueprint(blueprint())
    assert anonymous.list_blueprints().items == []


def test_reads_can_require_the_token(
    start_urza: Callable[..., RunningUrza], tmp_path: Path
) -> None:
    urza = start_urza(
        sqlite_local_settings(tmp_path, auth_token=TOKEN, require_auth_for_reads=True)
    )
    record = urza.client().submit_blueprint(blueprint())
    anonymous = urza.http(authorised=False)
    for path in READS:
        _assert_unauthorised(anonymous.get(path), path)
    wrong = anonymous.get("/v1/blueprints", headers={"Authorization": "Bearer wrong"})
    _assert_unauthorised(wrong, "wrong token")
    assert urza.client().get_blueprint(record.hash) == record
    with pytest.raises(UrzaAuthError):
        urza.client(token=None).list_blueprints()
    # Probes stay open, so the kubelet and Prometheus need no secret.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert anonymous.get(path).status_code == 200, path


def test_token_from_a_mounted_secret_file(
    start_urza: Callable[..., RunningUrza], tmp_path: Path
) -> None:
    secret = tmp_path / "secret" / "token"
    secret.parent.mkdir()
    secret.write_text("from-the-file\n", encoding="utf-8")
    # The file wins over the variable.
    settings = sqlite_local_settings(
        tmp_path / "urza", auth_token_file=secret, auth_token="from-the-variable"
    )
    assert settings.token() == "from-the-file"
    urza = start_urza(settings)
    assert urza.client(token="from-the-file").submit_blueprint(blueprint()).hash
    with pytest.raises(UrzaAuthError):
        urza.client(token="from-the-variable").submit_blueprint(blueprint())


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("  \n", encoding="utf-8")
    settings = sqlite_local_settings(tmp_path, auth_token_file=secret)
    with pytest.raises(ValueError, match="is empty"):
        build_service(settings)


def test_missing_token_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not a file"):
        sqlite_local_settings(tmp_path, auth_token_file=tmp_path / "absent")


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "urza.example.com", "::"])
def test_no_token_on_a_non_loopback_address_is_refused(tmp_path: Path, host: str) -> None:
    settings = sqlite_local_settings(tmp_path, host=host)
    with pytest.raises(ValueError, match="ESPER_URZA_AUTH_TOKEN") as caught:
        build_service(settings)
    assert "loopback" in str(caught.value)
    # Refused before touching storage.
    assert not (tmp_path / "urza.sqlite").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_no_token_on_loopback_opens_writes(
    start_urza: Callable[..., RunningUrza], tmp_path: Path, host: str
) -> None:
    urza = start_urza(sqlite_local_settings(tmp_path, host=host))
    assert urza.token is None
    response = urza.http(authorised=False).post("/v1/blueprints", json=blueprint_document())
    assert response.status_code == 201


def test_anonymous_writes_can_be_allowed_explicitly(
    start_urza: Callable[..., RunningUrza], tmp_path: Path
) -> None:
    urza = start_urza(sqlite_local_settings(tmp_path, host="0.0.0.0", allow_anonymous_writes=True))
    response = urza.http(authorised=False).post("/v1/blueprints", json=blueprint_document())
    assert response.status_code == 201


def test_anonymous_writes_contradict_a_token(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="contradicts a configured auth token"):
        UrzaSettings(
            database_url=f"sqlite:///{tmp_path / 'u.sqlite'}",
            artifact_dir=tmp_path / "a",
            auth_token=TOKEN,
            allow_anonymous_writes=True,
        )


@pytest.mark.parametrize(
    ("token", "writes_open", "message"),
    [
        (None, False, "must run with open writes"),
        ("a-token", True, "open writes contradict a configured token"),
    ],
)
def test_api_options_refuse_contradictions(
    token: str | None, writes_open: bool, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ApiOptions(token=token, writes_open=writes_open)
