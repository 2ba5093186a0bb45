"""The operator's entry points: `esper operator` runs it and bad settings give one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from esper_operator.kube import Credentials
from esper_operator.main import connection_info

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


def test_kopf_logs_in_with_the_operators_own_credentials() -> None:
    # One set of credentials for both clients: kopf's in-cluster login would dial
    # kubernetes.default.svc, which needs cluster DNS.
    token_info = connection_info(
        Credentials(
            server="https://10.96.0.1:443", verify=True, token="pod-token", ca_file="/sa/ca.crt"
        )
    )
    assert token_info.server == "https://10.96.0.1:443"
    assert token_info.token == "pod-token"
    assert token_info.ca_path == "/sa/ca.crt"
    assert token_info.insecure is False
    assert token_info.certificate_path is None

    cert_info = connection_info(
        Credentials(server="https://127.0.0.1:6443", verify=False, cert=("/c.crt", "/c.key"))
    )
    assert (cert_info.certificate_path, cert_info.private_key_path) == ("/c.crt", "/c.key")
    assert cert_info.insecure is True
    assert cert_info.token is None
