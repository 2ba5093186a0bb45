"""The forge's scheduler: targets per blueprint, one unit per kernel, events, sweeps, chaining.

Units go to stand-in runners (no worker processes); Urza is real where the forge reads and
writes it (embedded default, served over HTTP, in this process).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.blueprints.library import builtin
from esper.blueprints.targets import target_for
from esper.contracts.events import Topic
from esper.contracts.kernel import KernelPhase, KernelTarget, kernel_id
from esper.contracts.urza_api import PhaseChange
from esper.forge.runner import UnitKind, WorkUnit
from esper.forge.scheduler import Forge, ForgeOptions
from esper.oona import InProcessBus
from esper.urza.client import UrzaClient
from tests.integration.phase1.support import RunningUrza, embedded_settings, serving, wait_for
from tests.unit.forge.fakes import (
    KERNEL_ID,
    CrashingRunner,
    FakeUrza,
    GatedRunner,
    artifact,
    unit,
)

WIDE = KernelTarget.parse("cpu:fp32:C=16,H=8,T=8,W=8:b=1,4")
EIGHTEEN = KernelTarget.parse("cpu:fp32:C=18,T=8:b=1,4")  # 18 channels do not split in 4 heads
ONLY_H = KernelTarget.parse("cpu:fp32:H=8:b=1,4")
TOPICS = (Topic.BLUEPRINT_SUBMITTED, Topic.KERNEL_PHASE_CHANGED)


def _forge(client: object, runner: object, *targets: KernelTarget, **options: object) -> Forge:
    return Forge(client, runner, ForgeOptions(targets=targets, **options))  # type: ignore[arg-type]


def _idle(forge: Forge) -> None:
    wait_for(forge.busy, lambda busy: not busy, timeout=30, what="the forge to be idle")


@pytest.fixture
def urza(tmp_path: Path) -> Iterator[RunningUrza]:
    with serving(embedded_settings(tmp_path)) as running:
        yield running


# Targets ----------------------------------------------------------------------------------------


def test_target_is_restricted_to_the_symbols_of_the_blueprint() -> None:
    restricted = target_for(builtin("low-rank-adapter"), WIDE)
    assert restricted == WIDE.model_copy(update={"bindings": {"C": 16}})
    image = target_for(builtin("residual-conv3x3"), WIDE)
    assert image is not None
    assert image.bindings == {"C": 16, "H": 8, "W": 8}
    assert image.batch_sizes == WIDE.batch_sizes


def test_target_that_leaves_a_symbol_unbound_is_skipped() -> None:
    assert target_for(builtin("low-rank-adapter"), ONLY_H) is None
    assert target_for(builtin("self-attention"), KernelTarget.parse("cpu:fp32:C=16")) is None


def test_target_whose_sizes_break_the_blueprint_is_skipped() -> None:
    assert target_for(builtin("self-attention"), EIGHTEEN) is None
    assert target_for(builtin("low-rank-adapter"), EIGHTEEN) is not None


def test_forge_refuses_impossible_options() -> None:
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        _forge(FakeUrza(artifact(KernelPhase.PENDING)), GatedRunner(), concurrency=0)
    with pytest.raises(ValueError, match="sweep_seconds > 0"):
        _forge(FakeUrza(artifact(KernelPhase.PENDING)), GatedRunner(), sweep_seconds=0)


# One unit per kernel ----------------------------------------------------------------------------


def test_submit_runs_one_unit_per_kernel_at_a_time() -> None:
    runner = GatedRunner()
    forge = _forge(FakeUrza(artifact(KernelPhase.PENDING)), runner, concurrency=2)
    other = kernel_id("ef" * 32, KernelTarget.parse("cpu:fp32:C=16:b=1,4"))
    try:
        assert forge.submit(unit()) is True
        assert forge.submit(unit()) is False
        assert forge.submit(unit(UnitKind.VALIDATE)) is False  # same kernel, other kind
        assert forge.submit(unit(kernel=other)) is True
        assert forge.busy()
        wait_for(runner.units, lambda units: len(units) == 2, timeout=30, what="both units")
        runner.gate.set()
        _idle(forge)
        assert len(forge.outcomes) == 2
        assert forge.submit(unit()) is True  # done, so it may run again
        _idle(forge)
    finally:
        runner.gate.set()
        forge.stop()
    assert runner.units() == [
        (UnitKind.COMPILE, KERNEL_ID),
        (UnitKind.COMPILE, other),
        (UnitKind.COMPILE, KERNEL_ID),
    ]


def test_successful_compile_is_chained_to_its_validation() -> None:
    runner = GatedRunner(succeed=True, gated=False)
    client = FakeUrza(artifact(KernelPhase.COMPILED))
    forge = _forge(client, runner)
    try:
        forge.submit(unit())
        wait_for(runner.units, lambda units: len(units) == 2, timeout=30, what="the chain")
        _idle(forge)
    finally:
        forge.stop()
    assert runner.units() == [(UnitKind.COMPILE, KERNEL_ID), (UnitKind.VALIDATE, KERNEL_ID)]


def test_crashing_runner_does_not_wedge_the_kernel(caplog: pytest.LogCaptureFixture) -> None:
    forge = _forge(FakeUrza(artifact(KernelPhase.PENDING)), CrashingRunner())
    caplog.set_level(logging.ERROR, logger="esper.forge")
    try:
        assert forge.submit(unit())
        _idle(forge)
        assert forge.outcomes == []
        assert forge.submit(unit())  # the kernel is not held by the crashed unit
        _idle(forge)
    finally:
        forge.stop()
    assert f"forge unit {KERNEL_ID} crashed: runner bug on {KERNEL_ID}" in caplog.messages


def test_nothing_is_scheduled_after_stop() -> None:
    """A sweep or an event handled while the forge stops must not crash its thread."""
    runner = GatedRunner(gated=False)
    forge = _forge(FakeUrza(artifact(KernelPhase.PENDING)), runner)
    forge.stop()

    assert forge.submit(unit()) is False
    assert runner.units() == []


def test_stopping_cancels_queued_units_quietly(caplog: pytest.LogCaptureFixture) -> None:
    runner = GatedRunner()
    forge = _forge(FakeUrza(artifact(KernelPhase.PENDING)), runner)  # one unit at a time
    queued = kernel_id("ef" * 32, KernelTarget.parse("cpu:fp32:C=16:b=1,4"))
    assert forge.submit(unit())
    assert forge.submit(unit(kernel=queued))
    wait_for(runner.units, lambda units: len(units) == 1, timeout=30, what="the first unit")
    caplog.set_level(logging.ERROR)

    forge.stop(wait=False)
    runner.gate.set()
    _idle(forge)
    forge.stop(wait=True)

    assert runner.units() == [(UnitKind.COMPILE, KERNEL_ID)]  # the queued unit never ran
    assert [record.getMessage() for record in caplog.records] == []


# Reconciliation ---------------------------------------------------------------------------------


def _register(client: UrzaClient, name: str, target: KernelTarget) -> str:
    record = client.submit_blueprint(builtin(name))
    return client.create_kernel(record.hash, target).id


def _move(client: UrzaClient, identifier: str, *phases: KernelPhase) -> None:
    for phase in phases:
        if phase is KernelPhase.COMPILED:
            client.upload_artifact(identifier, identifier.encode())
        error = "failed" if phase is KernelPhase.FAILED else None
        client.change_phase(identifier, PhaseChange(phase=phase, error=error))


def test_sweep_registers_default_kernels_for_every_blueprint(urza: RunningUrza) -> None:
    client = urza.client()
    hashes = {
        name: client.submit_blueprint(builtin(name)).hash
        for name in ("low-rank-adapter", "self-attention", "residual-conv3x3")
    }
    runner = GatedRunner()  # units stay in flight through the sweep: one per kernel
    forge = _forge(urza.client(), runner, WIDE, EIGHTEEN, ONLY_H, concurrency=4)

    try:
        forge.sweep()
        wait_for(runner.units, lambda units: len(units) == 4, timeout=30, what="four units")
    finally:
        runner.gate.set()
        forge.stop()

    expected = {
        kernel_id(hashes["low-rank-adapter"], KernelTarget.parse("cpu:fp32:C=16:b=1,4")),
        kernel_id(hashes["low-rank-adapter"], KernelTarget.parse("cpu:fp32:C=18:b=1,4")),
        kernel_id(hashes["self-attention"], KernelTarget.parse("cpu:fp32:C=16,T=8:b=1,4")),
        kernel_id(hashes["residual-conv3x3"], KernelTarget.parse("cpu:fp32:C=16,H=8,W=8:b=1,4")),
    }
    kernels = client.list_kernels().items
    assert {kernel.id for kernel in kernels} == expected
    assert {kernel.phase for kernel in kernels} == {KernelPhase.PENDING}
    assert sorted(runner.units()) == sorted((UnitKind.COMPILE, item) for item in expected)


def test_sweep_schedules_work_and_releases_orphans(urza: RunningUrza) -> None:
    client = urza.client()
    target = KernelTarget.parse("cpu:fp32:C=16:b=1,4")
    pending = _register(client, "low-rank-adapter", target)
    compiled = _register(client, "bottleneck-mlp", target)
    _move(client, compiled, KernelPhase.COMPILING, KernelPhase.COMPILED)
    compiling = _register(client, "residual-mlp", target)
    _move(client, compiling, KernelPhase.COMPILING)
    validating = _register(client, "widening-branch", target)
    _move(client, validating, KernelPhase.COMPILING, KernelPhase.COMPILED, KernelPhase.VALIDATING)
    failed = _register(client, "self-attention", KernelTarget.parse("cpu:fp32:C=16,T=8:b=1,4"))
    _move(client, failed, KernelPhase.FAILED)
    runner = GatedRunner()
    forge = _forge(urza.client(), runner, concurrency=4)  # no default targets

    try:
        forge.sweep()
        wait_for(runner.units, lambda units: len(units) == 4, timeout=30, what="four units")
    finally:
        runner.gate.set()
        forge.stop()

    assert sorted(runner.units()) == sorted(
        [
            (UnitKind.COMPILE, pending),
            (UnitKind.VALIDATE, compiled),
            (UnitKind.COMPILE, compiling),
            (UnitKind.VALIDATE, validating),
        ]
    )
    orphan = client.get_kernel(compiling)
    assert orphan.phase is KernelPhase.FAILED  # released; the compile worker retries from here
    assert orphan.error == "orphaned while Compiling: no worker holds it (forge restarted)"
    assert client.get_kernel(validating).phase is KernelPhase.VALIDATING
    assert client.get_kernel(failed).phase is KernelPhase.FAILED


def test_sweep_leaves_kernels_its_own_units_hold(urza: RunningUrza) -> None:
    client = urza.client()
    identifier = _register(client, "low-rank-adapter", KernelTarget.parse("cpu:fp32:C=16:b=1,4"))
    kernel = client.get_kernel(identifier)
    runner = GatedRunner()
    forge = _forge(urza.client(), runner)
    try:
        forge.submit(WorkUnit(UnitKind.COMPILE, identifier, kernel.blueprint_hash, kernel.target))
        _move(client, identifier, KernelPhase.COMPILING)  # the unit's worker is compiling

        forge.sweep()

        assert client.get_kernel(identifier).phase is KernelPhase.COMPILING
        assert runner.units() == [(UnitKind.COMPILE, identifier)]
    finally:
        runner.gate.set()
        forge.stop()


# Events -----------------------------------------------------------------------------------------


def test_events_schedule_work_and_are_acknowledged(tmp_path: Path) -> None:
    bus = InProcessBus()
    with bus, serving(embedded_settings(tmp_path), forward=bus.publish) as urza:
        runner = GatedRunner()
        forge = Forge(
            urza.client(),
            runner,  # type: ignore[arg-type]
            ForgeOptions(targets=(WIDE,)),
            bus=bus,
        )
        subscription = bus.subscribe(TOPICS, "forge", "forge-under-test")
        try:
            record = urza.client().submit_blueprint(builtin("low-rank-adapter"))
            expected = kernel_id(record.hash, KernelTarget.parse("cpu:fp32:C=16:b=1,4"))
            # The submission registers the kernel; its Pending event, handled next, adds no
            # duplicate unit while the first one runs.
            assert forge.handle_events(subscription, block_ms=1000) == 1
            assert forge.handle_events(subscription, block_ms=1000) == 1
            assert forge.handle_events(subscription, block_ms=0) == 0
            assert runner.units() == [(UnitKind.COMPILE, expected)]
            for topic in TOPICS:
                assert bus.pending_count(topic, "forge") == 0
        finally:
            runner.gate.set()
            forge.stop()
            subscription.close()


def test_forge_without_events_still_picks_up_work_by_sweeping(urza: RunningUrza) -> None:
    runner = GatedRunner(gated=False)
    forge = _forge(urza.client(), runner, WIDE, sweep_seconds=0.5)
    thread = threading.Thread(target=forge.run, daemon=True)
    thread.start()
    try:
        record = urza.client().submit_blueprint(builtin("bottleneck-mlp"))
        expected = kernel_id(record.hash, KernelTarget.parse("cpu:fp32:C=16:b=1,4"))
        wait_for(
            runner.units,
            lambda units: (UnitKind.COMPILE, expected) in units,
            timeout=30,
            what="a sweep to schedule the missed blueprint",
        )
    finally:
        forge.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_forge_keeps_sweeping_while_urza_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = UrzaClient("http://127.0.0.1:9", retries=0, timeout=2.0)
    forge = _forge(client, GatedRunner(), WIDE, sweep_seconds=0.5)
    caplog.set_level(logging.WARNING, logger="esper.forge")
    thread = threading.Thread(target=forge.run, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: [m for m in caplog.messages if m.startswith("forge sweep failed")],
            lambda failures: len(failures) >= 2,
            timeout=30,
            what="two failed sweeps",
        )
        assert thread.is_alive()
    finally:
        forge.stop()
        thread.join(10)
        client.close()
    assert not thread.is_alive()
