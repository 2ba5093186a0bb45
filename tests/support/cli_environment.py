"""The environment of an ``esper`` subprocess started by an end-to-end test.

Bare on purpose: no ESPER_* of the developer's shell leaks in. HOME and ESPER_HOME live under
the test's directory (so nothing is written to the real home), PYTHONPATH is kept so the
subprocess runs the code under test, and COVERAGE_* is kept so coverage.py measures it
(pyproject: ``patch = ["subprocess"]``).
"""

from __future__ import annotations

import os
from pathlib import Path


def cli_environment(root: Path, **variables: str) -> dict[str, str]:
    """A bare environment for an ``esper`` subprocess working under ``root``.

    Args:
        root: The test's directory: HOME, with ESPER_HOME at ``root / "esper-home"`` (not
            ``root / "esper"``: ``python -m`` puts the working directory first on sys.path,
            where a directory of that name would shadow the package).
        **variables: More variables (e.g. ``COLUMNS``), set last.

    Returns:
        The environment.
    """
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "ESPER_HOME": str(root / "esper-home"),
    }
    if "PYTHONPATH" in os.environ:
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    environment.update({k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")})
    environment.update(variables)
    return environment
