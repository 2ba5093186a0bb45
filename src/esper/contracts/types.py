"""Bounded scalar types shared by the contracts.

Every string and number that crosses a component boundary has a bound, so a malformed or
hostile document fails at the door instead of deep inside a worker.
"""

from typing import Annotated

from pydantic import Field, StringConstraints

MAX_DIM = 1_048_576
"""Largest concrete tensor dimension a blueprint or target may name."""

Symbol = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,15}$"),
    Field(description="A named dimension, bound to a size by a KernelTarget (e.g. C, H, W)."),
]
"""A symbolic dimension: an upper-case identifier such as ``C``."""

Size = Annotated[int, Field(ge=1, le=MAX_DIM)]
"""A concrete, positive tensor dimension."""

Dim = Size | Symbol
"""A dimension in a blueprint: a concrete size or a symbol bound later by the target."""

NodeId = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$"),
    Field(description="Node identifier: lower-case letters, digits and underscores."),
]
"""Identifier of a node in a blueprint graph."""

ResourceName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63),
    Field(description="A DNS-1123 label, as Kubernetes requires for names."),
]
"""A name that is valid as a Kubernetes object name and in URLs."""

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A SHA-256 digest in lower-case hexadecimal."""

Tag = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._:-]{0,62}$")]
"""A short label attached to a blueprint or kernel (for example ``conv`` or ``fast-on-h100``)."""

ShortText = Annotated[str, StringConstraints(max_length=256)]
"""A one-line human-readable text."""

LongText = Annotated[str, StringConstraints(max_length=4096)]
"""A paragraph of human-readable text, such as an error message."""

IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
"""The pattern of an :data:`Identifier`."""

Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]
"""An opaque identifier (run ids, event ids, trace ids, slot ids)."""

Step = Annotated[int, Field(ge=0, le=10**12)]
"""A training step or epoch counter."""

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
"""A number in [0, 1]."""

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""A float that is neither NaN nor infinite."""

NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
"""A finite float >= 0."""

Count = Annotated[int, Field(ge=0, le=10**15)]
"""A non-negative count (parameters, FLOPs, bytes)."""

KernelId = Annotated[str, StringConstraints(pattern=r"^k-[0-9a-f]{24}$")]
"""A kernel's deterministic id (see ``esper.contracts.kernel.kernel_id``)."""

PRESERVE_UNKNOWN_FIELDS = "x-kubernetes-preserve-unknown-fields"
"""JSON-schema marker for a field whose content a CRD schema keeps free-form on purpose."""
