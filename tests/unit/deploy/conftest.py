"""Fixtures of the deployment checks: the Go tools they run, built by scripts/build-go-tools.sh.

The script caches every tool (deploy-check keyed by its sources), so after the first build a
fixture costs one short subprocess per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helm import go_tool


@pytest.fixture(scope="session")
def deploy_check() -> Path:
    """The deploy-check binary (tools/deploy-check), built from the checkout's sources."""
    return go_tool("deploy-check")


@pytest.fixture(scope="session")
def actionlint() -> Path:
    """The actionlint binary at the version scripts/build-go-tools.sh pins."""
    return go_tool("actionlint")
