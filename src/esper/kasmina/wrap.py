"""``esper.wrap``: give a host model seed slots; ``esper.unwrap``: get the grown model back.

Wrapping never copies the host: the returned :class:`MorphogeneticModel` holds the same module
(same parameters) and attaches one forward hook per injection point. While every slot is
dormant the hook returns nothing, so outputs and gradients are bit-identical to the host's.
"""

import copy
import fnmatch
import itertools
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from esper.contracts.blueprint import Layout
from esper.contracts.graph import ModelGraph
from esper.contracts.run import InjectionSpec
from esper.contracts.seed import SeedStage, SlotDescriptor
from esper.contracts.types import IDENTIFIER_PATTERN
from esper.kasmina.graph import model_graph
from esper.kasmina.loader import KernelLoader, KernelSource, LoadedKernel
from esper.kasmina.slot import SeedSlot, StageChange

LOGGER = logging.getLogger("esper.kasmina")

_SLOT_ID = re.compile(IDENTIFIER_PATTERN)

Target = str | type[nn.Module]
"""An injection point selector: a glob over dotted module names, or a module class."""


class SlotHook:
    """The forward hook that runs a slot after its host module.

    A class rather than a closure so that ``copy.deepcopy`` of a wrapped model rebinds the hook
    to the copied slot.

    Args:
        slot: The slot.
    """

    def __init__(self, slot: SeedSlot) -> None:
        """Bind the hook to its slot."""
        self.slot = slot

    def __call__(self, module: nn.Module, _inputs: tuple[object, ...], output: object) -> object:
        """Return None (output unchanged) when the slot is idle, else the slot's output."""
        slot = self.slot
        if slot.idle:
            return None
        if not isinstance(output, Tensor):
            raise TypeError(
                f"slot '{slot.slot_id}': {type(module).__name__} returned "
                f"{type(output).__name__}, and a seed slot needs a tensor output"
            )
        return slot(output)


@dataclass(frozen=True)
class _Probe:
    shapes: dict[str, tuple[int, ...]]
    order: list[str]


class MorphogeneticModel(nn.Module):
    """A host model with seed slots. Call it exactly like the host.

    Args:
        host: The host (held, not copied).
        descriptors: One slot per injection point.
        order: Module paths in execution order, for the model graph.
        kernels: Loads kernels for :meth:`germinate`, when given.
    """

    def __init__(
        self,
        host: nn.Module,
        descriptors: Sequence[SlotDescriptor],
        order: Sequence[str],
        kernels: KernelLoader | None = None,
    ) -> None:
        """Attach the slots (see :func:`wrap`)."""
        super().__init__()
        self.host = host
        self._kernels = kernels
        device = _device_of(host)
        self.slots = nn.ModuleDict()
        self._slot_keys: dict[str, str] = {}
        # The training path lists the slots every step; a plain list avoids a ModuleDict lookup
        # per slot (the slots never change after wrapping).
        self._slot_list: list[SeedSlot] = []
        self._order = list(order)
        modules = dict(host.named_modules())
        self._handles: list[RemovableHandle] = []
        for descriptor in descriptors:
            key = descriptor.slot_id.replace(".", "-")
            if key in self.slots:
                raise ValueError(f"slot ids collide: '{descriptor.slot_id}'")
            module = modules[descriptor.module_path]
            slot = SeedSlot(descriptor, device, _dtype_of(module, host))
            self.slots[key] = slot
            self._slot_keys[descriptor.slot_id] = key
            self._slot_list.append(slot)
            handle = module.register_forward_hook(SlotHook(slot))
            self._handles.append(handle)

    def forward(self, *args: object, **kwargs: object) -> object:
        """Run the host (its hooks run the slots)."""
        return self.host(*args, **kwargs)

    def __getstate__(self) -> dict[str, object]:
        """Drop the kernel loader (threads and connections) from copies and pickles."""
        state = dict(self.__dict__)
        state["_kernels"] = None
        return state

    @property
    def kernels(self) -> KernelLoader | None:
        """The kernel loader given to :func:`wrap`, if any."""
        return self._kernels

    def germinate(self, slot_id: str, kernel: LoadedKernel | str, step: int = 0) -> StageChange:
        """Grow a kernel in a dormant slot now.

        This is the direct, blocking form for scripts and notebooks; a training loop uses the
        controller (:class:`esper.tolaria.controller.MorphogeneticController`), which loads in
        the background and germinates at a step boundary.

        Args:
            slot_id: The slot.
            kernel: A loaded kernel, or a kernel id to load through the model's kernel source.
            step: The training step to record.

        Returns:
            The stage change.

        Raises:
            ValueError: When a kernel id is given but the model has no kernel source.
        """
        if isinstance(kernel, str):
            if self._kernels is None:
                raise ValueError(
                    f"cannot load kernel {kernel}: wrap() was given no kernels= source"
                )
            kernel = self._kernels.wait(kernel)
        return self.slot(slot_id).germinate(
            kernel.fresh_module(),
            kernel_id=kernel.kernel_id,
            ir=kernel.ir,
            bindings=kernel.bindings,
            blueprint_name=kernel.blueprint_name,
            step=step,
        )

    def slot(self, slot_id: str) -> SeedSlot:
        """Return a slot by id.

        Args:
            slot_id: The slot's id (its module path).

        Returns:
            The slot.

        Raises:
            KeyError: When there is no such slot; the message lists them.
        """
        if slot_id not in self._slot_keys:
            raise KeyError(f"no slot '{slot_id}'; slots: {', '.join(self._slot_keys)}")
        slot = self.slots[self._slot_keys[slot_id]]
        assert isinstance(slot, SeedSlot)
        return slot

    def seed_slots(self) -> list[SeedSlot]:
        """Return every slot, in injection order."""
        return list(self._slot_list)

    def host_param_count(self) -> int:
        """Return the host's parameters (without seeds)."""
        return sum(p.numel() for p in self.host.parameters())

    def param_count(self) -> int:
        """Return the parameters of the host and every seed in it."""
        return self.host_param_count() + sum(s.seed_param_count() for s in self.seed_slots())

    def graph(self) -> ModelGraph:
        """Return the model's structure for Tamiyo.

        Built once per model and kept: slots are hooks, so growing seeds never changes it.

        Returns:
            Leaf modules and slot-carrying modules in execution order, joined by their data
            flow (see :func:`esper.kasmina.graph.model_graph`).
        """
        # In __dict__ rather than a declared attribute: only this method may change here, and a
        # deepcopy or pickle of the model carries the graph along, which stays true of the copy.
        cached = self.__dict__.get("_graph")
        if cached is None:
            descriptors = [slot.descriptor for slot in self.seed_slots()]
            cached = model_graph(self.host, descriptors, self._order)
            self.__dict__["_graph"] = cached
        return cached

    @contextmanager
    def without_seed(self, slot_id: str) -> Iterator[None]:
        """Bypass one slot's seed inside the block (for counterfactual evaluation).

        Args:
            slot_id: The slot.
        """
        slot = self.slot(slot_id)
        slot.disabled = True
        try:
            yield
        finally:
            slot.disabled = False

    def remove_hooks(self) -> None:
        """Detach every slot from the host (the host then runs as if never wrapped)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def wrap(
    model: nn.Module,
    targets: Iterable[Target] | InjectionSpec,
    example_input: Tensor | None = None,
    kernels: KernelSource | None = None,
) -> MorphogeneticModel:
    """Give a model seed slots after the modules the targets select.

    Args:
        model: Any ``nn.Module``; it is held, not copied.
        targets: Globs over dotted module names (``blocks.*``) and/or module classes
            (``nn.Linear``), or an :class:`InjectionSpec` (globs and class names).
        example_input: A batch the model accepts. With it, one no-grad forward in eval mode
            finds every injection point's shape (so any module type works) and the execution
            order; modules it never runs are skipped with a warning. Without it, only
            ``Linear``, ``LayerNorm`` and ``BatchNorm1d`` points are accepted (their shape is
            known from their parameters).
        kernels: Where kernels come from (for example
            ``esper.urza.kernel_source.UrzaKernelSource(url)``); needed only to germinate by
            kernel id.

    Returns:
        The wrapped model. Wrap first, then ``torch.compile`` the wrapped model: dynamo does not
        guard on module hooks, so a model compiled before wrapping keeps running without its
        slots.

    Raises:
        ValueError: When the targets select nothing, or a point's shape cannot be known.
    """
    selected = _select(model, targets)
    if not selected:
        raise ValueError(f"the targets {_describe(targets)} select no module of the model")
    probe = _probe(model, example_input) if example_input is not None else None
    descriptors = []
    for path in selected:
        module = dict(model.named_modules())[path]
        if probe is not None and path not in probe.shapes:
            LOGGER.warning(
                "module '%s' did not run in the example forward, or returned no tensor; "
                "no slot there",
                path,
            )
            continue
        shape = probe.shapes[path] if probe is not None else _known_shape(path, module)
        descriptors.append(_descriptor(path, module, shape))
    if not descriptors:
        raise ValueError(f"none of the modules {_describe(targets)} selects ran in a forward")
    order = probe.order if probe is not None else [name for name, _ in model.named_modules()]
    loader = KernelLoader(kernels) if kernels is not None else None
    return MorphogeneticModel(model, descriptors, order, loader)


def _select(model: nn.Module, targets: Iterable[Target] | InjectionSpec) -> list[str]:
    globs: list[str] = []
    classes: list[type[nn.Module]] = []
    class_names: list[str] = []
    if isinstance(targets, InjectionSpec):
        globs = list(targets.module_globs)
        class_names = list(targets.module_types)
    else:
        for target in targets:
            if isinstance(target, str):
                globs.append(target)
            elif isinstance(target, type) and issubclass(target, nn.Module):
                classes.append(target)
            else:
                raise TypeError(f"a target is a glob or an nn.Module class, not {target!r}")
    chosen = []
    for path, module in model.named_modules():
        if not path:
            continue
        by_glob = any(fnmatch.fnmatchcase(path, pattern) for pattern in globs)
        by_class = isinstance(module, tuple(classes)) if classes else False
        by_name = type(module).__name__ in class_names
        if by_glob or by_class or by_name:
            chosen.append(path)
    return chosen


def _describe(targets: Iterable[Target] | InjectionSpec) -> str:
    if isinstance(targets, InjectionSpec):
        return f"(globs {targets.module_globs}, types {targets.module_types})"
    return str([t if isinstance(t, str) else t.__name__ for t in targets])


def _probe(model: nn.Module, example_input: Tensor) -> _Probe:
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    handles = []

    def recorder(path: str) -> Callable[[nn.Module, tuple[object, ...], object], None]:
        def record(_module: nn.Module, _inputs: tuple[object, ...], output: object) -> None:
            if isinstance(output, Tensor):
                # cast: pytype does not narrow ``object`` by isinstance against torch.Tensor.
                shapes.setdefault(path, tuple(cast(Tensor, output).shape))
            if path not in order:
                order.append(path)

        return record

    for path, module in model.named_modules():
        handles.append(module.register_forward_hook(recorder(path)))
    modes = {name: module.training for name, module in model.named_modules()}
    try:
        # Eval mode and no grad: the probe must not update batch-norm statistics or build a graph.
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for name, module in model.named_modules():
            module.training = modes[name]
    return _Probe(shapes=shapes, order=order)


def _known_shape(path: str, module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return (-1, module.out_features)
    if isinstance(module, nn.BatchNorm1d):
        return (-1, module.num_features)
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return (-1, module.normalized_shape[0])
    raise ValueError(
        f"cannot tell the output shape of '{path}' ({type(module).__name__}) from its "
        "parameters; pass example_input= so one forward pass can show it"
    )


def _descriptor(path: str, module: nn.Module, shape: tuple[int, ...]) -> SlotDescriptor:
    if not _SLOT_ID.fullmatch(path):
        raise ValueError(
            f"module path '{path}' cannot name a slot (slot ids match {_SLOT_ID.pattern}); "
            "select another module"
        )
    per_example = [int(size) for size in shape[1:]]
    layouts = {1: Layout.FEATURES, 3: Layout.IMAGE, 2: Layout.SEQUENCE}
    if len(per_example) not in layouts:
        raise ValueError(
            f"'{path}' outputs shape {list(shape)}; a slot needs [B, C], [B, C, H, W] or "
            "[B, T, C] (batch first)"
        )
    layout = layouts[len(per_example)]
    channels = per_example[-1] if layout is Layout.SEQUENCE else per_example[0]
    return SlotDescriptor(
        slot_id=path,
        module_path=path,
        module_type=type(module).__name__,
        channels=channels,
        layout=layout,
        shape=per_example,
    )


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _dtype_of(*modules: nn.Module) -> torch.dtype | None:
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return None


class Grafted(nn.Module):
    """A host module followed by its seed: ``h + alpha * seed(h)`` (plain torch, no Esper).

    Args:
        host: The host module.
        seed: The seed.
        alpha: The blend weight (1 for a fossilized seed).
    """

    def __init__(self, host: nn.Module, seed: nn.Module, alpha: float = 1.0) -> None:
        """Hold the pair."""
        super().__init__()
        self.host = host
        self.seed = seed
        self.alpha = alpha

    def __getattr__(self, name: str) -> Any:  # Any: whatever attribute the host module has
        """Fall back to the host module's attributes (a parent may read its child's)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            host = self.__dict__.get("_modules", {}).get("host")
            if host is None:
                raise
            return getattr(host, name)

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        """Apply the host, then add the seed's contribution."""
        hidden = self.host(*args, **kwargs)
        if self.alpha == 1.0:
            return hidden + self.seed(hidden)
        return hidden + self.alpha * self.seed(hidden)


def unwrap(model: MorphogeneticModel) -> nn.Module:
    """Return the grown model as a plain ``nn.Module`` (a copy; ``model`` is left as it is).

    Fossilized seeds (and seeds in probation) become :class:`Grafted` modules with alpha 1; a
    blending seed keeps its current alpha; seeds still training or just germinated contribute
    nothing yet and are left out. So the result computes what ``model`` computes now.

    Args:
        model: The wrapped model.

    Returns:
        A copy of the host with the seeds built in, and no hooks.
    """
    grown = copy.deepcopy(model)
    grown.remove_hooks()
    host = grown.host
    for slot in grown.seed_slots():
        seed = slot.seed
        stage = slot.stage
        if seed is None or stage in (SeedStage.GERMINATED, SeedStage.TRAINING):
            continue
        alpha = float(slot.alpha.item()) if stage is SeedStage.BLENDING else 1.0
        parent_path, _, name = slot.descriptor.module_path.rpartition(".")
        parent = host.get_submodule(parent_path) if parent_path else host
        parent.register_module(name, Grafted(getattr(parent, name), seed, alpha))
    return host
