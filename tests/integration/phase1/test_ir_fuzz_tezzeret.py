"""Fuzzed blueprints through Urza's API and Tezzeret: a clear 422, or Compiled, or Failed with why.

The documents are valid random designs (the feature DAGs of
tests/unit/blueprints/test_properties.py, with their sizes) and mutated built-in blueprints (those
of tests/unit/blueprints/test_ir_fuzz.py: a field dropped or replaced, an op renamed, an input
rewired). Each one is POSTed as JSON to a
real Urza over HTTP, a kernel is registered for a CPU target that binds its symbols, and
Tezzeret's ``compile_and_publish`` compiles it with torch. The property, per document:

- Urza refuses it with 422 and a detail that names what is wrong, and stores nothing; or
- the kernel ends Compiled with a bundle whose digest Urza recorded; or
- the kernel ends Failed with the error's type and message recorded, and the same error reached
  the caller (the worker never leaves a kernel Compiling, and never fails without a reason).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from esper.blueprints.signing import Keyring
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import DeviceKind, KernelPhase, KernelTarget
from esper.contracts.urza_api import KernelCreate
from esper.tezzeret.compiler import CompileOptions
from esper.tezzeret.worker import compile_and_publish
from tests.integration.phase1.support import RunningUrza, embedded_settings, serving
from tests.support.reliability import note_inputs
from tests.unit.blueprints.test_ir_fuzz import mutated_documents
from tests.unit.blueprints.test_properties import feature_dags

pytestmark = [pytest.mark.timeout(900), pytest.mark.reliability("ir-fuzz")]

KEYRING = Keyring({"fuzz": b"f" * 32}, "fuzz", "the test's key")


@pytest.fixture(scope="module")
def fuzz_urza(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUrza]:
    root: Path = tmp_path_factory.mktemp("ir-fuzz")
    with serving(embedded_settings(root)) as running:
        yield running


Case = tuple[dict[str, Any], dict[str, int] | None]
"""A blueprint document, and the sizes to bind its symbols to (None: 8 for each)."""


def _cases() -> st.SearchStrategy[Case]:
    """Valid designs (random feature DAGs with their sizes) and mutated built-in ones."""
    valid = feature_dags().map(
        lambda case: (case[0].model_dump(mode="json", by_alias=True), case[1])
    )
    mutated = mutated_documents().map(lambda case: (case[0], None))
    return st.one_of(valid, mutated)


def _target(document: dict[str, Any], bindings: dict[str, int] | None) -> KernelTarget:
    ir = BlueprintIR.model_validate(copy.deepcopy(document))
    sizes = dict.fromkeys(ir.symbols(), 8) if bindings is None else bindings
    return KernelTarget(device=DeviceKind.CPU, bindings=sizes, batch_sizes=[2])


def _stored_blueprints(urza: RunningUrza) -> int:
    with urza.service.engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM blueprints")).scalar_one())


def _outcome(urza: RunningUrza, case: Case) -> str:
    """Send one document through Urza and Tezzeret; check the property; name how it ended."""
    document, bindings = case
    client = urza.client(retries=0)
    before = _stored_blueprints(urza)
    response = httpx.post(f"{urza.url}/v1/blueprints", json=document, timeout=30)
    if response.status_code == 422:
        assert response.json()["detail"], response.text
        assert _stored_blueprints(urza) == before, "a refused blueprint was stored"
        return "refused"
    assert response.status_code in (200, 201), response.text
    blueprint_hash = response.json()["hash"]
    target = _target(document, bindings)
    request = KernelCreate(blueprint_hash=blueprint_hash, target=target)
    registered = httpx.post(
        f"{urza.url}/v1/kernels", json=request.model_dump(mode="json", by_alias=True), timeout=30
    )
    if registered.status_code == 422:
        # Shape inference for the target's sizes refuses it at registration, naming the node.
        assert registered.json()["detail"], registered.text
        return "refused"
    assert registered.status_code in (200, 201), registered.text

    error: Exception | None = None
    try:
        compile_and_publish(
            client,
            blueprint_hash,
            target,
            worker="fuzz",
            keyring=KEYRING,
            options=CompileOptions(compile_cache=False),
        )
    except Exception as raised:  # noqa: BLE001 - the property covers any error the worker raises
        error = raised
    kernel = client.get_kernel(registered.json()["id"])
    if error is None:
        assert kernel.phase is KernelPhase.COMPILED, kernel
        assert kernel.sha256 is not None
        return "compiled"
    assert kernel.phase is KernelPhase.FAILED, (kernel, error)
    assert kernel.error is not None
    assert kernel.error.startswith(f"{type(error).__name__}: "), (kernel.error, error)
    assert kernel.sha256 is None
    return "failed"


def test_fuzzed_blueprints_are_refused_compiled_or_failed_with_the_reason(
    fuzz_urza: RunningUrza,
) -> None:
    outcomes = {"refused": 0, "compiled": 0, "failed": 0}

    @settings(
        max_examples=200,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(case=_cases())
    def property_holds(case: Case) -> None:
        note_inputs()
        outcomes[_outcome(fuzz_urza, case)] += 1

    property_holds()
    print(f"outcomes of {sum(outcomes.values())} documents: {outcomes}")
    # Some documents must be refused and some compiled, or the property proved nothing about
    # that side.
    assert outcomes["refused"] > 0, outcomes
    assert outcomes["compiled"] > 0, outcomes
