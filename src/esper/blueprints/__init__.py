"""Blueprints: shape inference (torch-free), the IR -> torch builder, and the built-in library.

``esper.blueprints.shapes`` and ``esper.blueprints.library`` need no torch, so Urza and the
operator can check designs at the door; ``esper.blueprints.builder`` needs the ``train`` extra.
"""
