"""Esper: a morphogenetic training platform.

A host PyTorch model is wrapped, grows seed modules in chosen slots while it trains, and a
controller decides when, where and with which blueprint to grow. See docs/architecture.md.

``esper.wrap`` and ``esper.unwrap`` need the ``train`` extra (torch); they are resolved on first
use so that the core (contracts, the Urza client, the CLI shell) imports without torch.
"""

from typing import TYPE_CHECKING

from esper._version import __version__

if TYPE_CHECKING:
    from esper.kasmina.wrap import unwrap, wrap

__all__ = ["__version__", "unwrap", "wrap"]


def __getattr__(name: str) -> object:
    """Resolve ``esper.wrap`` and ``esper.unwrap`` from Kasmina on first use."""
    if name in ("wrap", "unwrap"):
        import esper.kasmina

        return getattr(esper.kasmina, name)
    raise AttributeError(f"module 'esper' has no attribute '{name}'")
