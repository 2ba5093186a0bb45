"""Host models for examples and benchmarks and ``build_host``.

The zoo: ``mlp``, ``cnn``, ``resnet`` and ``transformer``.

See ``esper.zoo.models`` for the module names seed slots can target. Needs the ``train`` extra.
"""

from esper.zoo.models import ZOO, build_host

__all__ = ["ZOO", "build_host"]
