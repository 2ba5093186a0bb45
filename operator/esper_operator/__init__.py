"""The Esper Kubernetes operator (kopf): reconciles Blueprint, KernelArtifact and MorphogeneticRun.

The handlers arrive with the operator milestone; ``esper operator`` says so until then. This
package imports ``esper`` (contracts, the Urza client), never the reverse.
"""

OPERATOR_NAME = "esper-operator"
"""Name the operator uses for its peering object and as the field manager of its writes."""
