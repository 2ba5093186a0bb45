"""The kernel catalog: slot targets, registering kernels in Urza, and polling them until loaded.

Registration runs against a real Urza (the embedded flavour, served in-process); the catalog's
polling runs against a scripted client and loader, so each test controls phases and loads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.blueprints.library import builtin
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import DeviceKind, DType, KernelArtifact, KernelPhase, kernel_id
from esper.contracts.seed import SlotDescriptor
from esper.kasmina.loader import LoadedKernel
from esper.tolaria import catalog as catalog_module
from esper.tolaria.catalog import (
    KERNEL_BATCH_SIZES,
    KernelCatalog,
    WantedKernel,
    register_kernels,
    slot_target,
)
from esper.urza.client import UrzaUnavailableError
from tests.integration.phase1.support import RunningUrza, embedded_settings, serving
from tests.unit.tolaria.support import loaded_kernel, validated_artifact


def features(slot_id: str, width: int) -> SlotDescriptor:
    return SlotDescriptor(
        slot_id=slot_id,
        module_path=slot_id,
        module_type="Linear",
        channels=width,
        layout="features",
        shape=[width],
    )


def image(slot_id: str) -> SlotDescriptor:
    return SlotDescriptor(
        slot_id=slot_id,
        module_path=slot_id,
        module_type="Conv2d",
        channels=8,
        layout="image",
        shape=[8, 4, 6],
    )


def sequence(slot_id: str) -> SlotDescriptor:
    return SlotDescriptor(
        slot_id=slot_id,
        module_path=slot_id,
        module_type="TransformerEncoderLayer",
        channels=12,
        layout="sequence",
        shape=[5, 12],
    )


# Slot targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("descriptor", "bindings"),
    [
        (features("fc", 16), {"C": 16}),
        (image("conv"), {"C": 8, "H": 4, "W": 6}),
        (sequence("attn"), {"T": 5, "C": 12}),
    ],
    ids=["features", "image", "sequence"],
)
def test_slot_target_binds_every_symbol_of_the_layout(
    descriptor: SlotDescriptor, bindings: dict[str, int]
) -> None:
    result = slot_target(descriptor, DeviceKind.CPU, None)
    assert result.bindings == bindings
    assert (result.device, result.compute_capability, result.dtype) == (
        DeviceKind.CPU,
        None,
        DType.FP32,
    )
    assert result.batch_sizes == list(KERNEL_BATCH_SIZES) == [1, 32]


def test_slot_target_on_cuda_carries_the_capability() -> None:
    result = slot_target(features("fc", 16), DeviceKind.CUDA, "9.0")
    assert (result.device, result.compute_capability) == (DeviceKind.CUDA, "9.0")
    assert result.short().startswith("cuda")


# Registering kernels --------------------------------------------------------------------------


@pytest.fixture
def urza(tmp_path: Path) -> Iterator[RunningUrza]:
    with serving(embedded_settings(tmp_path)) as running:
        yield running


def fixed_width(width: int) -> BlueprintIR:
    """A features blueprint whose output has ``width`` features: it fits only slots that wide."""
    return BlueprintIR.model_validate(
        {
            "name": f"fixed-{width}",
            "input": {"layout": "features", "shape": ["C"]},
            "nodes": [
                {
                    "id": "lin",
                    "op": "linear",
                    "inputs": ["input"],
                    "params": {"outFeatures": width, "init": "zeros"},
                }
            ],
            "output": "lin",
        }
    )


SLOTS = [features("0", 16), features("2", 16), features("4", 4), image("conv")]


def test_register_kernels_one_per_blueprint_and_slot_target(urza: RunningUrza) -> None:
    client = urza.client()
    blueprints = [builtin("bottleneck-mlp"), builtin("residual-conv3x3"), fixed_width(16)]
    wanted = register_kernels(client, blueprints, SLOTS, DeviceKind.CPU, None)

    mlp, conv, fixed = (ir.canonical_hash() for ir in blueprints)
    cpu16 = slot_target(features("x", 16), DeviceKind.CPU, None)
    cpu4 = slot_target(features("x", 4), DeviceKind.CPU, None)
    conv_target = slot_target(image("conv"), DeviceKind.CPU, None)
    assert wanted == [
        WantedKernel(kernel_id(mlp, cpu16), "bottleneck-mlp", ("0", "2")),
        WantedKernel(kernel_id(mlp, cpu4), "bottleneck-mlp", ("4",)),
        WantedKernel(kernel_id(conv, conv_target), "residual-conv3x3", ("conv",)),
        WantedKernel(kernel_id(fixed, cpu16), "fixed-16", ("0", "2")),
    ]
    registered = client.list_kernels(limit=100).items
    assert sorted(k.id for k in registered) == sorted(w.kernel_id for w in wanted)
    assert {k.phase for k in registered} == {KernelPhase.PENDING}
    assert [k.target for k in registered if k.blueprint_hash == conv] == [conv_target]


def test_register_kernels_for_cuda(urza: RunningUrza) -> None:
    client = urza.client()
    [wanted] = register_kernels(
        client, [builtin("bottleneck-mlp")], [features("fc", 16)], DeviceKind.CUDA, "9.0"
    )
    kernel = client.get_kernel(wanted.kernel_id)
    assert kernel.target == slot_target(features("fc", 16), DeviceKind.CUDA, "9.0")
    assert kernel.target.short().startswith("cuda")


def test_register_kernels_respects_literal_input_sizes(urza: RunningUrza) -> None:
    literal = BlueprintIR.model_validate(
        {
            "name": "literal-16",
            "input": {"layout": "features", "shape": [16]},
            "nodes": [
                {
                    "id": "lin",
                    "op": "linear",
                    "inputs": ["input"],
                    "params": {"outFeatures": 16, "init": "zeros"},
                }
            ],
            "output": "lin",
        }
    )
    wanted = register_kernels(urza.client(), [literal], SLOTS, DeviceKind.CPU, None)
    assert [w.slot_ids for w in wanted] == [("0", "2")]


def test_register_kernels_twice_is_idempotent(urza: RunningUrza) -> None:
    client = urza.client()
    blueprints = [builtin("bottleneck-mlp"), builtin("residual-conv3x3")]
    first = register_kernels(client, blueprints, SLOTS, DeviceKind.CPU, None)
    second = register_kernels(client, blueprints, SLOTS, DeviceKind.CPU, None)
    assert second == first
    assert len(client.list_kernels(limit=100).items) == len(first) == 3
    assert len(client.list_blueprints().items) == 2


def test_register_kernels_skips_blueprints_that_fit_no_slot(urza: RunningUrza) -> None:
    client = urza.client()
    blueprints = [builtin("self-attention"), fixed_width(32)]
    assert register_kernels(client, blueprints, SLOTS, DeviceKind.CPU, None) == []
    # The blueprints are submitted all the same; only kernels are left out.
    assert len(client.list_blueprints().items) == 2
    assert client.list_kernels(limit=100).items == []


# The catalog ----------------------------------------------------------------------------------


class FakeUrza:
    """get_kernel from a table the test edits (an exception entry is raised)."""

    def __init__(self) -> None:
        self.kernels: dict[str, KernelArtifact | Exception] = {}
        self.calls: list[str] = []

    def get_kernel(self, identifier: str) -> KernelArtifact:
        self.calls.append(identifier)
        entry = self.kernels[identifier]
        if isinstance(entry, Exception):
            raise entry
        return entry


class FakeLoader:
    """request/ready/close; loads finish when the test moves them to ``done`` or ``errors``."""

    def __init__(self) -> None:
        self.requested: list[str] = []
        self.done: dict[str, LoadedKernel] = {}
        self.errors: dict[str, Exception] = {}
        self.closed = False

    def request(self, identifier: str) -> None:
        self.requested.append(identifier)

    def ready(self, identifier: str) -> LoadedKernel | None:
        if identifier in self.errors:
            raise self.errors[identifier]
        return self.done.get(identifier)

    def close(self) -> None:
        self.closed = True


WIDE = loaded_kernel(16)
NARROW = loaded_kernel(4)


def in_phase(kernel: LoadedKernel, phase: KernelPhase) -> KernelArtifact:
    """The kernel's record in an earlier phase, or Failed or Rejected."""
    validated = validated_artifact(kernel)
    if phase is KernelPhase.VALIDATED:
        return validated
    data = validated.model_dump(by_alias=False)
    data["phase"] = phase
    data["benchmark"] = None
    if phase is KernelPhase.FAILED:
        data.update(artifact_uri=None, sha256=None, size_bytes=None, error="compiler crashed")
    if phase is KernelPhase.REJECTED:
        report = validated.benchmark.model_dump(by_alias=False)  # type: ignore[union-attr]
        report.update(verdict="Rejected", reasons=["slower than eager"])
        data["benchmark"] = report
    if phase in (KernelPhase.PENDING, KernelPhase.COMPILING):
        data.update(artifact_uri=None, sha256=None, size_bytes=None)
    return KernelArtifact.model_validate(data)


def catalog(
    *wanted: WantedKernel, poll_seconds: float = 1.0
) -> tuple[KernelCatalog, FakeUrza, FakeLoader]:
    client, loader = FakeUrza(), FakeLoader()
    wanted = wanted or (
        WantedKernel(WIDE.kernel_id, "bottleneck-mlp", ("0", "2")),
        WantedKernel(NARROW.kernel_id, "bottleneck-mlp", ("4",)),
    )
    return (
        KernelCatalog(client, loader, wanted, poll_seconds=poll_seconds),  # type: ignore[arg-type]
        client,
        loader,
    )


def test_status_before_any_poll_is_unknown() -> None:
    kernels, _client, _loader = catalog()
    assert kernels.status() == {WIDE.kernel_id: "unknown", NARROW.kernel_id: "unknown"}
    assert not kernels.settled()
    assert kernels.candidates() == {}
    assert kernels.loaded(WIDE.kernel_id) is None
    assert kernels.blueprint_name(NARROW.kernel_id) == "bottleneck-mlp"


def test_validated_kernels_are_loaded_then_offered_to_their_slots() -> None:
    kernels, client, loader = catalog()
    client.kernels = {
        WIDE.kernel_id: in_phase(WIDE, KernelPhase.VALIDATED),
        NARROW.kernel_id: in_phase(NARROW, KernelPhase.COMPILING),
    }
    kernels.poll()
    assert loader.requested == [WIDE.kernel_id]
    assert kernels.status() == {WIDE.kernel_id: "Validated", NARROW.kernel_id: "Compiling"}
    assert kernels.candidates() == {}

    loader.done[WIDE.kernel_id] = WIDE
    kernels.poll()
    assert kernels.status()[WIDE.kernel_id] == "loaded"
    assert kernels.loaded(WIDE.kernel_id) is WIDE
    candidates = kernels.candidates()
    assert set(candidates) == {"0", "2"}
    [candidate] = candidates["0"]
    assert candidates["2"] == [candidate]
    assert candidate.kernel == client.kernels[WIDE.kernel_id]
    assert (candidate.blueprint_name, candidate.params) == ("bottleneck-mlp", 544)
    assert not kernels.settled()

    # Loaded kernels are not asked about again; the other one moves on.
    client.kernels[NARROW.kernel_id] = in_phase(NARROW, KernelPhase.VALIDATED)
    loader.done[NARROW.kernel_id] = NARROW
    client.calls.clear()
    kernels.poll()
    assert client.calls == [NARROW.kernel_id]
    assert kernels.settled()
    assert set(kernels.candidates()) == {"0", "2", "4"}


@pytest.mark.parametrize(
    ("phase", "status"),
    [
        (KernelPhase.REJECTED, "unusable: Rejected: "),
        (KernelPhase.FAILED, "unusable: Failed: compiler crashed"),
    ],
)
def test_rejected_and_failed_kernels_are_unusable(
    phase: KernelPhase, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    kernels, client, loader = catalog(WantedKernel(WIDE.kernel_id, "bottleneck-mlp", ("0",)))
    client.kernels[WIDE.kernel_id] = in_phase(WIDE, phase)
    with caplog.at_level(logging.WARNING, logger="esper.tolaria"):
        kernels.poll()
    assert kernels.status() == {WIDE.kernel_id: status}
    assert kernels.settled()
    assert kernels.candidates() == {}
    assert loader.requested == []
    assert f"kernel {WIDE.kernel_id} cannot be grown" in caplog.text
    kernels.poll()
    assert client.calls == [WIDE.kernel_id]


@pytest.mark.parametrize("error", [ValueError("sha256 mismatch"), RuntimeError("bad build")])
def test_a_kernel_that_fails_to_load_is_unusable(error: Exception) -> None:
    kernels, client, loader = catalog(WantedKernel(WIDE.kernel_id, "bottleneck-mlp", ("0",)))
    client.kernels[WIDE.kernel_id] = in_phase(WIDE, KernelPhase.VALIDATED)
    loader.errors[WIDE.kernel_id] = error
    kernels.poll()
    assert kernels.status() == {WIDE.kernel_id: f"unusable: load failed: {error}"}
    assert kernels.settled()
    assert kernels.loaded(WIDE.kernel_id) is None


def test_a_download_outage_is_retried_not_a_verdict(caplog: pytest.LogCaptureFixture) -> None:
    kernels, client, loader = catalog(WantedKernel(WIDE.kernel_id, "bottleneck-mlp", ("0",)))
    client.kernels[WIDE.kernel_id] = in_phase(WIDE, KernelPhase.VALIDATED)
    loader.errors[WIDE.kernel_id] = UrzaUnavailableError("connection refused", None)
    with caplog.at_level(logging.WARNING, logger="esper.tolaria"):
        kernels.poll()
    assert f"kernel {WIDE.kernel_id} download failed, will retry" in caplog.text
    assert kernels.status() == {WIDE.kernel_id: "Validated"}
    assert not kernels.settled()
    del loader.errors[WIDE.kernel_id]
    loader.done[WIDE.kernel_id] = WIDE
    kernels.poll()
    assert loader.requested == [WIDE.kernel_id, WIDE.kernel_id]
    assert kernels.status() == {WIDE.kernel_id: "loaded"}


def test_urza_errors_are_retried_at_the_next_poll(caplog: pytest.LogCaptureFixture) -> None:
    kernels, client, _loader = catalog(WantedKernel(WIDE.kernel_id, "bottleneck-mlp", ("0",)))
    client.kernels[WIDE.kernel_id] = UrzaUnavailableError("restarting", 503)
    with caplog.at_level(logging.WARNING, logger="esper.tolaria"):
        kernels.poll()
    assert f"cannot read kernel {WIDE.kernel_id}" in caplog.text
    assert kernels.status() == {WIDE.kernel_id: "unknown"}
    client.kernels[WIDE.kernel_id] = in_phase(WIDE, KernelPhase.PENDING)
    kernels.poll()
    assert kernels.status() == {WIDE.kernel_id: "Pending"}


class FakeClock:
    """Stands in for the catalog's ``time`` module: sleeping advances the clock at once."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_settled_times_out_listing_the_pending_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(catalog_module, "time", clock)
    kernels, client, loader = catalog()
    client.kernels = {
        WIDE.kernel_id: in_phase(WIDE, KernelPhase.VALIDATED),
        NARROW.kernel_id: in_phase(NARROW, KernelPhase.COMPILING),
    }
    loader.done[WIDE.kernel_id] = WIDE
    seen: list[dict[str, str]] = []
    with pytest.raises(TimeoutError) as raised:
        kernels.wait_settled(1.0, progress=lambda status: seen.append(dict(status)))
    assert str(raised.value) == f"kernels not ready after 1 s: {NARROW.kernel_id} (Compiling)"
    # Without the polling thread, wait_settled polls itself every quarter second.
    assert clock.sleeps == [0.25] * 5
    assert seen[0] == {WIDE.kernel_id: "unknown", NARROW.kernel_id: "unknown"}
    assert seen[-1] == {WIDE.kernel_id: "loaded", NARROW.kernel_id: "Compiling"}


def test_wait_settled_returns_once_every_kernel_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(catalog_module, "time", clock)
    kernels, client, loader = catalog()
    client.kernels = {
        WIDE.kernel_id: in_phase(WIDE, KernelPhase.VALIDATED),
        NARROW.kernel_id: in_phase(NARROW, KernelPhase.FAILED),
    }

    def finish_loading(seconds: float) -> None:
        FakeClock.sleep(clock, seconds)
        if len(clock.sleeps) == 3:
            loader.done[WIDE.kernel_id] = WIDE

    clock.sleep = finish_loading  # type: ignore[method-assign]
    kernels.wait_settled(60.0)
    assert kernels.settled()
    assert len(clock.sleeps) == 4
    assert kernels.status()[WIDE.kernel_id] == "loaded"


def test_the_polling_thread_settles_and_stop_closes_the_loader() -> None:
    kernels, client, loader = catalog(poll_seconds=0.01)
    client.kernels = {
        WIDE.kernel_id: in_phase(WIDE, KernelPhase.VALIDATED),
        NARROW.kernel_id: in_phase(NARROW, KernelPhase.REJECTED),
    }
    loader.done[WIDE.kernel_id] = WIDE
    kernels.start()
    kernels.wait_settled(30.0)
    kernels.stop()
    assert loader.closed
    assert kernels.status()[WIDE.kernel_id] == "loaded"
    assert set(kernels.candidates()) == {"0", "2"}


def test_stop_ends_a_thread_still_waiting_for_kernels() -> None:
    kernels, client, loader = catalog(poll_seconds=0.01)
    client.kernels = {
        WIDE.kernel_id: in_phase(WIDE, KernelPhase.COMPILING),
        NARROW.kernel_id: in_phase(NARROW, KernelPhase.COMPILING),
    }
    kernels.start()
    kernels.stop()
    calls = len(client.calls)
    assert loader.closed
    assert not kernels.settled()
    kernels.stop()  # a second stop is harmless
    assert len(client.calls) == calls


def test_stop_without_start_closes_the_loader() -> None:
    kernels, _client, loader = catalog()
    kernels.stop()
    assert loader.closed
