"""The package version, single-sourced for packaging and ``esper --version``."""

__version__ = "0.1.0"
