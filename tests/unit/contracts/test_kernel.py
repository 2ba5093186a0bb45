"""Kernel contracts: targets and their short form, kernel ids, benchmark reports, artifacts."""

import json
import math
import re
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from esper.contracts import (
    BenchmarkReport,
    KernelArtifact,
    KernelPhase,
    KernelTarget,
    LatencyMeasurement,
    kernel_id,
)
from esper.contracts.kernel import DEFAULT_BATCH_SIZES, PHASES_WITH_ARTIFACT
from esper.contracts.types import MAX_DIM

from .samples import (
    ARTIFACT_FIELDS,
    BLUEPRINT_HASH,
    FAST,
    OTHER_HASH,
    benchmark_report,
    cpu_target,
    cuda_target,
    kernel_artifact,
    latency,
)

GRAMMAR = "DEVICE[@CC]:DTYPE[:SYM=N,...][:b=N,...]"

# ---------------------------------------------------------------- KernelTarget


def test_target_defaults() -> None:
    target = KernelTarget(device="cpu")
    assert target.dtype == "fp32"
    assert target.bindings == {}
    assert tuple(target.batch_sizes) == DEFAULT_BATCH_SIZES
    assert target.compute_capability is None


def test_cuda_needs_a_compute_capability() -> None:
    with pytest.raises(ValidationError, match="a cuda target needs computeCapability"):
        KernelTarget(device="cuda")
    assert KernelTarget(device="cuda", compute_capability="9.0").compute_capability == "9.0"


def test_cpu_forbids_a_compute_capability() -> None:
    with pytest.raises(ValidationError, match="a cpu target takes no computeCapability"):
        KernelTarget(device="cpu", compute_capability="9.0")


@pytest.mark.parametrize("capability", ["9", "9.00", "v9.0", "123.0", "9.x", ""])
def test_compute_capability_pattern(capability: str) -> None:
    with pytest.raises(ValidationError, match=r"compute_?[cC]apability"):
        KernelTarget(device="cuda", compute_capability=capability)


@pytest.mark.parametrize("batch_sizes", [[32, 1], [1, 1], [1, 256, 32], [8, 8, 16]], ids=str)
def test_batch_sizes_must_be_ascending_and_unique(batch_sizes: list[int]) -> None:
    with pytest.raises(ValidationError, match="batchSizes must be ascending and unique"):
        KernelTarget(device="cpu", batch_sizes=batch_sizes)


@pytest.mark.parametrize(
    "batch_sizes", [[], [0], [MAX_DIM + 1], list(range(1, 18))], ids=["empty", "zero", "huge", "17"]
)
def test_batch_sizes_are_bounded(batch_sizes: list[int]) -> None:
    with pytest.raises(ValidationError, match=r"batch_?[sS]izes"):
        KernelTarget(device="cpu", batch_sizes=batch_sizes)


@pytest.mark.parametrize(
    "bindings", [{"c": 4}, {"C": 0}, {"C": MAX_DIM + 1}, {f"S{i}": 1 for i in range(17)}]
)
def test_bindings_are_bounded(bindings: dict[str, int]) -> None:
    with pytest.raises(ValidationError, match="bindings"):
        KernelTarget(device="cpu", bindings=bindings)


def test_canonical_json_is_sorted_compact_and_complete() -> None:
    target = KernelTarget(device="cpu", bindings={"W": 8, "C": 64})
    text = target.canonical_json()
    assert text == (
        '{"batchSizes":[1,32,256],"bindings":{"C":64,"W":8},"computeCapability":null,'
        '"device":"cpu","dtype":"fp32"}'
    )
    assert KernelTarget.model_validate(json.loads(text)) == target


SHORT_FORMS: list[tuple[str, KernelTarget, str]] = [
    ("cpu:fp32", KernelTarget(device="cpu"), "cpu:fp32"),
    ("cpu:fp32:C=256", KernelTarget(device="cpu", bindings={"C": 256}), "cpu:fp32:C=256"),
    (
        "cuda@9.0:bf16:H=8,C=256:b=1,32",
        KernelTarget(
            device="cuda",
            compute_capability="9.0",
            dtype="bf16",
            bindings={"C": 256, "H": 8},
            batch_sizes=[1, 32],
        ),
        "cuda@9.0:bf16:C=256,H=8:b=1,32",
    ),
    (
        "cuda@10.0:fp16:b=64",
        KernelTarget(device="cuda", compute_capability="10.0", dtype="fp16", batch_sizes=[64]),
        "cuda@10.0:fp16:b=64",
    ),
    ("  cpu:bf16:b=1,32,256  ", KernelTarget(device="cpu", dtype="bf16"), "cpu:bf16"),
    (
        "cpu:fp32:SEQ_LEN=007",
        KernelTarget(device="cpu", bindings={"SEQ_LEN": 7}),
        "cpu:fp32:SEQ_LEN=7",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected", "short"), SHORT_FORMS, ids=[s[0] for s in SHORT_FORMS]
)
def test_short_form_examples(text: str, expected: KernelTarget, short: str) -> None:
    parsed = KernelTarget.parse(text)
    assert parsed == expected
    assert parsed.short() == short
    assert KernelTarget.parse(short) == expected


SYMBOLS = st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True)
SIZES = st.integers(1, MAX_DIM)


@st.composite
def targets(draw: st.DrawFn) -> KernelTarget:
    device = draw(st.sampled_from(["cpu", "cuda"]))
    capability = (
        draw(st.from_regex(r"[0-9]{1,2}\.[0-9]", fullmatch=True)) if device == "cuda" else None
    )
    return KernelTarget(
        device=device,
        compute_capability=capability,
        dtype=draw(st.sampled_from(["fp32", "bf16", "fp16"])),
        bindings=draw(st.dictionaries(SYMBOLS, SIZES, max_size=4)),
        batch_sizes=sorted(draw(st.sets(SIZES, min_size=1, max_size=5))),
    )


@FAST
@given(target=targets())
def test_short_form_round_trips(target: KernelTarget) -> None:
    short = target.short()
    assert KernelTarget.parse(short) == target
    assert KernelTarget.parse(short).short() == short
    assert KernelTarget.model_validate_json(target.to_json()) == target


@FAST
@given(target=targets())
def test_short_form_omits_only_the_default_batch_sizes(target: KernelTarget) -> None:
    assert (":b=" in target.short()) == (tuple(target.batch_sizes) != DEFAULT_BATCH_SIZES)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cpu",
        "gpu:fp32",
        "cpu:fp64",
        "CPU:fp32",
        "cpu:fp32:c=256",
        "cpu:fp32:C=",
        "cpu:fp32:C=-1",
        "cpu:fp32:C=1.5",
        "cpu:fp32:b=",
        "cpu:fp32:b=1,",
        "cpu:fp32:b=1:C=2",
        "cuda@9:fp32",
        "cuda@:fp32",
        "cpu:fp32:C=256:extra",
        "cpu;fp32",
    ],
)
def test_invalid_short_forms_show_the_grammar(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(GRAMMAR)) as caught:
        KernelTarget.parse(text)
    assert f"'{text}'" in str(caught.value)
    assert "cpu:fp32:C=256" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu:fp32:C=1,C=2", "symbol C bound twice"),
        ("cuda:fp32", "a cuda target needs computeCapability"),
        ("cpu@9.0:fp32", "a cpu target takes no computeCapability"),
        ("cpu:fp32:b=32,1", "batchSizes must be ascending and unique"),
        ("cpu:fp32:C=0", "bindings"),
        ("cpu:fp32:b=0", "batch_sizes"),
    ],
)
def test_well_formed_but_invalid_short_forms_are_rejected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        KernelTarget.parse(text)


# ---------------------------------------------------------------- kernel ids


def test_kernel_id_format_and_determinism() -> None:
    first = kernel_id(BLUEPRINT_HASH, cpu_target())
    assert re.fullmatch(r"k-[0-9a-f]{24}", first)
    assert kernel_id(BLUEPRINT_HASH, cpu_target()) == first
    assert kernel_id(BLUEPRINT_HASH, KernelTarget.parse(cpu_target().short())) == first


def test_kernel_id_ignores_binding_order() -> None:
    one = KernelTarget(device="cpu", bindings={"C": 1, "H": 2})
    two = KernelTarget(device="cpu", bindings={"H": 2, "C": 1})
    assert kernel_id(BLUEPRINT_HASH, one) == kernel_id(BLUEPRINT_HASH, two)


def _cpu(**changes: Any) -> KernelTarget:
    return KernelTarget.model_validate(cpu_target().model_dump(by_alias=False) | changes)


def test_kernel_id_depends_on_blueprint_and_target() -> None:
    ids = {
        kernel_id(BLUEPRINT_HASH, cpu_target()),
        kernel_id(OTHER_HASH, cpu_target()),
        kernel_id(BLUEPRINT_HASH, cuda_target()),
        kernel_id(BLUEPRINT_HASH, _cpu(dtype="bf16")),
        kernel_id(BLUEPRINT_HASH, _cpu(batch_sizes=[1])),
        kernel_id(BLUEPRINT_HASH, _cpu(bindings={"C": 65})),
        kernel_id(BLUEPRINT_HASH, _cpu(bindings={"C": 64, "H": 1})),
    }
    assert len(ids) == 7


@FAST
@given(first=targets(), second=targets())
def test_kernel_ids_differ_across_targets(first: KernelTarget, second: KernelTarget) -> None:
    assume(first != second)
    assert kernel_id(BLUEPRINT_HASH, first) != kernel_id(BLUEPRINT_HASH, second)
    assert kernel_id(BLUEPRINT_HASH, first) == kernel_id(
        BLUEPRINT_HASH, KernelTarget.parse(first.short())
    )


# ---------------------------------------------------------------- latency and reports


def test_latency_p95_must_not_be_below_p50() -> None:
    assert latency(1, 1.0, 1.0).p95_ms == 1.0
    with pytest.raises(ValidationError, match=r"p95Ms \(0.5\) is below p50Ms \(1.0\)"):
        LatencyMeasurement(batch_size=1, p50_ms=1.0, p95_ms=0.5)


@pytest.mark.parametrize(
    "changes",
    [{"p50Ms": -1.0}, {"p95Ms": math.inf}, {"p50Ms": math.nan}, {"batchSize": 0}],
    ids=str,
)
def test_latency_bounds(changes: dict[str, Any]) -> None:
    document = {"batchSize": 1, "p50Ms": 1.0, "p95Ms": 2.0} | changes
    with pytest.raises(ValidationError):
        LatencyMeasurement.model_validate(document)


def test_report_helpers() -> None:
    report = benchmark_report()
    assert report.p50_ms_at_largest_batch() == 2.0
    assert benchmark_report(verdict="Rejected").reasons == ["slower than eager"]


def test_rejected_report_needs_a_reason() -> None:
    with pytest.raises(ValidationError, match="a Rejected report must give at least one reason"):
        benchmark_report(verdict="Rejected", reasons=[])


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"reasons": ["too slow"]}, "it lists rejection reasons"),
        ({"max_abs_error": 0.5}, "maxAbsError 0.5 exceeds tolerance 0.0001"),
        ({"gradients_finite": False}, "its gradients are not finite"),
        ({"function_preserving": False}, "it is not function-preserving"),
    ],
)
def test_validated_report_must_be_consistent(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match="a Validated report is inconsistent: ") as caught:
        benchmark_report(**changes)
    assert problem in str(caught.value)
    # A rejected report may say all of this.
    assert benchmark_report(verdict="Rejected", **({"reasons": ["x"]} | changes)).verdict


def test_validated_report_lists_every_problem() -> None:
    with pytest.raises(ValidationError) as caught:
        benchmark_report(gradients_finite=False, function_preserving=False, max_abs_error=1.0)
    assert str(caught.value).count("; ") >= 2


def test_error_equal_to_tolerance_is_accepted() -> None:
    assert benchmark_report(max_abs_error=1e-4, tolerance=1e-4).verdict == "Validated"


@pytest.mark.parametrize("sizes", [[32, 1], [1, 1]], ids=str)
def test_report_latency_batch_sizes_ascending_unique(sizes: list[int]) -> None:
    with pytest.raises(ValidationError, match="latency batch sizes must be ascending and unique"):
        benchmark_report(latency=[latency(size) for size in sizes])


@pytest.mark.parametrize("field", ["latency", "kernel_id", "verdict", "measured_at"])
def test_report_required_fields(field: str) -> None:
    document = benchmark_report().model_dump(by_alias=False)
    del document[field]
    with pytest.raises(ValidationError, match="Field required"):
        BenchmarkReport.model_validate(document)


def test_report_rejects_an_empty_latency_list_and_bad_kernel_id() -> None:
    with pytest.raises(ValidationError, match="latency"):
        benchmark_report(latency=[])
    with pytest.raises(ValidationError, match="kernel_id"):
        benchmark_report(kernel_id="k-XYZ")


# ---------------------------------------------------------------- artifacts


@pytest.mark.parametrize("phase", list(KernelPhase), ids=str)
def test_a_consistent_artifact_in_every_phase(phase: KernelPhase) -> None:
    artifact = kernel_artifact(phase)
    assert artifact.phase is phase
    assert KernelArtifact.model_validate_json(artifact.to_json()) == artifact


def test_artifact_id_must_match_blueprint_and_target() -> None:
    with pytest.raises(ValidationError, match="does not match blueprint and target") as caught:
        kernel_artifact(KernelPhase.PENDING, id=kernel_id(OTHER_HASH, cpu_target()))
    assert kernel_id(BLUEPRINT_HASH, cpu_target()) in str(caught.value)
    with pytest.raises(ValidationError, match="does not match blueprint and target"):
        kernel_artifact(KernelPhase.PENDING, blueprint_hash=OTHER_HASH)


@pytest.mark.parametrize("phase", sorted(PHASES_WITH_ARTIFACT), ids=str)
@pytest.mark.parametrize(
    ("field", "alias"),
    [("artifact_uri", "artifactUri"), ("sha256", "sha256"), ("size_bytes", "sizeBytes")],
)
def test_phases_with_an_artifact_need_its_fields(
    phase: KernelPhase, field: str, alias: str
) -> None:
    with pytest.raises(ValidationError, match=f"a {phase.value} kernel needs .*{alias}"):
        kernel_artifact(phase, **{field: None})


def test_missing_artifact_fields_are_all_named() -> None:
    document = kernel_artifact(KernelPhase.COMPILING).model_dump(by_alias=False)
    with pytest.raises(
        ValidationError, match="a Compiled kernel needs artifactUri, sha256, sizeBytes"
    ):
        KernelArtifact.model_validate(document | {"phase": "Compiled"})


@pytest.mark.parametrize(
    "phase", [p for p in KernelPhase if p not in PHASES_WITH_ARTIFACT], ids=str
)
def test_phases_without_an_artifact_need_no_fields(phase: KernelPhase) -> None:
    artifact = kernel_artifact(phase)
    assert artifact.artifact_uri is None
    assert artifact.sha256 is None


@pytest.mark.parametrize("error", [None, ""])
def test_failed_kernel_needs_its_error(error: str | None) -> None:
    with pytest.raises(ValidationError, match="a Failed kernel must record its error"):
        kernel_artifact(KernelPhase.FAILED, error=error)


@pytest.mark.parametrize("phase", [KernelPhase.VALIDATED, KernelPhase.REJECTED], ids=str)
def test_judged_kernel_needs_its_report(phase: KernelPhase) -> None:
    with pytest.raises(ValidationError, match=f"a {phase.value} kernel needs its benchmark report"):
        kernel_artifact(phase, benchmark=None)


@pytest.mark.parametrize(
    ("phase", "verdict"),
    [(KernelPhase.VALIDATED, "Rejected"), (KernelPhase.REJECTED, "Validated")],
    ids=str,
)
def test_phase_must_agree_with_the_verdict(phase: KernelPhase, verdict: str) -> None:
    with pytest.raises(ValidationError, match=f"phase {phase.value} disagrees with the report's"):
        kernel_artifact(phase, benchmark=benchmark_report(verdict=verdict))


def test_report_must_be_for_this_kernel() -> None:
    foreign = benchmark_report(cuda_target())
    with pytest.raises(
        ValidationError, match=f"benchmark report is for kernel '{foreign.kernel_id}'"
    ):
        kernel_artifact(KernelPhase.VALIDATED, benchmark=foreign)
    with pytest.raises(ValidationError, match="benchmark report is for kernel"):
        kernel_artifact(KernelPhase.COMPILED, benchmark=foreign)


def test_artifact_fields_are_bounded() -> None:
    document = json.loads(kernel_artifact(KernelPhase.COMPILED).to_json())
    for alias, value in (("sha256", "ABC"), ("sizeBytes", -1), ("compileSeconds", math.inf)):
        with pytest.raises(ValidationError, match=alias):
            KernelArtifact.model_validate(document | {alias: value})


def test_artifact_sample_fields_are_used() -> None:
    artifact = kernel_artifact(KernelPhase.COMPILED)
    for name, value in ARTIFACT_FIELDS.items():
        assert getattr(artifact, name) == value
