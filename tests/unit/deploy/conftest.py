"""Fixtures of the deployment checks: the Go tools they run, built by scripts/build-go-tools.sh.

The script caches every tool (deploy-check keyed by its sources), so after the first build a
fixture costs one short subprocess per session.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-go-tools.sh"
# A cold build of deploy-check takes about half a minute on 2 cores, actionlint about as long.
BUILD_TIMEOUT_S = 900


def build_go_tool(tool: str) -> Path:
    """Build ``tool`` with scripts/build-go-tools.sh if it is not cached and return its path.

    Args:
        tool: One of the script's tools (``helm``, ``actionlint``, ``deploy-check``).

    Returns:
        The executable, from the last line the script prints on stdout.
    """
    result = subprocess.run(
        [str(BUILD_SCRIPT), tool],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"scripts/build-go-tools.sh {tool} failed (exit {result.returncode}); it needs the Go "
            f"toolchain and the Go module proxy:\n{result.stderr}",
            pytrace=False,
        )
    lines = result.stdout.strip().splitlines()
    binary = Path(lines[-1]) if lines else None
    if binary is None or not os.access(binary, os.X_OK):
        pytest.fail(
            f"scripts/build-go-tools.sh {tool} printed no executable path: {result.stdout!r}",
            pytrace=False,
        )
    return binary


@pytest.fixture(scope="session")
def deploy_check() -> Path:
    """The deploy-check binary (tools/deploy-check), built from the checkout's sources."""
    return build_go_tool("deploy-check")


@pytest.fixture(scope="session")
def actionlint() -> Path:
    """The actionlint binary at the version scripts/build-go-tools.sh pins."""
    return build_go_tool("actionlint")
