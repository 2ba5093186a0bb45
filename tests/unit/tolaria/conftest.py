"""Tolaria test settings: no ESPER_* variables from the environment, one torch thread."""

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _no_esper_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: the models are tiny, and the CI machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
