"""Simic's tasks: varied, reproducible, and never the evaluation's held-out configurations."""

from esper.contracts.run import DatasetName, PolicyKind
from esper.simic.tasks import BLUEPRINTS, HELD_OUT_TASKS, training_tasks


def _configuration(task: object) -> tuple[object, ...]:
    return (task.dataset, task.train_subset, task.hidden, task.depth)  # type: ignore[attr-defined]


def test_training_tasks_are_reproducible_and_varied() -> None:
    tasks = training_tasks(40, seed=3)
    assert tasks == training_tasks(40, seed=3)
    assert tasks != training_tasks(40, seed=4)
    assert len({task.seed for task in tasks}) == 40
    assert len({task.dataset for task in tasks}) >= 2
    assert len({task.hidden for task in tasks}) >= 3
    assert len({task.depth for task in tasks}) >= 2


def test_no_training_task_has_a_held_out_configuration() -> None:
    held_out = {_configuration(task) for task in HELD_OUT_TASKS}
    for seed in range(20):
        for task in training_tasks(50, seed=seed):
            assert _configuration(task) not in held_out
            assert task.dataset is not DatasetName.FASHION_MNIST


def test_run_spec_is_the_shared_protocol() -> None:
    task = HELD_OUT_TASKS[0]
    grown = task.run_spec(PolicyKind.GNN, checkpoint="net.pt")
    plain = task.run_spec(PolicyKind.NONE)
    assert grown.policy.checkpoint == "net.pt"
    assert grown.wait_for_kernels
    assert not plain.wait_for_kernels
    assert list(grown.blueprints) == list(BLUEPRINTS)
    assert grown.model_copy(update={"policy": plain.policy, "wait_for_kernels": False}) == plain
    assert grown.dataset.train_subset == task.train_subset
    assert grown.host.kwargs == {"hidden": task.hidden, "depth": task.depth}
    assert task.name == "fashion-mnist-n3000-h32x2-e20-s0"
