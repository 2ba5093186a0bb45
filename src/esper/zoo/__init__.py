"""Host models for examples and benchmarks (``mlp``, ``cnn``, ``transformer``) and ``build_host``.

See ``esper.zoo.models`` for the module names seed slots can target. Needs the ``train`` extra.
"""

from esper.zoo.models import ZOO, build_host

__all__ = ["ZOO", "build_host"]
