"""No code path in Esper unpickles: a static scan of every module of the product.

Unpickling runs arbitrary code, and Esper loads files from users (checkpoints, networks) and
from the network (kernel bundles). So, in ``src/esper`` and ``operator/esper_operator``:

- ``torch.load`` is always called with ``weights_only=True`` (a literal, not a variable);
- ``numpy.load`` always with ``allow_pickle=False``;
- ``pickle``, ``dill``, ``cloudpickle``, ``joblib``, ``shelve`` and ``marshal`` are used for
  nothing but ``pickle.UnpicklingError`` (the exception a refused load raises);
- ``torch.export.load``, which falls back to a full unpickle when its weights-only load fails,
  is called only in ``esper/blueprints/exported.py``, inside the block that forces torch's
  weights-only unpickler;
- ``torch.compiler.load_cache_artifacts`` (torch's own cache format) only in the kernel loader,
  where it is off unless a run asks for it (docs/growth.md).

The scanner is tested on sources that break each rule, so this test can fail.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.reliability import note_inputs

pytestmark = pytest.mark.reliability("no-unpickling")

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = [ROOT / "src" / "esper", ROOT / "operator" / "esper_operator"]
PICKLERS = frozenset({"pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"})
ALLOWED_PICKLE_NAMES = frozenset({"UnpicklingError"})
ALLOWED_CALLS = {
    "torch.export.load": "esper/blueprints/exported.py",
    "torch.compiler.load_cache_artifacts": "esper/kasmina/loader.py",
}


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _keyword_is(call: ast.Call, name: str, value: bool) -> bool:
    return any(
        keyword.arg == name
        and isinstance(keyword.value, ast.Constant)
        and keyword.value.value is value
        for keyword in call.keywords
    )


def _import_violations(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] in PICKLERS and alias.name != "pickle":
                yield f"imports {alias.name}"
    elif (node.module or "").split(".")[0] in PICKLERS:
        names = {alias.name for alias in node.names}
        if node.module != "pickle" or not names <= ALLOWED_PICKLE_NAMES:
            yield f"imports {sorted(names)} from {node.module}"


def _call_violations(node: ast.Call, where: str) -> Iterator[str]:
    name = _dotted(node.func)
    if name == "torch.load" and not _keyword_is(node, "weights_only", True):
        yield "torch.load without weights_only=True"
    elif name in {"np.load", "numpy.load"} and not _keyword_is(node, "allow_pickle", False):
        yield f"{name} without allow_pickle=False"
    elif name in ALLOWED_CALLS and where != ALLOWED_CALLS[name]:
        yield f"{name} outside {ALLOWED_CALLS[name]}"


def violations(source: str, where: str) -> Iterator[str]:
    """Yield one line per broken rule in a module's source.

    Args:
        source: The module's code.
        where: Its path relative to the product root (``esper/...``), for the allow-list.

    Yields:
        ``where:line: what``.
    """
    for node in ast.walk(ast.parse(source)):
        found: Iterator[str] = iter(())
        if isinstance(node, ast.Import | ast.ImportFrom):
            found = _import_violations(node)
        elif isinstance(node, ast.Attribute):
            if _dotted(node.value) == "pickle" and node.attr not in ALLOWED_PICKLE_NAMES:
                found = iter([f"uses pickle.{node.attr}"])
        elif isinstance(node, ast.Call):
            found = _call_violations(node, where)
        for what in found:
            yield f"{where}:{node.lineno}: {what}"


def _product_modules() -> Iterator[tuple[str, Path]]:
    for package in PRODUCT:
        for path in sorted(package.rglob("*.py")):
            yield str(path.relative_to(package.parent)), path


def test_the_product_never_unpickles() -> None:
    modules = list(_product_modules())
    assert len(modules) > 100  # the scan sees the whole product, not an empty directory
    note_inputs(len(modules))
    found = [
        line
        for where, path in modules
        for line in violations(path.read_text(encoding="utf-8"), where)
    ]
    assert found == []


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("import torch\ntorch.load(path)\n", "torch.load without weights_only=True"),
        ("import torch\ntorch.load(path, weights_only=False)\n", "without weights_only=True"),
        ("import torch\nsafe = True\ntorch.load(p, weights_only=safe)\n", "weights_only=True"),
        ("import numpy as np\nnp.load(path)\n", "np.load without allow_pickle=False"),
        ("import numpy\nnumpy.load(p, allow_pickle=True)\n", "numpy.load without allow_pickle"),
        ("import pickle\npickle.loads(data)\n", "uses pickle.loads"),
        ("from pickle import Unpickler\n", "imports ['Unpickler'] from pickle"),
        ("import dill\n", "imports dill"),
        ("import joblib.numpy_pickle\n", "imports joblib.numpy_pickle"),
        ("from cloudpickle import loads\n", "from cloudpickle"),
        ("import torch\ntorch.export.load(f)\n", "torch.export.load outside"),
        ("import torch\ntorch.compiler.load_cache_artifacts(b)\n", "load_cache_artifacts outside"),
    ],
)
def test_the_scan_catches_each_kind_of_unpickling(source: str, fragment: str) -> None:
    found = list(violations(source, "esper/somewhere.py"))
    assert len(found) == 1
    assert fragment in found[0]
    assert found[0].startswith("esper/somewhere.py:")


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(path, map_location='cpu', weights_only=True)\n",
        "import numpy as np\nnp.load(path, allow_pickle=False)\n",
        "import pickle\nerror = pickle.UnpicklingError\n",
        "from pickle import UnpicklingError\n",
    ],
)
def test_the_scan_allows_safe_loading(source: str) -> None:
    assert list(violations(source, "esper/somewhere.py")) == []
