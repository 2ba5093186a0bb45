"""Fit a kernel target to a blueprint: bind exactly the symbols it uses, at sizes that fit."""

from esper.blueprints.shapes import ShapeError, check_graftable
from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import KernelTarget


def target_for(ir: BlueprintIR, target: KernelTarget) -> KernelTarget | None:
    """Restrict a default target's bindings to a blueprint's symbols, if it binds them all.

    Args:
        ir: The blueprint.
        target: A forge default target.

    Returns:
        The target to compile this blueprint for, or None when the target leaves a symbol of
        the blueprint unbound or its sizes do not fit the blueprint.
    """
    symbols = ir.symbols()
    if not symbols <= set(target.bindings):
        return None
    bindings = {name: size for name, size in target.bindings.items() if name in symbols}
    try:
        check_graftable(ir, bindings)
    except ShapeError:
        return None
    return target.model_copy(update={"bindings": bindings})
