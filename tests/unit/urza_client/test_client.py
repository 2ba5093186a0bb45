"""UrzaClient against httpx.MockTransport: retries, backoff, error types, verified downloads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import KernelArtifact, KernelPhase, KernelTarget, kernel_id
from esper.contracts.urza_api import BlueprintPage, BlueprintRecord, KernelPage, PhaseChange
from esper.urza.client import (
    UrzaAuthError,
    UrzaClient,
    UrzaConflictError,
    UrzaError,
    UrzaIntegrityError,
    UrzaNotFoundError,
    UrzaRateLimitedError,
    UrzaRequestError,
    UrzaUnavailableError,
)

BASE = "http://urza.test"
BLUEPRINT_HASH = hashlib.sha256(b"unit blueprint").hexdigest()
TARGET = KernelTarget(device="cpu", bindings={"C": 64}, batch_sizes=[1, 32])
KERNEL_ID = kernel_id(BLUEPRINT_HASH, TARGET)
BUNDLE = b"the real kernel bundle" * 64
BUNDLE_SHA = hashlib.sha256(BUNDLE).hexdigest()

Handler = Callable[[httpx.Request], httpx.Response]


def blueprint() -> BlueprintIR:
    return BlueprintIR.model_validate(
        {
            "name": "unit",
            "input": {"layout": "features", "shape": ["C"]},
            "nodes": [
                {"id": "lin", "op": "linear", "inputs": ["input"], "params": {"outFeatures": "C"}}
            ],
            "output": "lin",
        }
    )


def kernel(phase: KernelPhase = KernelPhase.COMPILED, sha: str | None = BUNDLE_SHA) -> dict:
    artifact = KernelArtifact(
        id=KERNEL_ID,
        blueprint_hash=BLUEPRINT_HASH,
        target=TARGET,
        phase=KernelPhase.COMPILING,
        artifact_uri=None if sha is None else f"s3://bucket/sha256/{sha[:2]}/{sha}",
        sha256=sha,
        size_bytes=None if sha is None else len(BUNDLE),
    )
    document = artifact.model_dump(mode="json", by_alias=True)
    document["phase"] = phase.value
    return document


def error(status: int, detail: str) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail, "errors": []})


class Recorder:
    """A scripted server: answers (or raises) in order, and records requests and sleeps."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    def client(self, **options: object) -> UrzaClient:
        options.setdefault("retries", 3)
        options.setdefault("backoff", 0.25)
        return UrzaClient(
            BASE,
            transport=httpx.MockTransport(self),
            sleep=self.sleeps.append,
            **options,  # type: ignore[arg-type]
        )


# Construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"retries": -1},
        {"backoff": -0.1},
        {"timeout": 0},
        {"timeout": -5.0},
    ],
)
def test_constructor_refuses_nonsense(options: dict) -> None:
    with pytest.raises(ValueError, match="retries and backoff must be >= 0 and timeout > 0"):
        UrzaClient(BASE, **options)


def test_constructor_accepts_edges_and_sets_the_token_and_timeout() -> None:
    recorder = Recorder(httpx.Response(200, json={"status": "ready"}))
    with recorder.client(token="s3cret", timeout=2.5, retries=0, backoff=0) as client:
        assert client.ready() is True
    [request] = recorder.requests
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.extensions["timeout"] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    assert str(request.url) == f"{BASE}/readyz"


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_sends_no_authorization(token: str | None) -> None:
    recorder = Recorder(httpx.Response(200, json={"status": "ready"}))
    recorder.client(token=token).ready()
    assert "Authorization" not in recorder.requests[0].headers


def test_closed_client_sends_nothing() -> None:
    recorder = Recorder(httpx.Response(200, json={"status": "ready"}))
    with recorder.client() as client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        client.ready()
    assert recorder.requests == []


# Retries --------------------------------------------------------------------------------------

RETRYABLE = [
    pytest.param(httpx.ConnectError("connection refused"), id="connect-error"),
    pytest.param(httpx.ReadTimeout("timed out"), id="read-timeout"),
    pytest.param(httpx.ConnectTimeout("connect timed out"), id="connect-timeout"),
    pytest.param(httpx.RemoteProtocolError("server hung up"), id="protocol-error"),
    pytest.param(error(500, "boom"), id="500"),
    pytest.param(error(502, "bad gateway"), id="502"),
    pytest.param(error(503, "database down"), id="503"),
    pytest.param(httpx.Response(504, text="<html>gateway timeout</html>"), id="504-html"),
]


@pytest.mark.parametrize("failure", RETRYABLE)
def test_transient_failures_are_retried_with_exponential_backoff(
    failure: httpx.Response | Exception,
) -> None:
    recorder = Recorder(failure, failure, failure, httpx.Response(200, json=kernel()))
    fetched = recorder.client(retries=3, backoff=0.25).get_kernel(KERNEL_ID)
    assert fetched.id == KERNEL_ID
    assert len(recorder.requests) == 4
    assert recorder.sleeps == [0.25, 0.5, 1.0]


def test_exhausted_retries_on_5xx_raise_unavailable_with_the_detail() -> None:
    recorder = Recorder(error(503, "Urza's database is unavailable; retry later"))
    with pytest.raises(UrzaUnavailableError) as caught:
        recorder.client(retries=4, backoff=0.1).get_kernel(KERNEL_ID)
    message = str(caught.value)
    assert "Urza's database is unavailable; retry later" in message
    assert "HTTP 503" in message
    assert "after 5 attempt(s)" in message
    assert f"GET /v1/kernels/{KERNEL_ID}" in message
    assert caught.value.status == 503
    assert len(recorder.requests) == 5
    assert recorder.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8])


def test_exhausted_retries_on_connection_errors_raise_unavailable() -> None:
    recorder = Recorder(httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(UrzaUnavailableError, match="unreachable after 3 attempt") as caught:
        recorder.client(retries=2, backoff=1.0).list_blueprints()
    assert "Connection refused" in str(caught.value)
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert recorder.sleeps == [1.0, 2.0]


def test_no_retries_means_one_attempt() -> None:
    recorder = Recorder(error(500, "boom"))
    with pytest.raises(UrzaUnavailableError, match="boom"):
        recorder.client(retries=0).get_kernel(KERNEL_ID)
    assert len(recorder.requests) == 1
    assert recorder.sleeps == []


def test_a_5xx_then_a_4xx_stops_at_the_4xx() -> None:
    recorder = Recorder(error(502, "bad gateway"), error(409, "illegal transition"))
    with pytest.raises(UrzaConflictError, match="illegal transition"):
        recorder.client().change_phase(KERNEL_ID, PhaseChange(phase=KernelPhase.COMPILING))
    assert len(recorder.requests) == 2
    assert recorder.sleeps == [0.25]


def rate_limited(retry_after: str | None) -> httpx.Response:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return httpx.Response(
        429,
        json={"detail": "rate limit of 5 writes/s (burst 10) per client exceeded", "errors": []},
        headers=headers,
    )


def test_a_429_waits_its_retry_after_and_then_succeeds() -> None:
    recorder = Recorder(rate_limited("3"), rate_limited("1"), httpx.Response(200, json=kernel()))
    fetched = recorder.client(retries=3, backoff=0.25).get_kernel(KERNEL_ID)
    assert fetched.id == KERNEL_ID
    assert len(recorder.requests) == 3
    assert recorder.sleeps == [3.0, 1.0]


def test_a_429_retry_after_is_bounded() -> None:
    recorder = Recorder(rate_limited("3600"), httpx.Response(200, json=kernel()))
    recorder.client(max_retry_after=7.5).get_kernel(KERNEL_ID)
    assert recorder.sleeps == [7.5]


@pytest.mark.parametrize("retry_after", [None, "Wed, 21 Oct 2026 07:28:00 GMT", "-1"])
def test_a_429_without_seconds_in_retry_after_backs_off_as_usual(retry_after: str | None) -> None:
    recorder = Recorder(rate_limited(retry_after), rate_limited(retry_after), httpx.Response(200))
    recorder.client(backoff=0.5).delete_kernel(KERNEL_ID)
    assert recorder.sleeps == [0.5, 1.0]


def test_a_429_counts_against_the_same_retries_as_5xx() -> None:
    recorder = Recorder(error(503, "down"), rate_limited("2"), error(502, "bad gateway"))
    with pytest.raises(UrzaUnavailableError, match="bad gateway"):
        recorder.client(retries=2, backoff=0.25).get_kernel(KERNEL_ID)
    assert recorder.sleeps == [0.25, 2.0]


def test_exhausted_retries_on_429_raise_rate_limited_with_the_detail() -> None:
    recorder = Recorder(rate_limited("1"))
    with pytest.raises(UrzaRateLimitedError) as caught:
        recorder.client(retries=2).submit_blueprint(blueprint())
    message = str(caught.value)
    assert "POST /v1/blueprints: rate limited" in message
    assert "rate limit of 5 writes/s (burst 10) per client exceeded" in message
    assert "after 3 attempt(s)" in message
    assert caught.value.status == 429
    # Callers that already treat an unavailable Urza as transient treat this one alike.
    assert isinstance(caught.value, UrzaUnavailableError)
    assert recorder.sleeps == [1.0, 1.0]


def test_a_negative_max_retry_after_is_refused() -> None:
    with pytest.raises(ValueError, match="max_retry_after must be >= 0"):
        UrzaClient(BASE, max_retry_after=-1.0)


# Errors by status -----------------------------------------------------------------------------

ERRORS_BY_STATUS = [
    (400, UrzaRequestError),
    (401, UrzaAuthError),
    (403, UrzaAuthError),
    (404, UrzaNotFoundError),
    (409, UrzaConflictError),
    (413, UrzaRequestError),
    (422, UrzaRequestError),
]


@pytest.mark.parametrize(("status", "error_type"), ERRORS_BY_STATUS)
def test_4xx_raise_at_once_with_their_type_and_detail(
    status: int, error_type: type[UrzaError]
) -> None:
    recorder = Recorder(error(status, f"the server's reason for {status}"))
    with pytest.raises(error_type) as caught:
        recorder.client().get_kernel(KERNEL_ID)
    assert caught.value.status == status
    assert f"HTTP {status}: the server's reason for {status}" in str(caught.value)
    assert isinstance(caught.value, UrzaError)
    assert not isinstance(caught.value, UrzaUnavailableError)
    assert len(recorder.requests) == 1
    assert recorder.sleeps == []


@pytest.mark.parametrize("status", [405, 418])
def test_other_4xx_raise_the_base_error_without_retrying(status: int) -> None:
    recorder = Recorder(error(status, "nope"))
    with pytest.raises(UrzaError, match=f"HTTP {status}: nope") as caught:
        recorder.client().list_kernels()
    assert type(caught.value) is UrzaError
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(httpx.Response(404, text="not json"), id="text"),
        pytest.param(httpx.Response(422, json={"detail": [{"msg": "x"}]}), id="list-detail"),
        pytest.param(httpx.Response(409, json=["unexpected"]), id="list-body"),
    ],
)
def test_error_without_a_string_detail_still_names_the_status(response: httpx.Response) -> None:
    with pytest.raises(UrzaError) as caught:
        Recorder(response).client().get_kernel(KERNEL_ID)
    assert str(caught.value).endswith(f"HTTP {response.status_code}")


# Verified downloads ---------------------------------------------------------------------------


def _serve_kernel_and_bytes(payload: bytes, sha: str | None = BUNDLE_SHA) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/kernels/{KERNEL_ID}":
            phase = KernelPhase.COMPILED if sha is not None else KernelPhase.PENDING
            return httpx.Response(200, json=kernel(phase, sha=sha))
        if request.url.path == f"/v1/kernels/{KERNEL_ID}/artifact":
            return httpx.Response(
                200,
                content=payload,
                headers={
                    "X-Artifact-Sha256": BUNDLE_SHA,
                    "Content-Type": "application/octet-stream",
                },
            )
        return error(404, "unexpected path")

    return handle


def test_download_returns_verified_bytes() -> None:
    recorder = Recorder(_serve_kernel_and_bytes(BUNDLE))
    assert recorder.client().download_artifact(KERNEL_ID) == BUNDLE
    assert [r.url.path for r in recorder.requests] == [
        f"/v1/kernels/{KERNEL_ID}",
        f"/v1/kernels/{KERNEL_ID}/artifact",
    ]


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"tampered" + BUNDLE[8:], id="flipped"),
        pytest.param(BUNDLE[:-1], id="truncated"),
        pytest.param(b"", id="empty"),
    ],
)
def test_download_refuses_bytes_that_do_not_match(payload: bytes) -> None:
    # The server even claims the right digest in its header; only the bytes count.
    recorder = Recorder(_serve_kernel_and_bytes(payload))
    with pytest.raises(UrzaIntegrityError) as caught:
        recorder.client().download_artifact(KERNEL_ID)
    message = str(caught.value)
    assert f"expected {BUNDLE_SHA}" in message
    assert hashlib.sha256(payload).hexdigest() in message
    assert caught.value.status is None
    assert not isinstance(caught.value, UrzaUnavailableError)


def test_download_of_a_kernel_without_artifact_is_not_found_without_fetching() -> None:
    recorder = Recorder(_serve_kernel_and_bytes(BUNDLE, sha=None))
    with pytest.raises(UrzaNotFoundError, match="has no artifact yet") as caught:
        recorder.client().download_artifact(KERNEL_ID)
    assert caught.value.status == 404
    assert [r.url.path for r in recorder.requests] == [f"/v1/kernels/{KERNEL_ID}"]


# Requests on the wire -------------------------------------------------------------------------


def test_upload_declares_the_digest_and_sends_raw_bytes() -> None:
    def accept(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=kernel(KernelPhase.COMPILING))

    recorder = Recorder(accept)
    result = recorder.client().upload_artifact(KERNEL_ID, BUNDLE)
    assert result.sha256 == BUNDLE_SHA
    [request] = recorder.requests
    assert request.method == "PUT"
    assert request.url.path == f"/v1/kernels/{KERNEL_ID}/artifact"
    assert request.headers["X-Artifact-Sha256"] == BUNDLE_SHA
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.content == BUNDLE


def test_list_kernels_sends_only_the_given_filters_in_wire_form() -> None:
    recorder = Recorder(httpx.Response(200, json={"items": [], "nextCursor": None}))
    page = recorder.client().list_kernels(
        blueprint_hash=BLUEPRINT_HASH,
        target=TARGET,
        phase=KernelPhase.VALIDATED,
        max_latency_ms=1.5,
        limit=7,
    )
    assert page == KernelPage(items=[])
    params = dict(recorder.requests[0].url.params)
    assert params == {
        "blueprint": BLUEPRINT_HASH,
        "target": "cpu:fp32:C=64:b=1,32",
        "phase": "Validated",
        "maxLatencyMs": "1.5",
        "limit": "7",
    }


def test_list_blueprints_and_delete_send_their_query() -> None:
    recorder = Recorder(
        httpx.Response(200, json={"items": []}),
        httpx.Response(204),
        httpx.Response(204),
    )
    client = recorder.client()
    assert client.list_blueprints(tag="mlp", cursor="a" * 64) == BlueprintPage(items=[])
    client.delete_blueprint(BLUEPRINT_HASH)
    client.delete_blueprint(BLUEPRINT_HASH, cascade=True)
    first, plain, cascade = recorder.requests
    assert dict(first.url.params) == {"tag": "mlp", "limit": "50", "cursor": "a" * 64}
    assert (plain.method, dict(plain.url.params)) == ("DELETE", {"cascade": "false"})
    assert dict(cascade.url.params) == {"cascade": "true"}


def test_submit_blueprint_sends_the_wire_form_and_parses_the_record() -> None:
    ir = blueprint()
    record = BlueprintRecord(
        hash=ir.canonical_hash(), ir=ir, created_at=datetime(2025, 1, 1, tzinfo=UTC)
    )
    recorder = Recorder(httpx.Response(201, content=record.model_dump_json(by_alias=True)))
    assert recorder.client().submit_blueprint(ir) == record
    sent = json.loads(recorder.requests[0].content)
    assert sent == ir.model_dump(mode="json", by_alias=True)
    assert sent["nodes"][0]["params"]["outFeatures"] == "C"


def test_ready_is_false_while_urza_answers_503_or_is_unreachable() -> None:
    assert Recorder(error(503, "not ready: database")).client(retries=1).ready() is False
    assert Recorder(httpx.ConnectError("refused")).client(retries=0).ready() is False
    assert Recorder(httpx.Response(200, json={"status": "ready"})).client().ready() is True
