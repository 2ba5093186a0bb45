"""Shared fixtures of the Phase 1 tests.

Settings come from each test alone, never from ESPER_* variables of the environment, and every
worker process a test starts is tagged so that none outlives it.
"""

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.phase1.support import kill_marked, marked_processes


@pytest.fixture(autouse=True)
def _no_esper_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def marker() -> Iterator[str]:
    """Tags the worker processes of one test; any left at the end are killed (and fail it)."""
    value = uuid.uuid4().hex
    yield value
    left = marked_processes(value)
    kill_marked(value)
    assert left == [], f"worker processes left behind: {left}"
