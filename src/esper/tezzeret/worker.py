"""Tezzeret's unit of work: compile one kernel, sign it and push it to Urza.

The same function runs in a local forge worker process and in a Kubernetes compile Job
(``esper tezzeret compile``). It drives the kernel's phases in Urza: Pending -> Compiling ->
Compiled, or Failed with the error recorded, so a crash leaves a visible, retryable state.
Every bundle is signed with the worker's key (:mod:`esper.blueprints.signing`) and the signature
is uploaded with it, for Kasmina to check before loading.
"""

import logging
from datetime import UTC, datetime

import torch

from esper.blueprints.signing import Keyring, SigningKeyError
from esper.contracts.kernel import KernelArtifact, KernelPhase, KernelTarget
from esper.contracts.urza_api import CompileRecord, PhaseChange
from esper.tezzeret.compiler import CompileOptions, compile_kernel
from esper.urza.client import UrzaClient

LOGGER = logging.getLogger("esper.tezzeret")


def compile_and_publish(
    client: UrzaClient,
    blueprint_hash: str,
    target: KernelTarget,
    *,
    worker: str,
    keyring: Keyring | None,
    options: CompileOptions | None = None,
) -> KernelArtifact:
    """Compile a blueprint for a target, sign the bundle and push both to Urza.

    The kernel is registered when missing (idempotent). A kernel that is already past
    compilation is returned as it is; a Failed one is retried from Pending.

    Args:
        client: Urza's client.
        blueprint_hash: The blueprint.
        target: The target.
        worker: This worker's name, recorded with the attempt.
        keyring: The keys; its signing key signs the bundle. None uploads it unsigned
            (``ESPER_SIGNING_MODE=off``), which loaders that require signatures refuse.
        options: What to produce besides the program and weights.

    Returns:
        The kernel, Compiled (or as found when another worker got further).

    Raises:
        SigningKeyError: When the key ring names no signing key (checked before anything).
        Exception: Whatever made the compilation fail, after the kernel was moved to Failed
            with the error recorded.
    """
    if keyring is not None and keyring.signing_key_id is None:
        raise SigningKeyError(f"{keyring.source}: set ESPER_SIGNING_KEY_ID to the key that signs")
    kernel = client.create_kernel(blueprint_hash, target)
    if kernel.phase is KernelPhase.FAILED:
        kernel = client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.PENDING))
    if kernel.phase is not KernelPhase.PENDING:
        LOGGER.info("kernel %s is %s; nothing to compile", kernel.id, kernel.phase.value)
        return kernel
    kernel = client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
    started = datetime.now(UTC)
    try:
        ir = client.get_blueprint(blueprint_hash).ir
        compiled = compile_kernel(ir, target, options)
        if keyring is None:
            LOGGER.warning("kernel %s: uploaded unsigned (ESPER_SIGNING_MODE=off)", kernel.id)
            signature = None
        else:
            signature = keyring.sign(kernel.id, compiled.data)
        client.upload_artifact(kernel.id, compiled.data, signature)
        kernel = client.change_phase(
            kernel.id,
            PhaseChange(
                phase=KernelPhase.COMPILED,
                compile_seconds=compiled.manifest.compile_seconds,
                torch_version=torch.__version__,
            ),
        )
    except Exception as error:
        # Record the failure where everyone can see it, then let the caller see it too.
        message = f"{type(error).__name__}: {error}"[:4000]
        LOGGER.exception("compiling kernel %s failed", kernel.id)
        client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.FAILED, error=message))
        _record(client, kernel.id, worker, started, error=message)
        raise
    _record(client, kernel.id, worker, started, error=None)
    return kernel


def _record(
    client: UrzaClient, kernel_id: str, worker: str, started: datetime, error: str | None
) -> None:
    client.add_compile_record(
        CompileRecord(
            kernel_id=kernel_id,
            worker=worker[:256],
            started_at=started,
            finished_at=datetime.now(UTC),
            succeeded=error is None,
            error=error,
            torch_version=torch.__version__,
        )
    )
