"""deploy-check's dockerfile subcommand: BuildKit's parser, its JSON summary and its errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(600)

MULTI_STAGE = """\
# syntax=docker/dockerfile:1
ARG PYTHON=3.12
FROM --platform=$BUILDPLATFORM python:${PYTHON}-slim AS build
ENV PATH="/opt/venv/bin:$PATH" \\
    GREETING="hello world"
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/pip python -m venv /opt/venv && pip install build
COPY pyproject.toml src/ ./

FROM python:3.12-slim AS app
ARG VERSION=0.1.0
LABEL org.opencontainers.image.version="${VERSION}"
COPY --from=build --chown=1000:1000 /opt/venv /opt/venv
COPY --from=busybox:1.36 /bin/busybox /bin/busybox
USER 1000:1000
EXPOSE 8420/tcp
HEALTHCHECK --interval=30s --timeout=3s CMD ["esper", "--version"]
ENTRYPOINT ["esper"]
CMD ["up"]

FROM app
COPY --from=0 /src /src
CMD esper up
"""


def _run(deploy_check: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(deploy_check), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return path


def _instructions(stage: dict[str, Any], cmd: str) -> list[dict[str, Any]]:
    return [i for i in stage["instructions"] if i["cmd"] == cmd]


@pytest.fixture
def summary(deploy_check: Path, tmp_path: Path) -> dict[str, Any]:
    result = _run(deploy_check, "dockerfile", str(_write(tmp_path, MULTI_STAGE)))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_stages_have_their_names_bases_and_platform(summary: dict[str, Any]) -> None:
    stages = [(s["name"], s["base"], s["platform"]) for s in summary["stages"]]
    assert stages == [
        ("build", "python:${PYTHON}-slim", "$BUILDPLATFORM"),
        ("app", "python:3.12-slim", ""),
        ("", "app", ""),
    ]
    assert summary["global_args"] == [{"name": "PYTHON", "default": "3.12"}]


def test_instruction_arguments_are_decoded(summary: dict[str, Any]) -> None:
    build, app, last = summary["stages"]
    env = _instructions(build, "env")[0]
    # Quotes are gone, variable references stay as written.
    assert env["args"]["env"] == {"PATH": "/opt/venv/bin:$PATH", "GREETING": "hello world"}
    assert env["line"] == 4
    run = _instructions(build, "run")[0]["args"]
    assert run["command"] == "python -m venv /opt/venv && pip install build"
    assert run["mounts"] == [
        {"type": "cache", "target": "/root/.cache/pip", "from": "", "source": ""}
    ]
    assert _instructions(build, "workdir")[0]["args"] == {"path": "/src"}

    copy_venv, copy_busybox = _instructions(app, "copy")
    assert copy_venv["original"] == "COPY --from=build --chown=1000:1000 /opt/venv /opt/venv"
    assert copy_venv["args"]["from"] == "build"
    assert copy_venv["args"]["sources"] == ["/opt/venv"]
    assert copy_venv["args"]["dest"] == "/opt/venv"
    assert copy_venv["args"]["chown"] == "1000:1000"
    assert copy_busybox["args"]["from"] == "busybox:1.36"
    assert _instructions(app, "user")[0]["args"] == {"user": "1000:1000"}
    assert _instructions(app, "arg")[0]["args"]["args"] == [{"name": "VERSION", "default": "0.1.0"}]
    assert _instructions(app, "label")[0]["args"] == {
        "labels": {"org.opencontainers.image.version": "${VERSION}"}
    }
    assert _instructions(app, "expose")[0]["args"] == {"ports": ["8420/tcp"]}
    health = _instructions(app, "healthcheck")[0]["args"]
    assert (health["test"], health["interval"], health["timeout"]) == (
        ["CMD", "esper", "--version"],
        "30s",
        "3s",
    )
    assert _instructions(app, "entrypoint")[0]["args"] == {"exec": ["esper"]}
    assert _instructions(app, "cmd")[0]["args"] == {"exec": ["up"]}
    assert _instructions(last, "copy")[0]["args"]["from"] == "0"
    assert _instructions(last, "cmd")[0]["args"] == {"shell": "esper up"}


def test_buildkit_lint_warnings_are_reported(summary: dict[str, Any]) -> None:
    # The last stage's shell-form CMD: the process would not receive signals as PID 1.
    assert summary["warnings"] == [
        {
            "rule": "JSONArgsRecommended",
            "message": "JSON arguments recommended for CMD to prevent unintended behavior "
            "related to OS signals",
            "line": 23,
        }
    ]


def test_check_directive_makes_warnings_errors(deploy_check: Path, tmp_path: Path) -> None:
    path = _write(tmp_path, "# check=error=true\nFROM alpine:3\nCMD echo hi\n")
    result = _run(deploy_check, "dockerfile", str(path))
    assert result.returncode == 1
    assert "lint violation found for rules: JSONArgsRecommended" in result.stderr


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "FROM alpine:3\nRUNN echo hi\n",
            "line 2: unknown instruction: RUNN (did you mean RUN?)",
            id="unknown-instruction",
        ),
        pytest.param(
            "FROM alpine:3\nRUN <<EOF\necho hi\n",
            "unterminated heredoc",
            id="syntax-unterminated-heredoc",
        ),
        pytest.param(
            "FROM alpine:3 AS\n",
            "line 1: FROM requires either one or three arguments",
            id="syntax-from-arity",
        ),
        pytest.param(
            'FROM alpine:3\nENV GREETING="hello\n',
            "unexpected end of statement while looking for matching double-quote",
            id="syntax-unterminated-quote",
        ),
        pytest.param(
            "FROM alpine:3\nCOPY --bogus=1 a b\n",
            "unknown flag: --bogus",
            id="unknown-flag",
        ),
        pytest.param(
            "FROM alpine:3 AS build\nFROM alpine:3\nCOPY --from=nope /a /b\n",
            'line 3: COPY --from=nope: no stage named "nope"',
            id="copy-from-unknown-stage",
        ),
        pytest.param(
            "FROM alpine:3\nCOPY --from=later /a /b\nFROM alpine:3 AS later\n",
            'COPY --from=later: stage "later" must be defined before the stage that uses it',
            id="copy-from-later-stage",
        ),
        pytest.param(
            "FROM alpine:3\nCOPY --from=1 /a /b\n",
            "COPY --from=1: stage 1 is not an earlier stage",
            id="copy-from-bad-index",
        ),
        pytest.param(
            "FROM alpine:3\nRUN --mount=type=bind,from=nope,target=/x true\n",
            'RUN --mount from=nope: no stage named "nope"',
            id="mount-from-unknown-stage",
        ),
        pytest.param(
            "ARG BASE=alpine:3\n",
            "no build stage (FROM) in file",
            id="no-stage",
        ),
    ],
)
def test_invalid_dockerfile_fails_with_one_line_naming_the_problem(
    deploy_check: Path, tmp_path: Path, text: str, problem: str
) -> None:
    path = _write(tmp_path, text)
    result = _run(deploy_check, "dockerfile", str(path))
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith(f"deploy-check: {path}: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert problem in result.stderr


def test_missing_file_is_an_error(deploy_check: Path, tmp_path: Path) -> None:
    result = _run(deploy_check, "dockerfile", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert "no such file or directory" in result.stderr


@pytest.mark.parametrize(
    "args", [pytest.param((), id="no-args"), pytest.param(("lint", "x"), id="unknown-subcommand")]
)
def test_usage_errors_exit_2(deploy_check: Path, args: tuple[str, ...]) -> None:
    result = _run(deploy_check, *args)
    assert result.returncode == 2
    assert "usage: deploy-check kind-config PATH" in result.stderr
