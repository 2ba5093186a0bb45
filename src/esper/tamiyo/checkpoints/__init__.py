"""The trained Tamiyo network that ships with Esper (``policy: gnn`` without a checkpoint).

``tamiyo-gnn.pt`` was written by Simic with the command in docs/simic.md; it is read with
``weights_only=True`` like any other checkpoint (:func:`esper.tamiyo.gnn.load`).
"""

from importlib import resources
from pathlib import Path

PACKAGED_CHECKPOINT = "tamiyo-gnn.pt"


def packaged_checkpoint() -> Path:
    """Return the path of the packaged network.

    Returns:
        The file inside the installed package.

    Raises:
        FileNotFoundError: When the installation lacks it (a broken or partial install).
    """
    path = Path(str(resources.files(__name__) / PACKAGED_CHECKPOINT))
    if not path.is_file():
        raise FileNotFoundError(
            f"the packaged Tamiyo network {path} is missing; reinstall esper, or set "
            "policy.checkpoint"
        )
    return path
