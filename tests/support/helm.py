"""The real helm binary (built from its Go module by scripts/build-go-tools.sh) for the tests.

:func:`helm_binary` builds it once (cached outside the clone) and returns its path;
:class:`Helm` runs it with private cache/config/data directories, optionally against a
kubeconfig, and :func:`documents` parses rendered manifests.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "esper"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-go-tools.sh"

Manifest = dict[str, object]


@cache
def go_tool(name: str) -> Path:
    """Build (once; cached across runs) and return the path of a tool of build-go-tools.sh.

    Args:
        name: ``helm``, ``actionlint`` or ``deploy-check``.

    Returns:
        The executable.

    Raises:
        RuntimeError: When the build fails, with its output.
    """
    result = subprocess.run(
        [str(BUILD_SCRIPT), name], capture_output=True, text=True, check=False, timeout=1800
    )
    if result.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} {name} failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def helm_binary() -> Path:
    """Return the helm executable, building it first if needed."""
    return go_tool("helm")


@dataclass(frozen=True)
class Helm:
    """helm with its own home directories, optionally talking to one cluster.

    Attributes:
        home: Directory for helm's cache, configuration and data.
        kubeconfig: The cluster's kubeconfig (None for commands that need no cluster).
    """

    home: Path
    kubeconfig: Path | None = None

    def run(
        self, *arguments: str, check: bool = True, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``helm ARGUMENTS``.

        Args:
            *arguments: The command line after ``helm``.
            check: Raise when helm fails.
            timeout: Seconds before the command is killed.

        Returns:
            The finished process (text output).

        Raises:
            AssertionError: With helm's output, when ``check`` and it fails.
        """
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        if self.kubeconfig is not None:
            environment["KUBECONFIG"] = str(self.kubeconfig)
        result = subprocess.run(
            [str(helm_binary()), *arguments],
            env=environment,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(arguments)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def template(
        self,
        release: str,
        namespace: str,
        *,
        values: Sequence[Path] = (),
        settings: Sequence[str] = (),
    ) -> str:
        """Render the chart as ``helm template`` does.

        Args:
            release: The release name.
            namespace: The release namespace.
            values: Values files (``-f``), in order.
            settings: ``--set`` assignments.

        Returns:
            The rendered multi-document YAML.
        """
        arguments = ["template", release, str(CHART), "--namespace", namespace]
        for path in values:
            arguments += ["-f", str(path)]
        for setting in settings:
            arguments += ["--set", setting]
        return self.run(*arguments).stdout


def documents(text: str) -> list[Manifest]:
    """Parse rendered manifests, dropping empty documents.

    Args:
        text: Multi-document YAML.

    Returns:
        The objects, in order.
    """
    return [document for document in yaml.safe_load_all(text) if document]
