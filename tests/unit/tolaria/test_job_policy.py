"""Which policy a run's spec gives: the packaged network for ``gnn`` without a checkpoint."""

from pathlib import Path

import pytest

from esper.contracts.run import PolicyKind
from esper.simic.tasks import HELD_OUT_TASKS
from esper.tamiyo.checkpoints import packaged_checkpoint
from esper.tamiyo.gnn_policy import GnnPolicy
from esper.tamiyo.heuristic import HeuristicPolicy
from esper.tolaria import job


def test_gnn_without_a_checkpoint_uses_the_packaged_network() -> None:
    spec = HELD_OUT_TASKS[0].run_spec(PolicyKind.GNN)
    assert job.policy_checkpoint(spec) == packaged_checkpoint()
    job.check_policy(spec)  # the packaged file is a valid network
    assert isinstance(job._policy(spec, None), GnnPolicy)


def test_a_given_checkpoint_wins(tmp_path: Path) -> None:
    spec = HELD_OUT_TASKS[0].run_spec(PolicyKind.GNN, checkpoint=str(tmp_path / "mine.pt"))
    assert job.policy_checkpoint(spec) == tmp_path / "mine.pt"
    with pytest.raises(job.UnsupportedPolicyError, match=r"mine\.pt is not a file"):
        job.check_policy(spec)


def test_an_override_replaces_the_specs_policy() -> None:
    spec = HELD_OUT_TASKS[0].run_spec(PolicyKind.HEURISTIC)
    override = HeuristicPolicy(5, 0.5)
    assert job._policy(spec, override) is override
    assert isinstance(job._policy(spec, None), HeuristicPolicy)


def test_a_missing_packaged_network_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Path:
        raise FileNotFoundError("the packaged Tamiyo network x is missing; reinstall esper")

    monkeypatch.setattr(job, "packaged_checkpoint", missing)
    with pytest.raises(job.UnsupportedPolicyError, match="packaged Tamiyo network x is missing"):
        job.check_policy(HELD_OUT_TASKS[0].run_spec(PolicyKind.GNN))
