"""The container images' Dockerfile and .dockerignore (docs/image.md), checked without Docker.

No image is built here (the CI machine has no Docker engine). BuildKit's own parser reads the
Dockerfile through ``deploy-check`` (tools/deploy-check), and the checks below hold what that
parse says against the project: pyproject.toml's extras and package data, the lock, the version,
and what the operator's Job pods expect (user 1000, a read-only root filesystem with /tmp
writable). Each check is a small function returning a list of problems, so the real files and
deliberately broken copies of them (the mutant tests at the end) go through the same code.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from esper._version import __version__

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCK = "requirements/dev.lock"

PYTHON_IMAGE = "python:3.12-slim-bookworm"
VENV = "/opt/esper/venv"
UID = "1000"
GID = "1000"

# Final stage -> (extras it must install, extras it must not install).
FINAL_STAGES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "control": (frozenset({"server", "operator"}), frozenset({"train", "dev"})),
    "worker": (frozenset({"server", "train"}), frozenset({"dev"})),
}
# Debian packages a final stage may install. The worker's compilers are run-time needs:
# torch.compile calls g++ (Inductor, CPU targets) and gcc (Triton's launcher, CUDA targets).
APT_ALLOWED: dict[str, frozenset[str]] = {
    "control": frozenset(),
    "worker": frozenset({"dataset-fashion-mnist", "gcc", "g++", "libc6-dev"}),
}
BUILD_TOOLS = frozenset(
    {"build-essential", "make", "cmake", "ninja-build", "git", "python3-pip", "python3-venv"}
)
# Variables that must point under /tmp, the writable path (an emptyDir) every pod has.
WRITABLE_ENV = (
    "HOME",
    "TMPDIR",
    "ESPER_HOME",
    "XDG_CACHE_HOME",
    "MPLCONFIGDIR",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_HOME",
    "TRITON_CACHE_DIR",
)
PACKAGE_INSTALL = re.compile(r"\b(?:pip3?|uv(?:\s+pip)?)\s+install\b|\bensurepip\b")
EXTRAS = re.compile(r"(?<![\w/])\.\[([^\]]*)\]")

pytestmark = pytest.mark.timeout(120)


# ---- the parsed Dockerfile ------------------------------------------------------------------


class DockerfileError(Exception):
    """deploy-check rejected a Dockerfile (``docker build`` would too)."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One build stage as deploy-check reports it.

    Attributes:
        name: The stage's name (``AS name``), or "" for an unnamed stage.
        base: Its FROM: an image reference or an earlier stage's name.
        instructions: Its instructions (``cmd``, ``original``, ``args``), in order.
    """

    name: str
    base: str
    instructions: tuple[dict[str, Any], ...]

    def commands(self, cmd: str) -> Iterator[dict[str, Any]]:
        """Yield the arguments of this stage's instructions of one kind (e.g. ``run``)."""
        for instruction in self.instructions:
            if instruction["cmd"] == cmd:
                yield instruction["args"]


@dataclasses.dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile: its stages in order and BuildKit's lint warnings."""

    stages: tuple[Stage, ...]
    warnings: tuple[dict[str, Any], ...]

    def stage(self, name: str) -> Stage | None:
        """Return the stage called ``name`` (stage names are case-insensitive), if any."""
        for stage in self.stages:
            if stage.name.lower() == name.lower():
                return stage
        return None

    def lineage(self, name: str) -> list[Stage]:
        """Return a stage and the stages it is built on, the root first."""
        chain: list[Stage] = []
        stage = self.stage(name)
        while stage is not None and stage not in chain:
            chain.insert(0, stage)
            stage = self.stage(stage.base)
        return chain

    def root_image(self, name: str) -> str:
        """Return the image a stage's lineage starts from."""
        chain = self.lineage(name)
        return chain[0].base if chain else ""


def parse_dockerfile(deploy_check: Path, path: Path) -> Dockerfile:
    """Parse a Dockerfile with BuildKit's parser.

    Raises:
        DockerfileError: With deploy-check's message, when the parse fails.
    """
    result = subprocess.run(
        [str(deploy_check), "dockerfile", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise DockerfileError(result.stderr.strip() or f"deploy-check exited {result.returncode}")
    summary = json.loads(result.stdout)
    stages = tuple(
        Stage(name=s["name"], base=s["base"], instructions=tuple(s["instructions"]))
        for s in summary["stages"]
    )
    return Dockerfile(stages=stages, warnings=tuple(summary.get("warnings", [])))


# ---- the project the Dockerfile must agree with ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Project:
    """What the checks compare the Dockerfile with.

    Attributes:
        root: The repository.
        pyproject: pyproject.toml, parsed.
        version: The package version.
        ignore: The .dockerignore patterns, in order (``!`` kept).
    """

    root: Path
    pyproject: dict[str, Any]
    version: str
    ignore: tuple[str, ...]

    @property
    def extras(self) -> dict[str, list[str]]:
        """The optional-dependencies table."""
        return dict(self.pyproject["project"]["optional-dependencies"])


def read_dockerignore(text: str) -> tuple[str, ...]:
    """Return a .dockerignore's patterns: comments and blank lines dropped, paths cleaned."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.strip("/").removeprefix("./")
        patterns.append(("!" if negate else "") + pattern)
    return tuple(patterns)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Translate a .dockerignore pattern (Go's filepath.Match plus ``**``) to a regex."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def is_ignored(patterns: tuple[str, ...], path: str) -> bool:
    """Return whether Docker leaves ``path`` (relative to the context) out of the context.

    As Docker does: the last pattern that matches the path or one of its parent directories
    decides, and a ``!`` pattern puts back what an earlier one left out.
    """
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern[1:] if negate else pattern)
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def load_project(root: Path = REPO_ROOT) -> Project:
    """Read the project's side of the checks from a checkout."""
    return Project(
        root=root,
        pyproject=tomllib.loads((root / "pyproject.toml").read_text()),
        version=__version__,
        ignore=read_dockerignore((root / ".dockerignore").read_text()),
    )


# ---- helpers over RUN commands ------------------------------------------------------------


def _segments(command: str) -> Iterator[str]:
    """Split a shell command line into its simple commands (around && || ; | and newlines)."""
    for segment in re.split(r"&&|\|\||;|\||\n", command):
        if segment.strip():
            yield segment.strip()


def apt_packages(command: str) -> set[str]:
    """Return the packages an ``apt-get install`` (or ``apt install``) in a command installs."""
    packages: set[str] = set()
    for segment in _segments(command):
        try:
            words = shlex.split(segment)
        except ValueError:  # a quote that closes in another segment
            words = segment.split()
        apt = [i for i, word in enumerate(words) if word in ("apt-get", "apt")]
        if not apt or "install" not in words[apt[0] :]:
            continue
        start = words.index("install", apt[0]) + 1
        packages |= {word.split("=")[0] for word in words[start:] if not word.startswith("-")}
    return packages


def _runs(lineage: list[Stage]) -> Iterator[str]:
    for stage in lineage:
        for args in stage.commands("run"):
            yield str(args["command"])


def _effective(lineage: list[Stage], cmd: str) -> dict[str, Any] | None:
    """Return the arguments of the last instruction of a kind in a lineage (it wins)."""
    last = None
    for stage in lineage:
        for args in stage.commands(cmd):
            last = args
    return last


def _venv_copies(lineage: list[Stage]) -> list[dict[str, Any]]:
    return [args for stage in lineage for args in stage.commands("copy") if args["dest"] == VENV]


def installed_extras(dockerfile: Dockerfile, final: str) -> set[str] | None:
    """Return the extras installed into the venv a final stage copies, or None if unclear."""
    copies = _venv_copies(dockerfile.lineage(final))
    if len(copies) != 1 or not copies[0]["from"]:
        return None
    extras: set[str] = set()
    for command in _runs(dockerfile.lineage(copies[0]["from"])):
        if PACKAGE_INSTALL.search(command):
            for match in EXTRAS.finditer(command):
                extras |= {extra.strip() for extra in match.group(1).split(",") if extra.strip()}
    return extras


# ---- the checks: each returns a list of problems ------------------------------------------


def check_stages(dockerfile: Dockerfile, project: Project) -> list[str]:
    """The final stages exist and are the last ones; BuildKit's linter has nothing to say."""
    del project
    problems = [f"no stage named '{name}'" for name in FINAL_STAGES if not dockerfile.stage(name)]
    last = {stage.name for stage in dockerfile.stages[-len(FINAL_STAGES) :]}
    if last != set(FINAL_STAGES):
        problems.append(f"the last stages are {sorted(last)}, not {sorted(FINAL_STAGES)}")
    problems += [f"BuildKit lint: line {w['line']}: {w['message']}" for w in dockerfile.warnings]
    return problems


def check_bases(dockerfile: Dockerfile, project: Project) -> list[str]:
    """Every stage starts from the one pinned slim Python image; finals contain no builder."""
    del project
    problems = []
    for stage in dockerfile.stages:
        root = dockerfile.root_image(stage.name) if stage.name else stage.base
        if root != PYTHON_IMAGE:
            problems.append(f"stage '{stage.name}' starts from {root}, not {PYTHON_IMAGE}")
    for final in FINAL_STAGES:
        for stage in dockerfile.lineage(final):
            if any(PACKAGE_INSTALL.search(command) for command in _runs([stage])):
                problems.append(f"'{final}' is built on '{stage.name}', which installs packages")
    return problems


def check_venv_copy(dockerfile: Dockerfile, project: Project) -> list[str]:
    """A final image receives the venv from a builder stage and nothing from the context."""
    del project
    problems = []
    for final in FINAL_STAGES:
        lineage = dockerfile.lineage(final)
        for stage in lineage:
            for args in stage.commands("add"):
                problems.append(f"'{final}': ADD {args['sources']} in '{stage.name}'")
            for args in stage.commands("copy"):
                source = args["from"]
                if not source:
                    problems.append(f"'{final}': COPY {args['sources']} from the build context")
                elif args["sources"] != [VENV] or args["dest"] != VENV:
                    problems.append(f"'{final}': COPY {args['sources']} {args['dest']}: not {VENV}")
                elif dockerfile.stage(source) is None or dockerfile.stage(source) in lineage:
                    problems.append(f"'{final}': COPY --from={source}: not a separate stage")
                elif not any(
                    "uv venv" in c and VENV in c for c in _runs(dockerfile.lineage(source))
                ):
                    problems.append(f"'{final}': stage '{source}' does not create {VENV}")
        if len(_venv_copies(lineage)) != 1:
            problems.append(
                f"'{final}': copies {VENV} {len(_venv_copies(lineage))} times, not once"
            )
    return problems


def check_user(dockerfile: Dockerfile, project: Project) -> list[str]:
    """Final images run as the numeric user 1000:1000, which exists in /etc/passwd."""
    del project
    problems = []
    for final in FINAL_STAGES:
        lineage = dockerfile.lineage(final)
        user = _effective(lineage, "user")
        if user is None:
            problems.append(f"'{final}' sets no USER (it would run as root)")
            continue
        uid, _, gid = str(user["user"]).partition(":")
        if uid != UID or gid not in ("", GID):
            problems.append(f"'{final}': USER {user['user']}, not the numeric {UID}:{GID}")
        if not any(
            "useradd" in command and re.search(rf"--uid[ =]{UID}\b", command)
            for command in _runs(lineage)
        ):
            problems.append(f"'{final}': no useradd --uid {UID} (the user needs a passwd entry)")
    return problems


def check_no_build_tools(dockerfile: Dockerfile, project: Project) -> list[str]:
    """No compilers but the worker's run-time ones, no build tools, no pip or uv in finals."""
    del project
    problems = []
    for final, allowed in APT_ALLOWED.items():
        commands = list(_runs(dockerfile.lineage(final)))
        installed = set().union(*(apt_packages(command) for command in commands))
        if unexpected := sorted(installed - allowed):
            problems.append(f"'{final}' installs Debian packages {unexpected}")
        if tools := sorted(installed & BUILD_TOOLS):
            problems.append(f"'{final}' installs build tools {tools}")
        problems += [
            f"'{final}' installs Python packages: {c}"
            for c in commands
            if PACKAGE_INSTALL.search(c)
        ]
        if not any(re.search(r"\bpip uninstall\b.*\bpip\b", c) for c in commands):
            problems.append(f"'{final}' keeps the base image's pip")
    return problems


def check_environment(dockerfile: Dockerfile, project: Project) -> list[str]:
    """Everything writable is under /tmp, no bytecode is written, the venv comes first on PATH."""
    del project
    problems = []
    for final in FINAL_STAGES:
        env: dict[str, str] = {}
        for stage in dockerfile.lineage(final):
            for args in stage.commands("env"):
                env.update(args["env"])
        for name in WRITABLE_ENV:
            value = env.get(name)
            if value is None or not (value == "/tmp" or value.startswith("/tmp/")):
                problems.append(f"'{final}': {name}={value}, not under /tmp")
        if env.get("PYTHONDONTWRITEBYTECODE") != "1":
            problems.append(f"'{final}': PYTHONDONTWRITEBYTECODE is not 1")
        if not env.get("PATH", "").startswith(f"{VENV}/bin:"):
            problems.append(f"'{final}': PATH does not start with {VENV}/bin")
        if "NVIDIA_VISIBLE_DEVICES" in env:
            problems.append(f"'{final}': NVIDIA_VISIBLE_DEVICES would bypass the device plugin")
    return problems


def check_bytecode(dockerfile: Dockerfile, project: Project) -> list[str]:
    """The venv and the standard library are byte-compiled at build time."""
    del project
    problems = []
    for final in FINAL_STAGES:
        copies = _venv_copies(dockerfile.lineage(final))
        venv_runs = _runs(dockerfile.lineage(copies[0]["from"])) if copies else iter(())
        if not any("compileall" in c and f"{VENV}/lib" in c for c in venv_runs):
            problems.append(f"'{final}': its venv is not byte-compiled")
        stdlib = re.compile(r"\bcompileall\b.*\s/usr/local/lib/python3\.12(?:\s|$)")
        if not any(stdlib.search(c) for c in _runs(dockerfile.lineage(final))):
            problems.append(f"'{final}': the standard library is not byte-compiled")
    return problems


def check_extras(dockerfile: Dockerfile, project: Project) -> list[str]:
    """Each image installs its role's extras (no torch in control) under the lock's pins."""
    problems = []
    for stage in dockerfile.stages:
        for command in _runs([stage]):
            if not PACKAGE_INSTALL.search(command) or not EXTRAS.search(command):
                continue
            for match in EXTRAS.finditer(command):
                for extra in match.group(1).split(","):
                    if extra.strip() not in project.extras:
                        problems.append(f"'{stage.name}': extra '{extra}' is not in pyproject")
            if not re.search(rf"(?:-c|--constraints?)[ =]{re.escape(LOCK)}\b", command):
                problems.append(f"'{stage.name}' installs without --constraints {LOCK}")
    for final, (required, forbidden) in FINAL_STAGES.items():
        extras = installed_extras(dockerfile, final)
        if extras is None:
            problems.append(f"'{final}': cannot tell which extras its venv holds")
            continue
        if missing := sorted(required - extras):
            problems.append(f"'{final}' lacks the extras {missing}")
        if present := sorted(forbidden & extras):
            problems.append(f"'{final}' installs the extras {present}")
    return problems


def check_entrypoint(dockerfile: Dockerfile, project: Project) -> list[str]:
    """ENTRYPOINT is ``esper`` in exec form (signals reach it as PID 1); no HEALTHCHECK."""
    problems = []
    if "esper" not in project.pyproject["project"].get("scripts", {}):
        problems.append("pyproject.toml declares no 'esper' console script")
    for final in FINAL_STAGES:
        lineage = dockerfile.lineage(final)
        entrypoint = _effective(lineage, "entrypoint")
        if entrypoint is None or entrypoint.get("exec") != ["esper"]:
            problems.append(f"'{final}': ENTRYPOINT is {entrypoint}, not exec form ['esper']")
        if any(True for stage in lineage for _ in stage.commands("healthcheck")):
            problems.append(f"'{final}' has a HEALTHCHECK (Kubernetes probes do that)")
    return problems


def check_version(dockerfile: Dockerfile, project: Project) -> list[str]:
    """The image version label is the package version."""
    problems = []
    for final in FINAL_STAGES:
        lineage = dockerfile.lineage(final)
        labels: dict[str, str] = {}
        defaults: dict[str, str | None] = {}
        for stage in lineage:
            for args in stage.commands("label"):
                labels.update(args["labels"])
            for args in stage.commands("arg"):
                defaults.update({a["name"]: a["default"] for a in args["args"]})
        label = labels.get("org.opencontainers.image.version")
        reference = re.fullmatch(r"\$\{?(\w+)\}?", label or "")
        value = defaults.get(reference.group(1)) if reference else label
        if value != project.version:
            problems.append(
                f"'{final}': org.opencontainers.image.version is {label!r} ({value!r}), "
                f"not {project.version}"
            )
        for key in ("org.opencontainers.image.title", "org.opencontainers.image.source"):
            if key not in labels:
                problems.append(f"'{final}' has no {key} label")
    return problems


def _needed_files(project: Project) -> dict[str, set[str]]:
    """Return, per package directory, the files a build of the distribution reads from it."""
    setuptools = project.pyproject["tool"]["setuptools"]
    package_data: dict[str, list[str]] = setuptools.get("package-data", {})
    needed: dict[str, set[str]] = {}
    for where in setuptools["packages"]["find"]["where"]:
        for package in sorted((project.root / where).iterdir()):
            if not (package / "__init__.py").is_file():
                continue
            patterns = ["**/*.py", *package_data.get(package.name, [])]
            files = {
                p.relative_to(project.root).as_posix()
                for pattern in patterns
                for p in package.glob(pattern)
                if p.is_file() and "__pycache__" not in p.parts
            }
            needed[package.relative_to(project.root).as_posix()] = files
    return needed


def check_context(dockerfile: Dockerfile, project: Project) -> list[str]:
    """What the builder copies exists, and .dockerignore keeps it (and the package's files)."""
    problems = []
    copied: set[str] = set()
    for stage in dockerfile.stages:
        for args in stage.commands("copy"):
            if args["from"]:
                continue
            for source in args["sources"]:
                path = source.strip("/")
                copied.add(path)
                if not (project.root / path).exists():
                    problems.append(f"COPY {source}: no such path in the repository")
                elif is_ignored(project.ignore, path):
                    problems.append(f"COPY {source}: left out of the context by .dockerignore")
    readme = project.pyproject["project"].get("readme")
    if isinstance(readme, dict):  # readme = {file = "...", content-type = "..."}
        readme = readme.get("file")
    for required in [readme, LOCK, "pyproject.toml"]:
        if required and required not in copied:
            problems.append(f"{required} is not copied into the builder")
    for package, files in _needed_files(project).items():
        if package not in copied:
            problems.append(f"package {package} is not copied into the builder")
        problems += [
            f"{f}: left out by .dockerignore" for f in files if is_ignored(project.ignore, f)
        ]
    return problems


CHECKS: tuple[Callable[[Dockerfile, Project], list[str]], ...] = (
    check_stages,
    check_bases,
    check_venv_copy,
    check_user,
    check_no_build_tools,
    check_environment,
    check_bytecode,
    check_extras,
    check_entrypoint,
    check_version,
    check_context,
)


# ---- the real files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile(deploy_check: Path) -> Dockerfile:
    return parse_dockerfile(deploy_check, DOCKERFILE)


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project()


@pytest.mark.parametrize(
    "check",
    [
        (
            pytest.param(check, marks=pytest.mark.reliability("non-root"), id=check.__name__)
            if check is check_user
            else pytest.param(check, id=check.__name__)
        )
        for check in CHECKS
    ],
)
def test_dockerfile(
    check: Callable[[Dockerfile, Project], list[str]], dockerfile: Dockerfile, project: Project
) -> None:
    assert check(dockerfile, project) == []


def test_extras_of_the_images(dockerfile: Dockerfile) -> None:
    # Stated outright, not only through FINAL_STAGES: the slim image holds no torch.
    assert installed_extras(dockerfile, "control") == {"server", "operator"}
    assert installed_extras(dockerfile, "worker") == {"server", "train"}


def test_lock_pins_what_the_images_install(project: Project) -> None:
    # The lock is used as constraints, which pin only what it names: every direct requirement
    # of the images' extras must be in it, or that package would float at build time.
    pins = {}
    for line in (project.root / LOCK).read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            pins[canonicalize_name(match.group(1))] = match.group(2)
    requirements = list(project.pyproject["project"]["dependencies"])
    for extra in ("server", "operator", "train"):
        requirements += project.extras[extra]
    unpinned = []
    for text in requirements:
        requirement = Requirement(text)
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None or not requirement.specifier.contains(pin, prereleases=True):
            unpinned.append(f"{text} (lock: {pin})")
    assert unpinned == []


def test_dockerignore_keeps_the_context_small(project: Project) -> None:
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/conftest.py",
        "benchmarks/results/operator_reconcile.json",
        "docs/image.md",
        "src/esper/__pycache__/cli.cpython-312.pyc",
        "esper.egg-info/PKG-INFO",
        "helm/esper/Chart.yaml",
    ):
        assert is_ignored(project.ignore, path), path
    for path in ("pyproject.toml", "README.md", LOCK, "src/esper/cli.py"):
        assert not is_ignored(project.ignore, path), path


# ---- the checks can fail -------------------------------------------------------------------


def test_dockerignore_matcher() -> None:
    patterns = read_dockerignore("# c\n*\n!src/pkg\n**/__pycache__\n/build/\n*.tmp\n")
    assert patterns == ("*", "!src/pkg", "**/__pycache__", "build", "*.tmp")
    assert is_ignored(patterns, "README.md")
    assert is_ignored(patterns, "src/other.py")  # its parent src matches *
    assert not is_ignored(patterns, "src/pkg/a.py")
    assert is_ignored(patterns, "src/pkg/__pycache__/a.pyc")
    assert is_ignored(patterns, "__pycache__/a.pyc")
    assert is_ignored(("a/*.py",), "a/c.py")
    assert not is_ignored(("a/*.py",), "a/b/c.py")  # * stops at a slash
    assert is_ignored(("a/**/c.py",), "a/c.py")
    assert is_ignored(("a/**/c.py",), "a/x/y/c.py")
    assert not is_ignored(("a/?.py",), "a/bc.py")
    assert is_ignored(("a/[!x].py",), "a/b.py")
    assert not is_ignored(("a/[!x].py",), "a/x.py")


def test_lint_warnings_fail_the_build(deploy_check: Path, tmp_path: Path) -> None:
    # The Dockerfile's "# check=error=true" makes BuildKit's warnings errors, in `docker build`
    # and here: a shell-form ENTRYPOINT (SIGTERM would go to /bin/sh, not esper) is one.
    text = DOCKERFILE.read_text()
    assert text.count('ENTRYPOINT ["esper"]') == len(FINAL_STAGES)
    path = tmp_path / "Dockerfile"
    path.write_text(text.replace('ENTRYPOINT ["esper"]', "ENTRYPOINT esper"))
    with pytest.raises(DockerfileError, match="JSONArgsRecommended"):
        parse_dockerfile(deploy_check, path)


def test_deploy_check_rejects_a_missing_stage(deploy_check: Path, tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(f"FROM {PYTHON_IMAGE} AS a\nCOPY --from=nowhere /x /x\n")
    with pytest.raises(DockerfileError, match="nowhere"):
        parse_dockerfile(deploy_check, path)


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A broken copy of the Dockerfile and the problem a check must report for it.

    Attributes:
        name: What is broken (the test id).
        old: Text of the real Dockerfile (every occurrence is replaced).
        new: Its replacement.
        check: The check that must notice.
        expected: Words of the problem it must report.
    """

    name: str
    old: str
    new: str
    check: Callable[[Dockerfile, Project], list[str]]
    expected: str


MUTANTS = [
    Mutant("root user", "USER 1000:1000", "USER root", check_user, "USER root"),
    Mutant("no user", "USER 1000:1000\n", "", check_user, "sets no USER"),
    Mutant("named user", "USER 1000:1000", "USER esper", check_user, "USER esper"),
    Mutant(
        "gcc in control",
        "COPY --from=control-venv",
        "RUN apt-get update && apt-get install -y gcc\nCOPY --from=control-venv",
        check_no_build_tools,
        "'control' installs Debian packages ['gcc']",
    ),
    Mutant(
        "build-essential in worker",
        "dataset-fashion-mnist g++",
        "dataset-fashion-mnist build-essential g++",
        check_no_build_tools,
        "build tools ['build-essential']",
    ),
    Mutant(
        "pip in a final",
        "ENTRYPOINT",
        "RUN python -m pip install --no-cache-dir uv\nENTRYPOINT",
        check_no_build_tools,
        "installs Python packages",
    ),
    Mutant(
        "pip kept",
        "python -m pip uninstall",
        "python -m pip list",
        check_no_build_tools,
        "keeps the base image's pip",
    ),
    Mutant(
        "torch in control",
        '".[server,operator]"',
        '".[server,operator,train]"',
        check_extras,
        "'control' installs the extras ['train']",
    ),
    Mutant(
        "unknown extra",
        '".[server,train]"',
        '".[server,train,gpu]"',
        check_extras,
        "extra 'gpu' is not in pyproject",
    ),
    Mutant(
        "no constraints",
        "--constraints requirements/dev.lock --build-constraints requirements/dev.lock \\\n"
        '        ".[server,train]"',
        '".[server,train]"',
        check_extras,
        "'worker-venv' installs without --constraints",
    ),
    Mutant(
        "final on the builder",
        "FROM runtime AS control",
        "FROM control-venv AS control",
        check_bases,
        "'control' is built on 'builder'",
    ),
    Mutant(
        "unpinned base",
        f"FROM {PYTHON_IMAGE} AS runtime",
        "FROM python:latest AS runtime",
        check_bases,
        "starts from python:latest",
    ),
    Mutant(
        "sources in a final",
        "COPY --from=worker-venv /opt/esper/venv /opt/esper/venv",
        "COPY --from=worker-venv /opt/esper/venv /opt/esper/venv\nCOPY src /src",
        check_venv_copy,
        "COPY ['src'] from the build context",
    ),
    Mutant(
        "cache on the root fs",
        "TRITON_CACHE_DIR=/tmp/",
        "TRITON_CACHE_DIR=/root/",
        check_environment,
        "TRITON_CACHE_DIR",
    ),
    Mutant(
        "bytecode written",
        "PYTHONDONTWRITEBYTECODE=1 \\\n    PYTHONUNBUFFERED",
        "PYTHONUNBUFFERED",
        check_environment,
        "PYTHONDONTWRITEBYTECODE",
    ),
    Mutant(
        "entrypoint through a shell",
        'ENTRYPOINT ["esper"]',
        'ENTRYPOINT ["/bin/sh", "-c", "esper"]',
        check_entrypoint,
        "not exec form ['esper']",
    ),
    Mutant(
        "healthcheck",
        "USER 1000:1000",
        "USER 1000:1000\nHEALTHCHECK CMD esper --version",
        check_entrypoint,
        "HEALTHCHECK",
    ),
    Mutant(
        "stale version", "ARG VERSION=", "ARG VERSION=9.9.9\nARG OLD=", check_version, "'9.9.9'"
    ),
    Mutant(
        "no stdlib bytecode",
        "/usr/local/lib/python3.12\n",
        "/usr/local/lib/python3.12/site-packages\n",
        check_bytecode,
        "standard library",
    ),
    Mutant(
        "missing source",
        "COPY requirements/dev.lock requirements/dev.lock",
        "COPY requirements/dev.lock requirements/dev.lock\nCOPY LICENSE ./",
        check_context,
        "COPY LICENSE: no such path",
    ),
    Mutant(
        "worker not last",
        "FROM runtime AS worker",
        "FROM runtime AS worker\nFROM runtime AS extra",
        check_stages,
        "last stages",
    ),
]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.name)
def test_checks_catch_a_broken_dockerfile(
    deploy_check: Path, project: Project, tmp_path: Path, mutant: Mutant
) -> None:
    text = DOCKERFILE.read_text()
    assert mutant.old in text, f"the mutant's anchor {mutant.old!r} is gone from the Dockerfile"
    path = tmp_path / "Dockerfile"
    path.write_text(text.replace(mutant.old, mutant.new))
    problems = mutant.check(parse_dockerfile(deploy_check, path), project)
    assert any(mutant.expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("extra_pattern", "expected"),
    [
        ("src/esper/urza/migrations", "script.py.mako: left out"),
        ("**/*.typed", "py.typed: left out"),
        ("README.md", "COPY README.md: left out"),
    ],
)
def test_checks_catch_a_broken_dockerignore(
    dockerfile: Dockerfile, project: Project, extra_pattern: str, expected: str
) -> None:
    broken = dataclasses.replace(project, ignore=(*project.ignore, extra_pattern))
    problems = check_context(dockerfile, broken)
    assert any(expected in problem for problem in problems), problems
