"""Counting and timing reconcile passes."""

import itertools

import pytest
from prometheus_client import REGISTRY

from esper_operator.metrics import measured

_kinds = itertools.count()


def fresh_kind() -> str:
    """A label value no other test used, so the counters start at zero."""
    return f"TestKind{next(_kinds)}"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_pass_counts_as_ok_and_is_timed() -> None:
    kind = fresh_kind()
    with measured(kind) as outcome:
        assert outcome.result == "ok"
    assert value("esper_operator_reconciles_total", kind=kind, result="ok") == 1
    assert value("esper_operator_reconcile_seconds_count", kind=kind) == 1
    assert value("esper_operator_errors_total", kind=kind, error="RuntimeError") == 0


def test_the_caller_sets_the_result() -> None:
    kind = fresh_kind()
    for _ in range(2):
        with measured(kind) as outcome:
            outcome.result = "requeue"
    assert value("esper_operator_reconciles_total", kind=kind, result="requeue") == 2
    assert value("esper_operator_reconciles_total", kind=kind, result="ok") == 0


def test_an_exception_counts_as_an_error_and_propagates() -> None:
    kind = fresh_kind()

    def fail() -> None:
        with measured(kind) as outcome:
            outcome.result = "requeue"
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        fail()
    assert value("esper_operator_reconciles_total", kind=kind, result="error") == 1
    assert value("esper_operator_reconciles_total", kind=kind, result="requeue") == 0
    assert value("esper_operator_errors_total", kind=kind, error="KeyError") == 1
    assert value("esper_operator_reconcile_seconds_count", kind=kind) == 1
