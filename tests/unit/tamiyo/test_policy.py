"""The policy interface's helpers: deterministic decision ids and a candidate's latency."""

import re

from esper.contracts.kernel import KernelPhase
from esper.tamiyo.policy import KernelCandidate, decision_id
from tests.unit.contracts import samples


def test_decision_id_is_deterministic_and_well_formed() -> None:
    first = decision_id("run-1", 40, "layer1.0", "germinate")
    assert first == decision_id("run-1", 40, "layer1.0", "germinate")
    assert re.fullmatch(r"d-[0-9a-f]{32}", first)


def test_decision_id_differs_in_every_component() -> None:
    ids = {
        decision_id("run-1", 40, "layer1.0", "germinate"),
        decision_id("run-2", 40, "layer1.0", "germinate"),
        decision_id("run-1", 41, "layer1.0", "germinate"),
        decision_id("run-1", 40, "layer2.0", "germinate"),
        decision_id("run-1", 40, "layer1.0", "cull"),
    }
    assert len(ids) == 5


def test_latency_is_the_p50_at_the_largest_batch() -> None:
    candidate = KernelCandidate(
        kernel=samples.kernel_artifact(), blueprint_name="residual-mlp", params=10
    )
    # The sample report measures batches 1, 32 and 256; 256's p50 is 2.0 ms.
    assert candidate.latency_ms() == 2.0


def test_latency_of_an_unbenchmarked_kernel_is_infinite() -> None:
    candidate = KernelCandidate(
        kernel=samples.kernel_artifact(KernelPhase.COMPILED), blueprint_name="x", params=10
    )
    assert candidate.latency_ms() == float("inf")
