"""Urabrask's unit of work: validate and benchmark one kernel and report to Urza.

The same function runs in a local forge worker process and in a Kubernetes benchmark Job
(``esper urabrask bench``). It moves the kernel Compiled -> Validating -> Validated/Rejected;
a bundle that fails verification, or a crash, moves it to Failed with the reason. Tezzeret's
signature is checked before the bundle is read: benchmark workers hold the signing keys too, so
a forged bundle must not run here any more than in training (docs/security.md).
"""

import logging

from esper.blueprints.bundle import BundleError, read_bundle
from esper.blueprints.signing import Keyring
from esper.contracts.kernel import KernelArtifact, KernelPhase
from esper.contracts.urza_api import PhaseChange
from esper.urabrask.bench import benchmark_bundle
from esper.urza.client import UrzaClient

LOGGER = logging.getLogger("esper.urabrask")


def validate_and_publish(
    client: UrzaClient, kernel_id: str, *, keyring: Keyring | None
) -> KernelArtifact:
    """Validate a Compiled kernel and attach the report (its verdict becomes the phase).

    Args:
        client: Urza's client.
        kernel_id: The kernel.
        keyring: The keys Tezzeret's signature is checked with; None skips the check
            (``ESPER_SIGNING_MODE=off``) with a warning.

    Returns:
        The kernel, Validated or Rejected (or as found when it was not Compiled/Validating).

    Raises:
        Exception: Whatever broke the validation, after the kernel was moved to Failed.
    """
    kernel = client.get_kernel(kernel_id)
    if kernel.phase is KernelPhase.COMPILED:
        kernel = client.change_phase(kernel_id, PhaseChange(phase=KernelPhase.VALIDATING))
    elif kernel.phase is not KernelPhase.VALIDATING:
        LOGGER.info("kernel %s is %s; nothing to validate", kernel_id, kernel.phase.value)
        return kernel
    try:
        data = client.download_artifact(kernel_id)
        if keyring is None:
            LOGGER.warning(
                "kernel %s: validated without checking its signature (ESPER_SIGNING_MODE=off)",
                kernel_id,
            )
        else:
            keyring.verify(kernel_id, data, kernel.signature)
        bundle = read_bundle(data, kernel.sha256)
        if bundle.manifest.kernel_id != kernel_id:
            raise BundleError(f"bundle is for kernel {bundle.manifest.kernel_id}")
        report = benchmark_bundle(bundle, kernel_id)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"[:4000]
        LOGGER.exception("validating kernel %s failed", kernel_id)
        client.change_phase(kernel_id, PhaseChange(phase=KernelPhase.FAILED, error=message))
        raise
    return client.attach_report(kernel_id, report)
