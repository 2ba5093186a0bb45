"""Load a bundle's exported program without ever running pickled code.

``torch.export.load`` falls back to a full unpickle when torch's weights-only load fails; forcing
the weights-only loader makes such a bundle fail loudly instead.
"""

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from esper.blueprints.bundle import KernelBundle
from esper.contracts.bundle import BundleMemberName


@contextmanager
def weights_only_loading() -> Iterator[None]:
    """Force torch's weights-only unpickler for every ``torch.load`` in the block.

    ``torch.export.load`` falls back to a full unpickle when the weights-only load fails; the
    environment variable makes torch refuse that fallback.
    """
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def load_exported(bundle: KernelBundle) -> nn.Module:
    """Load the bundle's exported program as a module (weights-only loading forced).

    Args:
        bundle: A verified bundle.

    Returns:
        The program's module.
    """
    data = bundle.get(BundleMemberName.EXPORTED_PROGRAM)
    if data is None:
        raise ValueError("bundle has no exported program")
    with weights_only_loading():
        program = torch.export.load(io.BytesIO(data))
    return program.module()
