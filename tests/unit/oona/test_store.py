"""The in-memory idempotency store."""

from __future__ import annotations

import pytest

from esper.oona import ClaimState, MemoryProcessedStore

from .factories import wait_until


def test_done_marks_expire_after_the_ttl() -> None:
    store = MemoryProcessedStore(ttl_ms=20)
    store.claim("e1", "t1", 60_000)
    store.complete("e1")
    assert store.is_done("e1")
    wait_until(lambda: not store.is_done("e1"), what="the mark to expire")
    assert store.claim("e1", "t2", 60_000) is ClaimState.CLAIMED


def test_the_oldest_marks_are_forgotten_beyond_capacity() -> None:
    store = MemoryProcessedStore(ttl_ms=60_000, capacity=3)
    for n in range(5):
        store.complete(f"e{n}")
    assert [store.is_done(f"e{n}") for n in range(5)] == [False, False, True, True, True]


def test_releasing_an_unknown_or_done_id_changes_nothing() -> None:
    store = MemoryProcessedStore(ttl_ms=60_000)
    store.release("never-seen", "t")
    store.complete("e1")
    store.release("e1", "")
    assert store.is_done("e1")


@pytest.mark.parametrize(("ttl_ms", "capacity"), [(0, 10), (10, 0)])
def test_arguments_are_validated(ttl_ms: int, capacity: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryProcessedStore(ttl_ms=ttl_ms, capacity=capacity)
