"""Run one forge work unit in a worker process, with a timeout, retries and backoff.

A unit is the same command a Kubernetes Job runs (``esper tezzeret compile ...`` or
``esper urabrask bench ...``), so the local forge and the cluster exercise one code path. A
worker that crashes or hangs is killed (its whole process group) and the unit retried; after the
last attempt the kernel is left Failed with the reason, never stuck in Compiling or Validating.
"""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.contracts.urza_api import PhaseChange
from esper.urza.client import UrzaClient, UrzaConflictError

LOGGER = logging.getLogger("esper.forge")


class UnitKind(StrEnum):
    """What a unit does."""

    COMPILE = "compile"
    VALIDATE = "validate"


@dataclass(frozen=True)
class WorkUnit:
    """One piece of forge work on one kernel.

    Attributes:
        kind: Compile or validate.
        kernel_id: The kernel (also the unit's identity: one unit per kernel at a time).
        blueprint_hash: The blueprint (compile only needs it).
        target: The target (compile only needs it).
    """

    kind: UnitKind
    kernel_id: str
    blueprint_hash: str
    target: KernelTarget

    def command(self, executable: str, compile_cache: bool = True) -> list[str]:
        """Return the worker command line.

        Args:
            executable: The Python interpreter that runs ``esper``.
            compile_cache: Whether compile units ship the compile cache.

        Returns:
            The argv list.
        """
        base = [executable, "-m", "esper"]
        if self.kind is UnitKind.COMPILE:
            return [
                *base,
                "tezzeret",
                "compile",
                "--blueprint",
                self.blueprint_hash,
                "--target",
                self.target.short(),
                "--compile-cache" if compile_cache else "--no-compile-cache",
            ]
        return [*base, "urabrask", "bench", "--kernel", self.kernel_id]


@dataclass(frozen=True)
class RunnerOptions:
    """Limits of unit execution.

    Attributes:
        timeout_seconds: Longest a worker may run before it is killed.
        max_attempts: Attempts per unit before the kernel is left Failed.
        backoff_seconds: Wait before the first retry; doubled for each further one.
        python: The interpreter that runs the workers.
        extra_env: Environment variables added to the workers' (Urza's URL and token).
        compile_cache: Whether compile units ship the compile cache.
    """

    timeout_seconds: float = 1800.0
    max_attempts: int = 3
    backoff_seconds: float = 5.0
    python: str = sys.executable
    extra_env: Mapping[str, str] | None = None
    compile_cache: bool = True


@dataclass(frozen=True)
class UnitOutcome:
    """How a unit ended.

    Attributes:
        unit: The unit.
        succeeded: Whether a worker finished it.
        attempts: Attempts made.
        error: The last failure, when it did not succeed.
    """

    unit: WorkUnit
    succeeded: bool
    attempts: int
    error: str | None


class UnitRunner:
    """Runs units in worker processes and repairs kernel state after a crashed worker.

    Args:
        client: Urza's client (for repairing phases).
        options: Limits.
        sleep: Waits between attempts.
    """

    def __init__(
        self,
        client: UrzaClient,
        options: RunnerOptions,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Create the runner (see the class docstring)."""
        if options.max_attempts < 1 or options.timeout_seconds <= 0:
            raise ValueError("max_attempts must be >= 1 and timeout_seconds > 0")
        self._client = client
        self._options = options
        self._sleep = sleep
        self._live: set[subprocess.Popen[bytes]] = set()
        self._live_lock = threading.Lock()
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Start no more workers and kill the running ones (their whole process groups).

        Their kernels are left as they are (Compiling or Validating): the next forge's sweep
        finds them orphaned and resumes them.
        """
        self._stopping.set()
        with self._live_lock:
            for process in self._live:
                _kill_group(process)

    def run(self, unit: WorkUnit) -> UnitOutcome:
        """Run a unit until it succeeds or its attempts are spent.

        Args:
            unit: The unit.

        Returns:
            The outcome; on failure the kernel has been left Failed with the reason.
        """
        error = "not attempted"
        for attempt in range(1, self._options.max_attempts + 1):
            if attempt > 1:
                self._sleep(self._options.backoff_seconds * 2 ** (attempt - 2))
            if self._stopping.is_set():
                return UnitOutcome(unit, succeeded=False, attempts=attempt - 1, error="stopped")
            error_or_none = self._attempt(unit)
            if error_or_none is None:
                return UnitOutcome(unit, succeeded=True, attempts=attempt, error=None)
            if self._stopping.is_set():
                return UnitOutcome(unit, succeeded=False, attempts=attempt, error="stopped")
            error = error_or_none
            LOGGER.warning(
                "%s of %s failed (attempt %d/%d): %s",
                unit.kind.value,
                unit.kernel_id,
                attempt,
                self._options.max_attempts,
                error,
            )
            if attempt < self._options.max_attempts:
                self._release(unit, error)
        self._mark_failed(unit, f"gave up after {self._options.max_attempts} attempts: {error}")
        return UnitOutcome(unit, succeeded=False, attempts=self._options.max_attempts, error=error)

    def _attempt(self, unit: WorkUnit) -> str | None:
        # PYTHONSAFEPATH: `python -m esper` must not put the working directory on sys.path,
        # where an esper.py or esper/ folder would shadow the installed package.
        environment = {**os.environ, "PYTHONSAFEPATH": "1", **(self._options.extra_env or {})}
        process = subprocess.Popen(
            unit.command(self._options.python, self._options.compile_cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        with self._live_lock:
            self._live.add(process)
            if self._stopping.is_set():
                _kill_group(process)
        try:
            output, _ = process.communicate(timeout=self._options.timeout_seconds)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            return f"worker timed out after {self._options.timeout_seconds:g} s and was killed"
        finally:
            with self._live_lock:
                self._live.discard(process)
        if process.returncode == 0:
            return None
        tail = output.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        if process.returncode < 0:
            return f"worker killed by signal {-process.returncode}: {tail[0]}"
        return f"worker exited with status {process.returncode}: {tail[0]}"

    def _release(self, unit: WorkUnit, error: str) -> None:
        """Make a kernel a dead worker left behind retryable.

        A compile retry starts from Failed (the worker moves it back to Pending), so a kernel
        left Compiling is moved to Failed. A kernel left Validating stays there: the next
        validation attempt resumes from Validating.
        """
        kernel = self._client.get_kernel(unit.kernel_id)
        if kernel.phase is KernelPhase.COMPILING:
            self._mark_failed(unit, error)

    def _mark_failed(self, unit: WorkUnit, error: str) -> None:
        kernel = self._client.get_kernel(unit.kernel_id)
        if kernel.phase is KernelPhase.FAILED:
            return
        try:
            self._client.change_phase(
                unit.kernel_id, PhaseChange(phase=KernelPhase.FAILED, error=error[:4000])
            )
        except UrzaConflictError:
            # The kernel moved on by itself (another worker finished it): nothing to repair.
            LOGGER.info("kernel %s is %s; left as it is", unit.kernel_id, kernel.phase.value)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
