"""Where and how a kernel target runs: its torch device, dtype and example inputs."""

import platform

import torch

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import DeviceKind, DType, KernelTarget


class TargetUnavailableError(RuntimeError):
    """Raised when a target needs a device this machine lacks; the message says which."""


TORCH_DTYPES: dict[DType, torch.dtype] = {
    DType.FP32: torch.float32,
    DType.BF16: torch.bfloat16,
    DType.FP16: torch.float16,
}
"""The torch dtype of each target precision."""


def target_device(target: KernelTarget) -> torch.device:
    """Return the torch device a target runs on, checking it is the machine's.

    Args:
        target: The target.

    Returns:
        The device.

    Raises:
        TargetUnavailableError: When the target needs CUDA this machine lacks, or another
            architecture.
    """
    if target.device is DeviceKind.CPU:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TargetUnavailableError(
            f"target {target.short()} needs CUDA, which this machine lacks"
        )
    major, minor = torch.cuda.get_device_capability()
    if f"{major}.{minor}" != target.compute_capability:
        raise TargetUnavailableError(
            f"target {target.short()} needs compute capability {target.compute_capability}, "
            f"this GPU has {major}.{minor}"
        )
    return torch.device("cuda")


def device_name(device: torch.device) -> str:
    """Return a human-readable name of a device.

    Args:
        device: The device.

    Returns:
        The GPU's name, or the CPU's architecture and processor.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} {platform.processor() or ''}".strip()


def example_input(ir: BlueprintIR, target: KernelTarget, batch: int) -> torch.Tensor:
    """Return a random input of the blueprint's shape for a batch size.

    Args:
        ir: The blueprint.
        target: Its target (bindings, dtype, device).
        batch: The batch size.

    Returns:
        A tensor ``[batch, *input_shape]`` on the target's device, in its dtype.
    """
    dims = [target.bindings[dim] if isinstance(dim, str) else dim for dim in ir.input.shape]
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, *dims, generator=generator)
    return sample.to(device=target_device(target), dtype=TORCH_DTYPES[target.dtype])
