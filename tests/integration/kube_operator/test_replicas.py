"""Two replicas of the operator on the real control plane: one works, the other takes over.

kopf's peering (``ClusterKopfPeering esper-operator``) pauses every replica but the one with the
highest priority; each replica draws a random one. The fixture's peering lifetime is 5 s, so the
standby resumes about 5 s after the active replica is killed.
"""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.integration.kube_operator.conftest import OperatorFactory
from tests.integration.kube_operator.support import (
    OperatorProcess,
    apply_manifest,
    blueprint_manifest,
    job_roles,
    kube_json,
    log_messages,
    phase_of,
    wait_for,
    wait_for_phase,
)
from tests.servers.kube import ControlPlane
from tests.support.reliability import note_faults, note_lost

pytestmark = [pytest.mark.timeout(900), pytest.mark.reliability("operator-killed")]

PAUSING = "Pausing operations in favour of"
"""kopf's line (``kopf._core.engines.peering``) when a peer of higher priority is alive."""
RESUMING = "Resuming operations after the pause."
"""kopf's line when no peer of higher (or equal) priority is alive any more."""
RESUMING_LINE = f"{RESUMING} Conflicting operators with the same priority are gone."
ONE_KERNEL = ["benchmark", "compile"]
"""The Jobs of a Blueprint with one target: one compile Job, one benchmark Job."""


def _priority(replica: OperatorProcess) -> int:
    started = log_messages(replica, contains="esper operator started")
    assert len(started) == 1, started
    match = re.search(r"peering 'esper-operator' priority (\d+)", started[0])
    assert match is not None, started[0]
    return int(match.group(1))


def _healthz(replica: OperatorProcess) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.port}/healthz", timeout=5) as answer:
        return int(answer.status)


def _handled(replica: OperatorProcess, name: str) -> list[str]:
    """kopf's "Handler ... succeeded." lines about one object."""
    return log_messages(replica, about=name, contains="succeeded")


def _peering(replica: OperatorProcess) -> list[str]:
    """The replica's pause and resume lines, in order."""
    return [message for message in log_messages(replica) if message.startswith((PAUSING, RESUMING))]


def test_one_replica_works_and_the_standby_takes_over(
    control_plane: ControlPlane,
    operator_namespace: str,
    start_operator: OperatorFactory,
) -> None:
    namespace = operator_namespace
    # Fixed priorities make the order deterministic: the replica that was working alone pauses
    # when one of higher priority joins (kopf logs that; a replica that starts below an active
    # peer is paused from its start, silently).
    standby = start_operator(PEERING_PRIORITY="100")
    wait_for(
        lambda: _peering(standby) == [RESUMING_LINE],
        timeout=60,
        description="the first replica to work alone",
        interval=0.5,
    )
    active = start_operator(PEERING_PRIORITY="200")
    assert (_priority(standby), _priority(active)) == (100, 200)
    wait_for(
        lambda: _peering(standby)[-1].startswith(PAUSING) and _peering(active),
        timeout=60,
        description="the replicas to settle who works",
        interval=0.5,
    )
    pausing = _peering(standby)[-1]
    assert pausing.startswith(PAUSING), _peering(standby)
    assert "priority=200" in pausing, pausing
    assert _peering(active) == [RESUMING_LINE]
    assert [_healthz(replica) for replica in (standby, active)] == [200, 200]

    apply_manifest(control_plane, namespace, blueprint_manifest("replicated-first", hidden=8))
    wait_for_phase(control_plane, namespace, "replicated-first", "Ready", timeout=600)
    assert job_roles(control_plane, namespace, "replicated-first") == ONE_KERNEL
    assert _handled(active, "replicated-first")
    assert not _handled(standby, "replicated-first")

    # The active replica crashes; the standby resumes once its peering record expires.
    active.kill()
    note_faults()
    apply_manifest(control_plane, namespace, blueprint_manifest("replicated-second", hidden=24))
    wait_for_phase(control_plane, namespace, "replicated-second", "Ready", timeout=600)
    peering = _peering(standby)
    assert peering[-1].startswith(RESUMING), peering
    assert any(line.startswith(PAUSING) for line in peering[:-1]), peering
    assert _handled(standby, "replicated-second")
    assert job_roles(control_plane, namespace, "replicated-second") == ONE_KERNEL
    # Lost: the first Blueprint no longer Ready after the failover.
    first = kube_json(control_plane, "blueprint", "replicated-first", "-n", namespace)
    note_lost(int(phase_of(first) != "Ready"))
    # The standby's pass over the first Blueprint (on resume) found nothing to redo.
    assert job_roles(control_plane, namespace, "replicated-first") == ONE_KERNEL
    assert _healthz(standby) == 200
