"""Deterministic names and labels of the objects the operator creates."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_operator import OPERATOR_NAME, names

from .factories import BLUEPRINT_HASH, CPU_TARGET, CUDA_TARGET, OTHER_HASH, is_dns_label

TARGET_NAMERS = [names.kernel_artifact_name, names.compile_job_name, names.benchmark_job_name]
RUN_NAMERS = [names.training_job_name, names.run_spec_config_map_name]
ODD_NAMES = [
    "residual-mlp",
    "a",
    "x" * 253,
    "my.blueprint.v2",
    "-leading-and-trailing-",
    "UPPER_case_and spaces",
    "...",
    "0123456789",
    "ünïcödé-blueprint",
    "a" * 50 + "-" + "b" * 50,
]


@pytest.mark.parametrize("namer", TARGET_NAMERS)
def test_target_names_are_deterministic_and_distinct(namer) -> None:
    first = namer("residual-mlp", BLUEPRINT_HASH, CPU_TARGET)
    assert first == namer("residual-mlp", BLUEPRINT_HASH, CPU_TARGET)
    assert first != namer("residual-mlp", BLUEPRINT_HASH, CUDA_TARGET)
    assert first != namer("residual-mlp", OTHER_HASH, CPU_TARGET)
    assert first != namer("residual-mlp-2", BLUEPRINT_HASH, CPU_TARGET)
    assert first.startswith(("ka-residual-mlp-", "compile-residual-mlp-", "bench-residual-mlp-"))


def test_the_three_target_names_differ_for_one_kernel() -> None:
    made = {namer("bp", BLUEPRINT_HASH, CPU_TARGET) for namer in TARGET_NAMERS}
    assert len(made) == 3


@pytest.mark.parametrize("namer", RUN_NAMERS)
def test_run_names_depend_on_name_and_uid(namer) -> None:
    first = namer("tiny", "uid-1")
    assert first == namer("tiny", "uid-1")
    assert first != namer("tiny", "uid-2")  # a run applied again is a new run
    assert first != namer("tiny-2", "uid-1")
    assert is_dns_label(first)


@pytest.mark.parametrize("name", ODD_NAMES)
@pytest.mark.parametrize("namer", TARGET_NAMERS)
def test_target_names_are_dns_labels_for_odd_blueprint_names(namer, name: str) -> None:
    for target in (CPU_TARGET, CUDA_TARGET, "cuda@9.0:bf16:C=256,H=8:b=1,32"):
        made = namer(name, BLUEPRINT_HASH, target)
        assert is_dns_label(made), made
        assert len(made) <= names.MAX_LABEL_NAME


@pytest.mark.parametrize("name", ODD_NAMES)
@pytest.mark.parametrize("namer", RUN_NAMERS)
def test_run_names_are_dns_labels_for_odd_run_names(namer, name: str) -> None:
    made = namer(name, "0b6a4a1e-2f7c-4d8e-9a51-1c1f0e7f3b2a")
    assert is_dns_label(made), made


def test_a_long_name_keeps_its_readable_start_and_fills_the_label() -> None:
    made = names.compile_job_name("x" * 200, BLUEPRINT_HASH, CPU_TARGET)
    assert len(made) == names.MAX_LABEL_NAME
    assert made.startswith("compile-xxxx")


def test_names_that_differ_only_beyond_the_truncation_still_differ() -> None:
    base = "a" * 100
    assert names.compile_job_name(base + "1", BLUEPRINT_HASH, CPU_TARGET) != (
        names.compile_job_name(base + "2", BLUEPRINT_HASH, CPU_TARGET)
    )


def test_a_name_without_letters_or_digits_gets_a_placeholder() -> None:
    made = names.training_job_name("...", "uid")
    assert made.startswith("train-x-")
    assert is_dns_label(made)


@settings(derandomize=True, database=None, max_examples=100)
@given(
    name=st.text(min_size=1, max_size=300),
    blueprint_hash=st.text(min_size=1, max_size=80),
    target=st.text(min_size=1, max_size=80),
)
def test_any_input_gives_a_dns_label(name: str, blueprint_hash: str, target: str) -> None:
    for namer in TARGET_NAMERS:
        assert is_dns_label(namer(name, blueprint_hash, target))
    for namer in RUN_NAMERS:
        assert is_dns_label(namer(name, target))


def test_run_id_joins_namespace_and_name() -> None:
    assert names.run_id("esper", "tiny") == "esper.tiny"


@pytest.mark.parametrize("gpu", [True, False])
def test_labels(gpu: bool) -> None:
    made = names.labels(names.Role.COMPILE, "uid-1", gpu=gpu)
    assert made == {
        "app.kubernetes.io/managed-by": OPERATOR_NAME,
        "app.kubernetes.io/part-of": "esper",
        "esper.dev/role": "compile",
        "esper.dev/gpu": "true" if gpu else "false",
        "esper.dev/owner-uid": "uid-1",
    }
    assert f"app.kubernetes.io/managed-by={OPERATOR_NAME}" == names.MANAGED_SELECTOR
