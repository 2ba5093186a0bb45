"""/healthz, /readyz, /metrics and /openapi.json of a real Urza."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from prometheus_client.parser import text_string_to_metric_families

from esper import __version__
from esper.contracts.events import BlueprintSubmitted, Event, KernelPhaseChanged, Topic
from esper.contracts.kernel import KernelPhase
from esper.contracts.urza_api import CompileRecord, PhaseChange
from esper.urza.api.routes_blueprints import router as blueprint_router
from esper.urza.api.routes_kernels import router as kernel_router
from esper.urza.client import UrzaConflictError, UrzaNotFoundError

from .conftest import sqlite_local_settings
from .support import MEASURED_AT, RunningUrza, blueprint, bundle, cpu_target, report

pytestmark = pytest.mark.timeout(120)

EVERY_OPERATION = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("post", "/v1/blueprints"),
    ("get", "/v1/blueprints"),
    ("get", "/v1/blueprints/{blueprint_hash}"),
    ("delete", "/v1/blueprints/{blueprint_hash}"),
    ("post", "/v1/kernels"),
    ("get", "/v1/kernels"),
    ("get", "/v1/kernels/{kernel_id}"),
    ("delete", "/v1/kernels/{kernel_id}"),
    ("post", "/v1/kernels/{kernel_id}/phase"),
    ("put", "/v1/kernels/{kernel_id}/artifact"),
    ("get", "/v1/kernels/{kernel_id}/artifact"),
    ("get", "/v1/kernels/{kernel_id}/artifact-link"),
    ("post", "/v1/kernels/{kernel_id}/report"),
    ("post", "/v1/kernels/{kernel_id}/compile-records"),
    ("get", "/v1/kernels/{kernel_id}/compile-records"),
}


def test_health_and_readiness(urza: RunningUrza) -> None:
    http = urza.http(authorised=False)
    health = http.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = http.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert urza.client().ready() is True


def _operations(document: dict) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    }


def test_openapi_document_lists_every_route(local_urza: RunningUrza) -> None:
    response = local_urza.http(authorised=False).get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["info"]["title"] == "Urza"
    assert document["info"]["version"] == __version__

    # The app's own routes and those of the routers it includes.
    routes = [*local_urza.service.app.routes, *blueprint_router.routes, *kernel_router.routes]
    served = {
        (method.lower(), route.path)
        for route in routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods
    }
    assert _operations(document) == served == EVERY_OPERATION

    # Every error is an ErrorBody, and the document says so for every /v1 operation.
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not path.startswith("/v1"):
                continue
            for status in ("401", "404", "422", "503"):
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)
    upload = document["paths"]["/v1/kernels/{kernel_id}/artifact"]["put"]
    assert "application/octet-stream" in upload["requestBody"]["content"]
    assert "413" in upload["responses"]
    headers = {p["name"] for p in upload["parameters"] if p["in"] == "header"}
    assert "X-Artifact-Sha256" in headers


def test_every_request_of_the_client_is_in_the_openapi_document(local_urza: RunningUrza) -> None:
    document = local_urza.http().get("/openapi.json").json()
    templates = [
        (method, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"))
        for method, path in _operations(document)
    ]
    client, transport = local_urza.recording_client()
    record = client.submit_blueprint(blueprint())
    client.get_blueprint(record.hash)
    client.list_blueprints(name="residual-mlp", tag="mlp", limit=5)
    kernel = client.create_kernel(record.hash, cpu_target(), tags=["t"])
    client.get_kernel(kernel.id)
    client.list_kernels(
        blueprint_hash=record.hash,
        target=cpu_target(),
        phase=KernelPhase.PENDING,
        device="cpu",
        tag="t",
        max_latency_ms=5.0,
        limit=10,
    )
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    data = bundle("contract")
    client.upload_artifact(kernel.id, data)
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILED))
    client.download_artifact(kernel.id)
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.VALIDATING))
    client.attach_report(kernel.id, report(kernel.id))
    client.add_compile_record(
        CompileRecord(
            kernel_id=kernel.id,
            worker="w",
            started_at=MEASURED_AT,
            finished_at=MEASURED_AT,
            succeeded=True,
            torch_version="2.11.0",
        )
    )
    client.compile_records(kernel.id)
    with pytest.raises(UrzaConflictError, match="no direct URLs"):
        client.artifact_link(kernel.id)
    client.ready()
    client.delete_kernel(kernel.id)
    client.delete_blueprint(record.hash, cascade=True)

    used = {(method.lower(), path) for method, path, _status in transport.statuses}
    assert len(used) >= 15
    for method, path in used:
        assert any(
            method == known and pattern.match(path) for known, pattern in templates
        ), f"{method.upper()} {path} is not in the OpenAPI document"


def test_metrics_count_requests_by_route_template(local_urza: RunningUrza) -> None:
    client = local_urza.client()
    record = client.submit_blueprint(blueprint())
    kernel = client.create_kernel(record.hash, cpu_target())
    client.get_kernel(kernel.id)
    client.get_kernel(kernel.id)
    missing = "k-" + "9" * 24
    with pytest.raises(UrzaNotFoundError):
        client.get_kernel(missing)
    http = local_urza.http()
    assert http.get("/no/such/route").status_code == 404

    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert kernel.id not in body
    assert missing not in body
    assert record.hash not in body

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }

    def requests(method: str, route: str, status: str) -> float:
        labels = (("method", method), ("route", route), ("status", status))
        return samples.get(("urza_http_requests_total", labels), 0.0)

    assert requests("GET", "/v1/kernels/{kernel_id}", "200") == 2
    assert requests("GET", "/v1/kernels/{kernel_id}", "404") == 1
    assert requests("POST", "/v1/blueprints", "201") == 1
    assert requests("POST", "/v1/kernels", "201") == 1
    assert requests("GET", "unmatched", "404") == 1
    routes = {
        dict(labels)["route"] for name, labels in samples if name == "urza_http_requests_total"
    }
    assert routes <= {route for _method, route in EVERY_OPERATION} | {"unmatched"}
    latency = [
        value
        for (name, labels), value in samples.items()
        if name == "urza_http_request_duration_seconds_count"
        and dict(labels)["route"] == "/v1/kernels/{kernel_id}"
    ]
    assert latency == [3]
    assert samples[("urza_build_info", (("version", __version__),))] == 1


def test_writes_are_announced_as_events(
    start_urza: Callable[..., RunningUrza], tmp_path: Path
) -> None:
    events: list[Event] = []
    urza = start_urza(sqlite_local_settings(tmp_path), "sqlite-local", events.append)
    client = urza.client()
    record = client.submit_blueprint(blueprint())
    client.submit_blueprint(blueprint())  # a retried submission is announced again
    kernel = client.create_kernel(record.hash, cpu_target())
    client.create_kernel(record.hash, cpu_target())  # not new: no event
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    client.upload_artifact(kernel.id, bundle("events"))
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILED))
    client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.VALIDATING))
    client.attach_report(kernel.id, report(kernel.id))
    with pytest.raises(UrzaConflictError):
        client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))

    assert [event.topic for event in events] == [Topic.BLUEPRINT_SUBMITTED] * 2 + [
        Topic.KERNEL_PHASE_CHANGED
    ] * 5
    assert all(event.source == "urza" for event in events)
    submitted = events[0].payload
    assert isinstance(submitted, BlueprintSubmitted)
    assert (submitted.blueprint_hash, submitted.name) == (record.hash, "residual-mlp")
    phases = [event.payload.phase for event in events[2:]]  # type: ignore[union-attr]
    assert phases == [
        KernelPhase.PENDING,
        KernelPhase.COMPILING,
        KernelPhase.COMPILED,
        KernelPhase.VALIDATING,
        KernelPhase.VALIDATED,
    ]
    changed = events[-1].payload
    assert isinstance(changed, KernelPhaseChanged)
    assert (changed.kernel_id, changed.blueprint_hash, changed.target) == (
        kernel.id,
        record.hash,
        cpu_target(),
    )
    assert len({event.id for event in events}) == len(events)
