"""The built-in blueprint library.

Every blueprint here is a seed *contribution*: Kasmina adds its output to the host activation
it reads (``h + alpha * seed(h)``), so each one ends in a zero-initialised layer (or a zero
gate) and contributes exactly nothing at graft time — the host's function is preserved. The
symbol ``C`` is the slot's channel count; image blueprints also use ``H`` and ``W``, sequence
blueprints ``T``.

``examples/blueprints/`` holds the same designs as ``Blueprint`` manifests (a test keeps them
identical).
"""

from esper.contracts.blueprint import BlueprintIR

_RAW: tuple[dict[str, object], ...] = (
    {
        "name": "residual-mlp",
        "description": "Two-layer MLP adapter with an internal residual connection; "
        "zero-initialised output projection.",
        "tags": ["mlp", "residual"],
        "input": {"layout": "features", "shape": ["C"]},
        "nodes": [
            {"id": "up", "op": "linear", "inputs": ["input"], "params": {"outFeatures": 64}},
            {"id": "act1", "op": "gelu", "inputs": ["up"]},
            {"id": "mid", "op": "linear", "inputs": ["act1"], "params": {"outFeatures": 64}},
            {"id": "act2", "op": "gelu", "inputs": ["mid"]},
            {"id": "skip", "op": "add", "inputs": ["act1", "act2"]},
            {
                "id": "down",
                "op": "linear",
                "inputs": ["skip"],
                "params": {"outFeatures": "C", "init": "zeros"},
            },
        ],
        "output": "down",
    },
    {
        "name": "low-rank-adapter",
        "description": "Rank-8 adapter x A B with B zero-initialised (LoRA-style).",
        "tags": ["mlp", "low-rank"],
        "input": {"layout": "features", "shape": ["C"]},
        "nodes": [
            {
                "id": "lora",
                "op": "low_rank",
                "inputs": ["input"],
                "params": {"rank": 8, "outFeatures": "C", "init": "zeros"},
            }
        ],
        "output": "lora",
    },
    {
        "name": "bottleneck-mlp",
        "description": "Narrow bottleneck MLP (16 hidden units) with a zero-initialised output.",
        "tags": ["mlp", "bottleneck"],
        "input": {"layout": "features", "shape": ["C"]},
        "nodes": [
            {"id": "down", "op": "linear", "inputs": ["input"], "params": {"outFeatures": 16}},
            {"id": "act", "op": "relu", "inputs": ["down"]},
            {
                "id": "up",
                "op": "linear",
                "inputs": ["act"],
                "params": {"outFeatures": "C", "init": "zeros"},
            },
        ],
        "output": "up",
    },
    {
        "name": "widening-branch",
        "description": "A wide parallel branch (256 hidden units) that adds capacity to a layer; "
        "zero-initialised output.",
        "tags": ["mlp", "widening"],
        "input": {"layout": "features", "shape": ["C"]},
        "nodes": [
            {"id": "norm", "op": "layer_norm", "inputs": ["input"]},
            {"id": "wide", "op": "linear", "inputs": ["norm"], "params": {"outFeatures": 256}},
            {"id": "act", "op": "silu", "inputs": ["wide"]},
            {
                "id": "out",
                "op": "linear",
                "inputs": ["act"],
                "params": {"outFeatures": "C", "init": "zeros"},
            },
        ],
        "output": "out",
    },
    {
        "name": "residual-conv3x3",
        "description": "3x3 convolution adapter for feature maps; zero-initialised 1x1 output.",
        "tags": ["conv", "residual"],
        "input": {"layout": "image", "shape": ["C", "H", "W"]},
        "nodes": [
            {
                "id": "conv",
                "op": "conv2d",
                "inputs": ["input"],
                "params": {"outChannels": "C", "kernelSize": 3},
            },
            {"id": "norm", "op": "batch_norm", "inputs": ["conv"]},
            {"id": "act", "op": "relu", "inputs": ["norm"]},
            {
                "id": "proj",
                "op": "conv2d",
                "inputs": ["act"],
                "params": {"outChannels": "C", "kernelSize": 1, "init": "zeros"},
            },
        ],
        "output": "proj",
    },
    {
        "name": "depthwise-separable",
        "description": "Depthwise 3x3 then pointwise 1x1 convolution (zero-initialised).",
        "tags": ["conv", "depthwise"],
        "input": {"layout": "image", "shape": ["C", "H", "W"]},
        "nodes": [
            {
                "id": "dw",
                "op": "depthwise_conv2d",
                "inputs": ["input"],
                "params": {"kernelSize": 3},
            },
            {"id": "norm", "op": "batch_norm", "inputs": ["dw"]},
            {"id": "act", "op": "relu", "inputs": ["norm"]},
            {
                "id": "pw",
                "op": "conv2d",
                "inputs": ["act"],
                "params": {"outChannels": "C", "kernelSize": 1, "init": "zeros"},
            },
        ],
        "output": "pw",
    },
    {
        "name": "squeeze-excite",
        "description": "Squeeze-and-excitation channel gating behind a zero-initialised gate.",
        "tags": ["conv", "attention", "gating"],
        "input": {"layout": "image", "shape": ["C", "H", "W"]},
        "nodes": [
            {"id": "se", "op": "squeeze_excite", "inputs": ["input"], "params": {"reduction": 4}},
            {"id": "gate", "op": "scale", "inputs": ["se"], "params": {"initValue": 0.0}},
        ],
        "output": "gate",
    },
    {
        "name": "self-attention",
        "description": "Pre-norm multi-head self-attention over a sequence; zero-initialised "
        "output projection.",
        "tags": ["attention", "transformer"],
        "input": {"layout": "sequence", "shape": ["T", "C"]},
        "nodes": [
            {"id": "norm", "op": "layer_norm", "inputs": ["input"]},
            {
                "id": "attn",
                "op": "attention",
                "inputs": ["norm"],
                "params": {"numHeads": 4, "init": "zeros"},
            },
        ],
        "output": "attn",
    },
)

LIBRARY: dict[str, BlueprintIR] = {
    str(raw["name"]): BlueprintIR.model_validate(raw) for raw in _RAW
}
"""The built-in blueprints by name."""


def builtin(name: str) -> BlueprintIR:
    """Return a built-in blueprint.

    Args:
        name: Its name (see :data:`LIBRARY`).

    Returns:
        The blueprint.

    Raises:
        KeyError: When there is none by that name; the message lists the names.
    """
    if name not in LIBRARY:
        raise KeyError(f"no built-in blueprint '{name}'; available: {', '.join(sorted(LIBRARY))}")
    return LIBRARY[name]
