"""Kasmina, the execution layer: seed slots in a host model, their lifecycle, kernel loading."""

from esper.kasmina.loader import KernelLoader, KernelSource, LoadedKernel, load_kernel
from esper.kasmina.slot import SeedSlot, StageChange
from esper.kasmina.wrap import Grafted, MorphogeneticModel, unwrap, wrap

__all__ = [
    "Grafted",
    "KernelLoader",
    "KernelSource",
    "LoadedKernel",
    "MorphogeneticModel",
    "SeedSlot",
    "StageChange",
    "load_kernel",
    "unwrap",
    "wrap",
]
