"""The forge's unit runner: worker command lines, retries with backoff, timeouts, repairs.

Workers here are a small shell program standing in for the Python interpreter
(``RunnerOptions.python``), so every path runs a real process without torch; Urza is a fake
that enforces the kernel phase table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from esper.contracts.kernel import KernelPhase
from esper.forge.runner import RunnerOptions, UnitKind, UnitRunner, WorkUnit
from tests.unit.forge.fakes import (
    BLUEPRINT_HASH,
    KERNEL_ID,
    TARGET,
    FakeUrza,
    artifact,
    install_fake_worker,
    unit,
)


class Worker:
    """The fake worker program and what it noted."""

    def __init__(self, directory: Path) -> None:
        self.program = install_fake_worker(directory)
        self.state = directory / "state"

    def options(self, mode: str, **changes: object) -> RunnerOptions:
        values: dict[str, object] = {
            "timeout_seconds": 60.0,
            "max_attempts": 3,
            "backoff_seconds": 1.5,
            "python": str(self.program),
            "extra_env": {
                "FAKE_WORKER_MODE": mode,
                "FAKE_WORKER_STATE": str(self.state),
                "ESPER_URZA_URL": "http://urza.invalid:1",
                "KERNEL": KERNEL_ID,
            },
        }
        values.update(changes)
        return RunnerOptions(**values)  # type: ignore[arg-type]

    def note(self, name: str) -> list[str]:
        path = self.state / name
        return path.read_text().splitlines() if path.exists() else []

    def attempts(self) -> int:
        return len(self.note("argv"))


@pytest.fixture
def worker(tmp_path: Path) -> Worker:
    return Worker(tmp_path)


def _runner(
    client: FakeUrza, options: RunnerOptions, waits: list[float] | None = None
) -> UnitRunner:
    return UnitRunner(client, options, sleep=(waits if waits is not None else []).append)  # type: ignore[arg-type]


# Command lines ----------------------------------------------------------------------------------


def test_compile_unit_runs_esper_tezzeret_compile() -> None:
    work = WorkUnit(UnitKind.COMPILE, KERNEL_ID, BLUEPRINT_HASH, TARGET)
    base = ["/py", "-m", "esper", "tezzeret", "compile", "--blueprint", BLUEPRINT_HASH]
    assert work.command("/py") == [
        *base,
        "--target",
        "cpu:fp32:C=16:b=1,4",
        "--compile-cache",
    ]
    assert work.command("/py", compile_cache=False)[-1] == "--no-compile-cache"


def test_validate_unit_runs_esper_urabrask_bench() -> None:
    work = WorkUnit(UnitKind.VALIDATE, KERNEL_ID, BLUEPRINT_HASH, TARGET)
    expected = ["/py", "-m", "esper", "urabrask", "bench", "--kernel", KERNEL_ID]
    assert work.command("/py") == expected
    assert work.command("/py", compile_cache=False) == expected


def test_default_interpreter_is_this_one() -> None:
    assert RunnerOptions().python == sys.executable


@pytest.mark.parametrize(
    "options",
    [RunnerOptions(max_attempts=0), RunnerOptions(timeout_seconds=0)],
    ids=["no-attempts", "no-time"],
)
def test_runner_refuses_impossible_limits(options: RunnerOptions) -> None:
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        _runner(FakeUrza(artifact(KernelPhase.PENDING)), options)


# Outcomes ---------------------------------------------------------------------------------------


def test_successful_worker_is_one_attempt(worker: Worker) -> None:
    client = FakeUrza(artifact(KernelPhase.PENDING))
    waits: list[float] = []

    outcome = _runner(client, worker.options("ok", compile_cache=False), waits).run(unit())

    assert (outcome.succeeded, outcome.attempts, outcome.error) == (True, 1, None)
    assert worker.note("argv") == [
        f"-m esper tezzeret compile --blueprint {BLUEPRINT_HASH} "
        "--target cpu:fp32:C=16:b=1,4 --no-compile-cache"
    ]
    assert worker.note("url") == ["http://urza.invalid:1"]
    assert waits == []
    assert client.changes == []


def test_failing_worker_is_retried_with_backoff_then_the_kernel_is_failed(
    worker: Worker,
) -> None:
    client = FakeUrza(artifact(KernelPhase.PENDING))
    waits: list[float] = []

    outcome = _runner(client, worker.options("fail"), waits).run(unit())

    assert not outcome.succeeded
    assert outcome.attempts == 3
    assert worker.attempts() == 3
    assert waits == [1.5, 3.0]
    assert outcome.error == "worker exited with status 3: esper: error: boom on attempt 3"
    assert client.kernel.phase is KernelPhase.FAILED
    assert client.kernel.error == f"gave up after 3 attempts: {outcome.error}"
    assert [change.phase for change in client.changes] == [KernelPhase.FAILED]


def test_worker_that_fails_once_succeeds_on_the_retry(worker: Worker) -> None:
    client = FakeUrza(artifact(KernelPhase.PENDING))
    waits: list[float] = []

    outcome = _runner(client, worker.options("flaky", backoff_seconds=0.25), waits).run(unit())

    assert (outcome.succeeded, outcome.attempts) == (True, 2)
    assert waits == [0.25]
    assert client.changes == []


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("silent", "worker exited with status 2: no output"),
        ("signal", "worker killed by signal 9: no output"),
    ],
)
def test_failure_reason_names_the_exit(worker: Worker, mode: str, error: str) -> None:
    client = FakeUrza(artifact(KernelPhase.PENDING))

    outcome = _runner(client, worker.options(mode, max_attempts=1)).run(unit())

    assert outcome.error == error
    assert client.kernel.error == f"gave up after 1 attempts: {error}"


def test_hung_worker_is_killed_with_its_whole_process_group(worker: Worker) -> None:
    client = FakeUrza(artifact(KernelPhase.PENDING))
    started = time.monotonic()

    outcome = _runner(client, worker.options("hang", timeout_seconds=1, max_attempts=1)).run(unit())

    assert time.monotonic() - started < 30
    assert outcome.error == "worker timed out after 1 s and was killed"
    assert (
        client.kernel.error == "gave up after 1 attempts: worker timed out after 1 s and was killed"
    )
    for note in ("leader", "child"):
        (pid,) = worker.note(note)
        assert not _alive(int(pid)), f"the worker's {note} survived"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_worker_does_not_run_code_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m esper`` must run the installed esper, not an ``esper`` the cwd happens to hold.

    A forge started in a directory holding ``esper.py`` (or an ``esper/`` folder, such as a
    checkout, which shadows an editable install) must not execute it in its workers.
    """
    (tmp_path / "esper.py").write_text(
        "import pathlib\npathlib.Path('hijacked').write_text('ran')\nraise SystemExit(7)\n"
    )
    monkeypatch.chdir(tmp_path)
    client = FakeUrza(artifact(KernelPhase.COMPILED))
    options = RunnerOptions(
        timeout_seconds=120,
        max_attempts=1,
        extra_env={"ESPER_URZA_URL": "http://127.0.0.1:9"},  # nothing listens: fails fast
    )

    outcome = _runner(client, options).run(unit(UnitKind.VALIDATE))

    assert not (tmp_path / "hijacked").exists(), outcome.error
    assert outcome.error is not None
    assert "status 7" not in outcome.error


# Repairs ----------------------------------------------------------------------------------------


def test_kernel_left_compiling_by_a_dead_worker_is_released_for_the_retry(
    worker: Worker,
) -> None:
    # The fake Urza plays the compile worker: each attempt moves Failed -> Pending -> Compiling.
    client = FakeUrza(artifact(KernelPhase.PENDING), worker_state=worker.state)
    waits: list[float] = []

    outcome = _runner(client, worker.options("fail", max_attempts=2), waits).run(unit())

    assert outcome.attempts == 2
    assert client.history == [
        KernelPhase.COMPILING,
        KernelPhase.FAILED,  # released after attempt 1, so that attempt 2 can start
        KernelPhase.PENDING,
        KernelPhase.COMPILING,
        KernelPhase.FAILED,
    ]
    assert client.changes[0].error == (
        "worker exited with status 3: esper: error: boom on attempt 1"
    )
    # After the last attempt the recorded reason says that the forge gave up.
    assert client.kernel.error == (
        "gave up after 2 attempts: worker exited with status 3: esper: error: boom on attempt 2"
    )


def test_kernel_left_validating_stays_there_until_the_last_attempt(worker: Worker) -> None:
    client = FakeUrza(artifact(KernelPhase.VALIDATING))

    outcome = _runner(client, worker.options("fail", max_attempts=2)).run(unit(UnitKind.VALIDATE))

    assert outcome.attempts == 2
    assert [change.phase for change in client.changes] == [KernelPhase.FAILED]
    assert client.kernel.error == f"gave up after 2 attempts: {outcome.error}"


def test_kernel_that_moved_on_meanwhile_is_left_as_it_is(worker: Worker) -> None:
    client = FakeUrza(artifact(KernelPhase.COMPILED), conflict=True)

    outcome = _runner(client, worker.options("fail", max_attempts=1)).run(unit(UnitKind.VALIDATE))

    assert not outcome.succeeded
    assert client.kernel.phase is KernelPhase.COMPILED


def test_kernel_already_failed_is_not_touched_again(worker: Worker) -> None:
    client = FakeUrza(artifact(KernelPhase.FAILED, error="failed earlier"))

    _runner(client, worker.options("fail", max_attempts=1)).run(unit())

    assert client.changes == []
    assert client.kernel.error == "failed earlier"
