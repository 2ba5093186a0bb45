""".github/workflows/ci.yaml: actionlint-clean, and its e2e-kind job matches the repository.

actionlint checks the workflow's syntax, expressions, action inputs and, with shellcheck (a
Debian package scripts/ensure-system-deps.sh installs), its run scripts; the structural tests
check what actionlint cannot know: that the jobs run the project's checks, and that the files,
images and make targets they use exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yaml"
JOBS = ("lint", "typecheck", "unit", "integration", "e2e-kind")
# Repository paths as a workflow writes them; "$VENV/bin" or "~/.cache" are not preceded by a
# boundary character, so they do not match.
REPO_PATH = re.compile(
    r"(?<![\w$./~-])((?:benchmarks|examples|helm|operator|requirements|scripts|src|tests|tools)"
    r"/[\w.*/-]*[\w*]|kind-config\.yaml|pyproject\.toml)"
)
MAKE_TARGETS = re.compile(r"^\s*make ([\w -]+)$", re.MULTILINE)

pytestmark = pytest.mark.timeout(600)


def _actionlint(actionlint: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(actionlint), "-no-color", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(workflow: dict[Any, Any], job: str) -> list[dict[str, Any]]:
    return workflow["jobs"][job]["steps"]


def _script(workflow: dict[Any, Any], job: str) -> str:
    """The job's run scripts, each continued line joined to its first."""
    text = "\n".join(step.get("run", "") for step in _steps(workflow, job))
    return re.sub(r"\s*\\\n\s*", " ", text)


def _strings(node: object) -> Iterator[str]:
    """Every string value under ``node`` except action references (``uses``)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            if key != "uses":
                yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def test_actionlint_passes(actionlint: Path) -> None:
    result = _actionlint(actionlint, WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_checks_the_run_scripts_with_shellcheck(
    actionlint: Path, tmp_path: Path
) -> None:
    # Without shellcheck on PATH actionlint skips the scripts silently; insist it is there.
    assert shutil.which("shellcheck"), "shellcheck is missing: run scripts/ensure-system-deps.sh"
    text = WORKFLOW.read_text()
    unquoted = text.replace('"$VENV/bin/ruff"', "$VENV/bin/ruff", 1)
    assert unquoted != text
    broken = tmp_path / "ci.yaml"
    broken.write_text(unquoted)
    result = _actionlint(actionlint, broken)
    assert result.returncode != 0
    assert "SC2086" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        pytest.param(
            "group: ${{ github.workflow }}-${{ github.ref }}",
            "group: ${{ github.workflow }}-${{ github.ref ) }}",
            "expression",
            id="broken-expression",
        ),
        pytest.param(
            "    timeout-minutes: 30\n",
            "    timeout-minutes: 30\n    retries: 2\n",
            'unexpected key "retries"',
            id="unknown-key",
        ),
        pytest.param(
            "steps.python.outputs.python-version",
            "steps.pyton.outputs.python-version",
            'property "pyton" is not defined',
            id="unknown-step-id",
        ),
    ],
)
def test_actionlint_rejects_a_broken_copy(
    actionlint: Path, tmp_path: Path, old: str, new: str, problem: str
) -> None:
    text = WORKFLOW.read_text()
    assert old in text, f"the workflow no longer contains {old!r}; update the mutation"
    broken = tmp_path / "ci.yaml"
    broken.write_text(text.replace(old, new, 1))
    result = _actionlint(actionlint, broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert problem in result.stdout, result.stdout


def test_workflow_policy(workflow: dict[Any, Any]) -> None:
    assert tuple(workflow["jobs"]) == JOBS
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["concurrency"]["cancel-in-progress"] is True
    for job in JOBS:
        assert workflow["jobs"][job]["timeout-minutes"] > 0, job
    for job in ("lint", "typecheck", "unit", "integration"):
        python = [
            s
            for s in _steps(workflow, job)
            if s.get("uses", "").startswith("actions/setup-python@")
        ]
        assert python, job
        assert python[0]["with"]["python-version"] == "3.12", job
    # Every action is pinned to a major version (a tag like v4), never to a branch.
    for job in JOBS:
        for step in _steps(workflow, job):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), step["uses"]


def test_checks_jobs_run_the_project_checks(workflow: dict[Any, Any]) -> None:
    dirs = "src operator tests benchmarks scripts"
    assert f'"$VENV/bin/black" --check --diff {dirs}' in _script(workflow, "lint")
    assert f'"$VENV/bin/ruff" check {dirs}' in _script(workflow, "lint")
    assert '"$VENV/bin/esper" crds generate --check' in _script(workflow, "lint")
    assert '"$VENV/bin/pytype" --config pyproject.toml' in _script(workflow, "typecheck")
    assert "-m pytest tests/unit " in _script(workflow, "unit")
    integration = _script(workflow, "integration")
    assert "make minio control-plane deploy-tools" in integration
    assert "-m pytest tests/integration tests/e2e " in integration
    for package in (
        "postgresql",
        "redis-server",
        "etcd-server",
        "openssl",
        "dataset-fashion-mnist",
    ):
        assert re.search(rf"apt-get install .*\b{package}\b", integration), package


def test_e2e_kind_job_installs_the_chart_into_the_repo_kind_cluster(
    workflow: dict[Any, Any],
) -> None:
    script = _script(workflow, "e2e-kind")
    assert "kind create cluster --name esper --config kind-config.yaml" in script
    # The images the chart runs (its values' repositories) are built, loaded and selected.
    values = yaml.safe_load((REPO_ROOT / "helm" / "esper" / "values.yaml").read_text())
    for target in ("control", "worker"):
        image = f"{values['images'][target]['repository']}:ci"
        assert f"docker build --target {target} -t {image} ." in script
        assert f"kind load docker-image --name esper {image}" in script
        assert f"--set images.{target}.tag=ci" in script
    assert re.search(r"helm install esper helm/esper .*-f examples/values/kind\.yaml", script)
    assert (
        'kubectl apply --namespace "$NAMESPACE" -f examples/blueprints/residual-mlp.yaml' in script
    )
    assert "--for=jsonpath='{.status.phase}'=Validated kernelartifact --all" in script
    assert "-f examples/runs/mnist1d-quick.yaml" in script
    assert "--for=jsonpath='{.status.phase}'=Succeeded morphogeneticrun/mnist1d-quick" in script

    steps = _steps(workflow, "e2e-kind")
    dumps = [s for s in steps if s.get("if") == "failure()"]
    assert len(dumps) == 1
    assert all(word in dumps[0]["run"] for word in ("kubectl describe", "kubectl logs", "events"))
    assert steps[-1]["run"].startswith('helm uninstall esper --namespace "$NAMESPACE" --wait')


def test_the_e2e_namespace_is_the_release_namespace(workflow: dict[Any, Any]) -> None:
    # The chart gives the workers' ServiceAccount to the release namespace only (by default):
    # the manifests must be applied there.
    assert workflow["jobs"]["e2e-kind"]["env"]["NAMESPACE"] == "esper-system"
    script = _script(workflow, "e2e-kind")
    for line in script.splitlines():
        if re.match(r"\s*kubectl (apply|wait|get kernelartifacts)", line):
            assert '--namespace "$NAMESPACE"' in line, line


def test_every_path_the_workflow_uses_exists(workflow: dict[Any, Any]) -> None:
    paths = {match for text in _strings(workflow) for match in REPO_PATH.findall(text)}
    # The check would pass vacuously if the pattern stopped matching.
    assert {"kind-config.yaml", "helm/esper", "examples/values/kind.yaml"} <= paths
    missing = sorted(p for p in paths if not any(REPO_ROOT.glob(p)))
    assert not missing, f"the workflow uses paths that are not in the repository: {missing}"


def test_every_make_target_the_workflow_runs_exists(workflow: dict[Any, Any]) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = {
        target
        for job in JOBS
        for match in MAKE_TARGETS.findall(_script(workflow, job))
        for target in match.split()
    }
    assert {"minio", "control-plane", "deploy-tools"} <= targets
    missing = sorted(t for t in targets if not re.search(rf"^{re.escape(t)}:", makefile, re.M))
    assert not missing, f"Makefile has no target {missing}"
