"""CustomResourceDefinitions generated from the contracts (``esper crds generate``)."""
