"""The operator's entry points: `esper operator` runs it and bad settings give one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ESPER = Path(sys.executable).parent / "esper"


def _environment(**extra: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ESPER_OPERATOR_", "KUBERNETES_SERVICE")) and key != "KUBECONFIG"
    }
    return {**environment, **extra}


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        (
            [str(ESPER), "operator"],
            {"KUBECONFIG": "/nonexistent/kubeconfig"},
            "no in-cluster ServiceAccount and no kubeconfig at /nonexistent/kubeconfig",
        ),
        (
            [sys.executable, "-m", "esper_operator"],
            {"ESPER_OPERATOR_BUS_URL": "http://not-redis"},
            "ESPER_OPERATOR_BUS_URL must be a redis:// URL",
        ),
        (
            [sys.executable, "-m", "esper_operator"],
            {"ESPER_OPERATOR_MAX_GPU_JOBS": "0"},
            "max_gpu_jobs",
        ),
    ],
)
def test_bad_setup_exits_with_one_line(
    command: list[str], extra: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        command,
        env=_environment(**extra, HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("esper-operator: error: ")
    assert message in lines[0]
