"""Fixtures of Oona's integration tests: each behavioural test runs on both implementations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import pytest

from esper.oona import Bus, InProcessBus, RedisStreamsBus


class BusFactory(Protocol):
    """Creates a bus of the backend under test; options are constructor arguments."""

    kind: str

    def __call__(self, **options: int | bool | None) -> Bus: ...


class _Factory:
    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.url = url
        self.buses: list[Bus] = []

    def __call__(self, **options: int | bool | None) -> Bus:
        bus: Bus
        if self.url is None:
            options.pop("approximate_trim", None)  # the in-process bus always trims exactly
            bus = InProcessBus(**options)  # type: ignore[arg-type]
        else:
            bus = RedisStreamsBus(self.url, **options)  # type: ignore[arg-type]
        self.buses.append(bus)
        return bus


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_bus(request: pytest.FixtureRequest) -> Iterator[BusFactory]:
    """A factory of buses on the in-process backend or on a flushed throwaway Redis."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    factory = _Factory(request.param, url)
    yield factory
    for bus in factory.buses:
        bus.close()
