"""The ``esper`` command line."""

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

import esper
from esper import cli
from esper.cli import app
from esper.crds.generate import rendered_files
from esper.crds.schema import SchemaConversionError
from esper.urza.client import UrzaError

REPO = Path(__file__).resolve().parents[2]

EXPECTED_COMMANDS = {
    "run",
    "up",
    "forge",
    "operator",
    "bench",
    "urza serve",
    "urza migrate",
    "tezzeret compile",
    "urabrask bench",
    "crds generate",
}


def _commands(typer_app: typer.Typer, prefix: str = "") -> dict[str, Callable[..., Any]]:
    """Every leaf command of a Typer app, by its full name, with its Python function."""
    found: dict[str, Callable[..., Any]] = {}
    for info in typer_app.registered_commands:
        assert info.callback is not None
        name = info.name or info.callback.__name__.replace("_", "-")
        found[f"{prefix}{name}"] = info.callback
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        found |= _commands(group.typer_instance, f"{prefix}{group.name} ")
    return found


COMMANDS = _commands(app)
# Commands whose component has not landed yet (they call cli.not_implemented). Computed, so the
# list shrinks as components land and an implemented command (a server!) is never started here.
UNIMPLEMENTED = sorted(
    name for name, function in COMMANDS.items() if "not_implemented" in function.__code__.co_names
)


def required_arguments(name: str) -> list[str]:
    """Placeholder values for a command's required arguments and options."""
    command: Any = typer.main.get_command(app)
    for part in name.split():
        command = command.commands[part]
    args = []
    for param in command.params:
        if not param.required:
            continue
        value = "1" if param.bare_type is int else "placeholder"
        args += [value] if param.param_type_name == "argument" else [param.opts[0], value]
    return args


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"esper {esper.__version__}\n"


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in [
        "run",
        "up",
        "forge",
        "operator",
        "bench",
        "urza",
        "tezzeret",
        "urabrask",
        "crds",
    ]:
        assert f" {command} " in result.output, command
    assert "--version" in result.output


@pytest.mark.parametrize(
    ("group", "commands"),
    [
        ("urza", ["serve", "migrate"]),
        ("tezzeret", ["compile"]),
        ("urabrask", ["bench"]),
        ("crds", ["generate"]),
    ],
)
def test_group_help_lists_its_commands(runner: CliRunner, group: str, commands: list[str]) -> None:
    result = runner.invoke(app, [group, "--help"])
    assert result.exit_code == 0
    for command in commands:
        assert f" {command} " in result.output


def test_no_arguments_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert result.exit_code in (0, 2)
    assert "Usage: esper" in result.output
    assert " crds " in result.output


def test_every_designed_command_exists() -> None:
    assert set(COMMANDS) >= EXPECTED_COMMANDS
    assert "crds generate" not in UNIMPLEMENTED
    assert set(UNIMPLEMENTED) <= set(COMMANDS)


@pytest.mark.parametrize("command", UNIMPLEMENTED)
def test_unimplemented_commands_fail_with_one_line(runner: CliRunner, command: str) -> None:
    result = runner.invoke(app, [*command.split(), *required_arguments(command)])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"esper: error: 'esper {command}' is not implemented yet; ")


@pytest.mark.parametrize(
    "args", [["tezzeret", "compile", "--blueprint", "x"], ["urabrask", "bench"], ["bench"]]
)
def test_missing_required_arguments_are_usage_errors(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "Missing" in result.output


def test_check_of_an_empty_directory_names_the_missing_files(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["crds", "generate", "--check", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    for name in rendered_files():
        assert f"{tmp_path / name}: missing" in result.stderr
    assert f"esper: error: {len(rendered_files())} CRD file(s) differ" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_generate_then_check(runner: CliRunner, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    result = runner.invoke(app, ["crds", "generate", "--dir", str(first), "--dir", str(second)])
    assert result.exit_code == 0, result.output
    for directory in (first, second):
        for name in rendered_files():
            assert f"wrote {directory / name}" in result.stdout
            assert (directory / name).is_file()
    result = runner.invoke(
        app, ["crds", "generate", "--check", "--dir", str(first), "--dir", str(second)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"CRDs are current in {first}, {second}.\n"


def test_check_reports_an_edited_file(runner: CliRunner, tmp_path: Path) -> None:
    assert runner.invoke(app, ["crds", "generate", "--dir", str(tmp_path)]).exit_code == 0
    edited = tmp_path / sorted(rendered_files())[0]
    edited.write_text("edited\n")
    result = runner.invoke(app, ["crds", "generate", "--check", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{edited}: differs" in result.stderr
    assert "1 CRD file(s) differ" in result.stderr


def test_check_defaults_to_the_repository_directories(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["crds", "generate", "--check"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "CRDs are current in crds, helm/esper/crds.\n"


def test_generation_errors_are_reported_in_one_line(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(directories: list[Path]) -> list[Path]:
        raise SchemaConversionError(
            ".spec.x: a union of ['number', 'string'] has no structural form"
        )

    monkeypatch.setattr(cli, "write_crds", broken)
    result = runner.invoke(app, ["crds", "generate", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == (
        "esper: error: .spec.x: a union of ['number', 'string'] has no structural form\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_bad_target_is_reported_with_the_grammar(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as caught:
        cli._parse_target("gpu:fp32")
    assert caught.value.exit_code == 1
    error = capsys.readouterr().err
    assert error.startswith("esper: error: invalid kernel target 'gpu:fp32': expected DEVICE[@CC]")
    assert cli._parse_target("cpu:fp32:C=8").bindings == {"C": 8}


def test_a_failed_work_unit_is_reported_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def urza_down() -> Any:
        raise UrzaError("Urza at http://127.0.0.1:1 is unreachable")

    def worker_crash() -> Any:
        raise RuntimeError("out of memory")

    for unit, line in (
        (urza_down, "esper: error: Urza at http://127.0.0.1:1 is unreachable\n"),
        (worker_crash, "esper: error: RuntimeError: out of memory\n"),
    ):
        with pytest.raises(typer.Exit) as caught:
            cli._run_unit(unit)
        assert caught.value.exit_code == 1
        assert capsys.readouterr().err == line


def test_a_unit_stopped_by_sigterm_exits_143() -> None:
    # A Job container's PID 1 ignores SIGTERM unless it handles it.
    def stopped() -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the unit")

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as caught:
            cli._run_unit(stopped)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert caught.value.code == 143


def test_main_runs_the_app(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["esper", "--version"])
    with pytest.raises(SystemExit) as caught:
        cli.main()
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"esper {esper.__version__}\n"
