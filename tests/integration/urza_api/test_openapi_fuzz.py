"""Property-based run of Urza's whole OpenAPI surface (schemathesis) against a real server.

The server is the embedded default (SQLite + local directory) with a bearer token; every request
carries the token, so the fuzzing reaches the handlers rather than stopping at 401. A few real
records are registered first, so reads of them and moves along the phase table happen too.
Generation is seeded and derandomised, so a run is repeatable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from esper.contracts.kernel import KernelPhase
from esper.contracts.urza_api import PhaseChange
from esper.urza.api.app import create_app
from esper.urza.api.options import ApiOptions
from tests.support.reliability import note_inputs

from .conftest import serving, sqlite_local_settings
from .support import RunningUrza, blueprint, bundle, cpu_target

pytestmark = [pytest.mark.timeout(300), pytest.mark.reliability("urza-openapi-fuzz")]

TOKEN = "fuzz-token-5b0c1e"
SEED = 20_251_126
MAX_EXAMPLES = 25


def error_has_a_detail(_ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx answer carries a non-empty one-line ``detail`` string."""
    if not 400 <= response.status_code < 500:
        return
    try:
        body = response.json()
    except ValueError as error:
        raise AssertionError(
            f"{case.method} {case.formatted_path} answered {response.status_code} without a JSON "
            f"body: {response.text[:200]!r}"
        ) from error
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str) or not detail.strip():
        raise AssertionError(
            f"{case.method} {case.formatted_path} answered {response.status_code} without a "
            f"useful detail: {response.text[:200]!r}"
        )


CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    error_has_a_detail,
]


def _seed_records(urza: RunningUrza) -> None:
    client = urza.client()
    record = client.submit_blueprint(blueprint())
    pending = client.create_kernel(record.hash, cpu_target(64), tags=["fuzz"])
    compiled = client.create_kernel(record.hash, cpu_target(128))
    client.change_phase(compiled.id, PhaseChange(phase=KernelPhase.COMPILING))
    client.upload_artifact(compiled.id, bundle("fuzz"))
    client.change_phase(compiled.id, PhaseChange(phase=KernelPhase.COMPILED))
    del pending


def _document() -> dict[str, Any]:
    # The app's document is built without storage; the test checks the real server serves
    # exactly this document before fuzzing it. (schemathesis' lazy ``from_fixture`` loader
    # does not work with pytest 9, so the operations are parametrised eagerly from it.)
    options = ApiOptions(token=TOKEN, writes_open=False)
    return create_app(repository=None, options=options).openapi()  # type: ignore[arg-type]


DOCUMENT = _document()
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES},
        "phases": {"stateful": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module")
def fuzz_urza(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUrza]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    # Fuzzing sends hundreds of writes from one address in seconds; the rate limit is not what
    # it tests, so it is off here explicitly (tests/integration/urza_api/test_limits.py has it).
    settings = sqlite_local_settings(root, auth_token=TOKEN, rate_limit_per_second=0)
    with serving(settings, "sqlite-local") as running:
        _seed_records(running)
        served = running.http(authorised=False).get("/openapi.json")
        assert served.status_code == 200
        assert served.json() == DOCUMENT, "the server must serve the document being fuzzed"
        yield running


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_whole_api_surface(case: schemathesis.Case, fuzz_urza: RunningUrza) -> None:
    note_inputs()
    case.call_and_validate(
        base_url=fuzz_urza.url,
        checks=CHECKS,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
