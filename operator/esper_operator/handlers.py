"""The kopf handlers: which events trigger which reconcile pass.

Thin on purpose: every handler calls a level-triggered reconciler
(:mod:`esper_operator.blueprints`, :mod:`esper_operator.runs`), so any trigger, repeated or
out of order, converges to the same state. Triggers: the resource is created, resumed (the
operator restarted) or its spec changed; one of its Jobs finished or was deleted; a periodic
resync while it is not finished. Errors that will pass (Urza or the API server unreachable, a
GPU Job waiting for a slot) become kopf's temporary errors, retried with a delay.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import kopf

from esper.contracts.crd import GROUP, VERSION, BlueprintPhase
from esper.urza.client import UrzaAuthError, UrzaUnavailableError
from esper_operator import names
from esper_operator.blueprints import BlueprintReconciler, Requeue
from esper_operator.jobs import JobState, job_state
from esper_operator.kube import KubeError
from esper_operator.metrics import measured
from esper_operator.runs import FINISHED, RunReconciler
from esper_operator.settings import OperatorSettings

LOGGER = logging.getLogger("esper_operator.handlers")

BLUEPRINTS = (GROUP, VERSION, "blueprints")
RUNS = (GROUP, VERSION, "morphogeneticruns")
UNAVAILABLE_RETRY_SECONDS = 10.0
SETTLED_BLUEPRINT = frozenset({BlueprintPhase.READY, BlueprintPhase.FAILED, BlueprintPhase.INVALID})


@dataclass(frozen=True)
class Reconcilers:
    """What the handlers call.

    Attributes:
        blueprints: Blueprint passes and finalization.
        runs: MorphogeneticRun passes.
        settings: The operator's settings.
    """

    blueprints: BlueprintReconciler
    runs: RunReconciler
    settings: OperatorSettings


def _guarded(kind: str, action: Callable[[], object]) -> object:
    """Run one pass, turning passing troubles into kopf's delayed retries."""
    with measured(kind) as outcome:
        try:
            return action()
        except Requeue as request:
            outcome.result = "requeue"
            raise kopf.TemporaryError(request.reason, delay=request.delay) from None
        except (UrzaUnavailableError, KubeError) as error:
            outcome.result = "retry"
            raise kopf.TemporaryError(str(error), delay=UNAVAILABLE_RETRY_SECONDS) from None
        except UrzaAuthError as error:
            # A wrong token will not fix itself; say so loudly and retry slowly.
            outcome.result = "retry"
            raise kopf.TemporaryError(
                f"Urza refused the operator's token: {error}", delay=60.0
            ) from None


def _phase_of(body: kopf.Body) -> str | None:
    status = body.get("status") or {}
    phase = status.get("phase") if isinstance(status, dict) else None
    return phase if isinstance(phase, str) else None


def build_registry(reconcilers: Reconcilers) -> kopf.OperatorRegistry:
    """Register every handler on a fresh registry.

    Args:
        reconcilers: What the handlers call.

    Returns:
        The registry to run the operator with.
    """
    registry = kopf.OperatorRegistry()
    resync = reconcilers.settings.resync_seconds

    # Blueprints -------------------------------------------------------------------------------

    def reconcile_blueprint(namespace: str | None, name: str | None, **_: object) -> None:
        if namespace and name:
            _guarded("Blueprint", lambda: reconcilers.blueprints.reconcile(namespace, name))

    for decorator in (
        kopf.on.create(*BLUEPRINTS, registry=registry),
        kopf.on.resume(*BLUEPRINTS, registry=registry),
        kopf.on.update(*BLUEPRINTS, field="spec", registry=registry),
    ):
        decorator(reconcile_blueprint)

    def blueprint_unsettled(body: kopf.Body, **_: object) -> bool:
        return _phase_of(body) not in SETTLED_BLUEPRINT

    kopf.timer(
        *BLUEPRINTS,
        interval=resync,
        initial_delay=resync,
        idle=resync,
        when=blueprint_unsettled,
        registry=registry,
    )(reconcile_blueprint)

    @kopf.on.delete(*BLUEPRINTS, registry=registry)
    def finalize_blueprint(
        namespace: str | None, name: str | None, body: kopf.Body, **_: object
    ) -> None:
        if namespace and name:
            _guarded(
                "Blueprint",
                lambda: reconcilers.blueprints.finalize(namespace, name, dict(body)),
            )

    # Runs -------------------------------------------------------------------------------------

    def reconcile_run(namespace: str | None, name: str | None, **_: object) -> None:
        if namespace and name:
            _guarded("MorphogeneticRun", lambda: reconcilers.runs.reconcile(namespace, name))

    for decorator in (
        kopf.on.create(*RUNS, registry=registry),
        kopf.on.resume(*RUNS, registry=registry),
        kopf.on.update(*RUNS, field="spec", registry=registry),
    ):
        decorator(reconcile_run)

    def run_unfinished(body: kopf.Body, **_: object) -> bool:
        return _phase_of(body) not in {phase.value for phase in FINISHED}

    kopf.timer(
        *RUNS,
        interval=resync,
        initial_delay=resync,
        idle=resync,
        when=run_unfinished,
        registry=registry,
    )(reconcile_run)

    # Jobs: a finished or deleted Job moves its owner on ----------------------------------------

    @kopf.on.event(
        "batch", "v1", "jobs", labels={names.MANAGED_BY: names.OPERATOR_NAME}, registry=registry
    )
    def job_changed(
        event: kopf.RawEvent, body: kopf.Body, namespace: str | None, **_: object
    ) -> None:
        deleted = event.get("type") == "DELETED"
        if not namespace or not (deleted or job_state(dict(body)) is not JobState.ACTIVE):
            return
        annotations = body.metadata.annotations
        labels = body.metadata.labels
        role = labels.get(names.ROLE)
        try:
            if role == names.Role.TRAINING.value:
                run = annotations.get(names.RUN_ANNOTATION)
                if run:
                    _guarded("MorphogeneticRun", lambda: reconcilers.runs.reconcile(namespace, run))
            else:
                blueprint = annotations.get(names.BLUEPRINT_ANNOTATION)
                if blueprint:
                    _guarded(
                        "Blueprint",
                        lambda: reconcilers.blueprints.reconcile(namespace, blueprint),
                    )
        except kopf.TemporaryError as error:
            # Event handlers are not retried by kopf; the owner's resync timer catches up.
            LOGGER.info("job %s/%s: %s", namespace, body.metadata.name, error)

    return registry


def configure(settings: kopf.OperatorSettings, operator: OperatorSettings) -> None:
    """Apply the operator's choices to kopf's settings.

    Args:
        settings: kopf's settings (from the startup handler).
        operator: The operator's settings.
    """
    # Progress and the last handled spec live in annotations under Esper's group, since the
    # status schema is Esper's contract and the API server prunes unknown status fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.peering.lifetime = operator.peering_lifetime_seconds
    settings.peering.stealth = True
    settings.execution.max_workers = operator.workers
    # Under load the operator's own patches come back on the watch late; after this long kopf
    # assumes them lost and handles a stale body again (a Blueprint created twice). 5 s is
    # kopf's default; a 500-Blueprint burst delays them by 20 s and more.
    settings.persistence.consistency_timeout = 60.0
    # kopf posts a Kubernetes Event per handler log line at INFO; only warnings are worth it.
    settings.posting.level = logging.WARNING
