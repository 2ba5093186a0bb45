"""Settings come from each test alone, never from ESPER_* variables of the environment."""

import os

import pytest


@pytest.fixture(autouse=True)
def _no_esper_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)
