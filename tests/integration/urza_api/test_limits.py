"""Request limits of a real Urza: JSON body size (413) and per-client write rate (429)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from esper.contracts.kernel import KernelPhase
from esper.contracts.urza_api import PhaseChange
from esper.urza.client import UrzaRateLimitedError
from tests.servers import S3Location

from .conftest import BACKENDS, postgres_s3_settings, serving, sqlite_local_settings
from .support import RunningUrza, blueprint, blueprint_document, bundle, cpu_target

pytestmark = pytest.mark.reliability("urza-limits")

MAX_JSON_BYTES = 4096

# One token per 1000 s: once the burst is spent, no token comes back while a test runs, so
# every refusal below is certain rather than a race with the refill.
NO_REFILL = 0.001
BURST = 3


def _start(
    request: pytest.FixtureRequest, tmp_path: Path, **overrides: Any
) -> Iterator[RunningUrza]:
    backend = request.param
    if backend == "postgres-s3":
        database_url = request.getfixturevalue("postgres_sqlalchemy_url")
        s3: S3Location = request.getfixturevalue("s3_bucket")
        settings = postgres_s3_settings(database_url, s3, **overrides)
    else:
        settings = sqlite_local_settings(tmp_path, **overrides)
    with serving(settings, backend) as running:
        yield running


@pytest.fixture(params=BACKENDS)
def small_json_urza(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningUrza]:
    """Urza with a 4 KiB JSON body limit and no rate limit."""
    yield from _start(request, tmp_path, max_json_bytes=MAX_JSON_BYTES, rate_limit_per_second=0)


@pytest.fixture(params=BACKENDS)
def throttled_urza(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningUrza]:
    """Urza whose clients may write a burst of 3 and then (for the test's length) nothing."""
    yield from _start(request, tmp_path, rate_limit_per_second=NO_REFILL, rate_limit_burst=BURST)


def _distinct(index: int) -> dict[str, Any]:
    """The wire form of a blueprint of its own identity (``hidden`` sets the hash)."""
    return blueprint(hidden=16 + index).model_dump(mode="json", by_alias=True)


def _oversized_blueprint() -> bytes:
    document = blueprint_document(description="x" * (2 * MAX_JSON_BYTES))
    return json.dumps(document).encode()


# JSON body size -------------------------------------------------------------------------------


def test_an_oversized_json_body_is_refused_and_nothing_is_stored(
    small_json_urza: RunningUrza,
) -> None:
    http = small_json_urza.http()
    body = _oversized_blueprint()
    answer = http.post("/v1/blueprints", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["detail"] == (
        f"request body exceeds the {MAX_JSON_BYTES}-byte limit of JSON bodies (max_json_bytes)"
    )
    assert small_json_urza.client().list_blueprints().items == []


def test_an_oversized_chunked_body_is_refused_too(small_json_urza: RunningUrza) -> None:
    body = _oversized_blueprint()
    # A generator has no length, so httpx sends it chunked, with no Content-Length to trust.
    chunks = (body[start : start + 1024] for start in range(0, len(body), 1024))
    answer = small_json_urza.http().post(
        "/v1/blueprints", content=chunks, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413
    assert "max_json_bytes" in answer.json()["detail"]
    assert small_json_urza.client().list_blueprints().items == []


def test_a_body_under_the_limit_is_parsed_as_usual(small_json_urza: RunningUrza) -> None:
    client = small_json_urza.client()
    record = client.submit_blueprint(blueprint())
    assert client.list_blueprints().items[0].hash == record.hash


def test_the_limit_applies_to_kernel_writes_and_spares_artifact_uploads(
    small_json_urza: RunningUrza,
) -> None:
    client = small_json_urza.client()
    record = client.submit_blueprint(blueprint())
    kernel = client.create_kernel(record.hash, cpu_target())
    oversized_change = {"phase": "Failed", "error": "e" * (2 * MAX_JSON_BYTES)}
    answer = small_json_urza.http().post(f"/v1/kernels/{kernel.id}/phase", json=oversized_change)
    assert answer.status_code == 413
    assert client.get_kernel(kernel.id).phase is KernelPhase.PENDING
    # The bundle has a limit of its own (max_upload_bytes), far above the JSON one.
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    data = bundle("larger than a JSON body", size=4 * MAX_JSON_BYTES)
    uploaded = client.upload_artifact(kernel.id, data)
    assert uploaded.size_bytes == len(data)


# Write rate -----------------------------------------------------------------------------------


def test_a_burst_over_the_limit_gets_429_with_retry_after_while_health_answers(
    throttled_urza: RunningUrza,
) -> None:
    http = throttled_urza.http()
    statuses = [
        http.post("/v1/blueprints", json=_distinct(index)).status_code for index in range(BURST)
    ]
    assert statuses == [201] * BURST
    refused = http.post("/v1/blueprints", json=_distinct(BURST))
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["detail"].startswith(
        f"rate limit of {NO_REFILL:g} writes/s (burst {BURST}) per client exceeded"
    )
    # The refused write stored nothing; reads, probes and scrapes are not limited.
    assert len(throttled_urza.client().list_blueprints().items) == BURST
    for path in ("/healthz", "/readyz", "/metrics"):
        for _ in range(BURST + 2):
            assert http.get(path).status_code == 200


def test_another_client_is_not_throttled_by_the_first(throttled_urza: RunningUrza) -> None:
    first = throttled_urza.http()
    for index in range(BURST):
        assert first.post("/v1/blueprints", json=_distinct(index)).is_success
    assert first.post("/v1/blueprints", json=_distinct(BURST)).status_code == 429
    # Every 127.0.0.0/8 address is loopback, so a second source address is a second client.
    second = httpx.Client(
        base_url=throttled_urza.url,
        headers=throttled_urza.auth_headers(),
        transport=httpx.HTTPTransport(local_address="127.0.0.2"),
        timeout=10.0,
    )
    with second:
        answer = second.post("/v1/blueprints", json=_distinct(BURST + 1))
    assert answer.status_code == 201


def test_the_client_gives_up_on_429_with_a_clear_error(throttled_urza: RunningUrza) -> None:
    slept: list[float] = []
    client = throttled_urza.client(retries=2, sleep=slept.append, max_retry_after=5.0)
    for index in range(BURST):
        client.submit_blueprint(blueprint(hidden=16 + index))
    with pytest.raises(UrzaRateLimitedError, match="POST /v1/blueprints: rate limited") as caught:
        client.submit_blueprint(blueprint(hidden=16 + BURST))
    assert "after 3 attempt(s)" in str(caught.value)
    # The server asked for ~1000 s; the client's bound cut each wait to 5 s.
    assert slept == [5.0, 5.0]


@pytest.mark.parametrize("backend", ["sqlite-local"])
def test_the_client_waits_retry_after_and_then_succeeds(
    backend: str, tmp_path: Path, start_urza: Any
) -> None:
    # Two tokens a second, burst 1: the second write is refused with Retry-After: 1, and after
    # the client has waited that second a token is certainly there (it rounds up).
    settings = sqlite_local_settings(tmp_path, rate_limit_per_second=2.0, rate_limit_burst=1)
    running: RunningUrza = start_urza(settings, backend)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    client, transport = running.recording_client(retries=2, sleep=sleep)
    first = client.submit_blueprint(blueprint(hidden=16))
    second = client.submit_blueprint(blueprint(hidden=17))
    assert first.hash != second.hash
    assert [status for _, _, status in transport.statuses] == [201, 429, 201]
    assert slept == [1.0]
