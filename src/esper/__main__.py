"""``python -m esper``: the same as the ``esper`` command (used by forge worker processes)."""

from esper.cli import main

main()
