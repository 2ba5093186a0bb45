"""Esper: a morphogenetic training platform.

A host PyTorch model is wrapped, grows seed modules in chosen slots while it trains, and a
controller decides when, where and with which blueprint to grow. See docs/architecture.md.
"""

from esper._version import __version__

__all__ = ["__version__"]
