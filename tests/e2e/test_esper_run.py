"""User story: ``esper run CONFIG`` trains a model that grows, and reports it against a baseline.

One real run (``python -m esper run`` as a subprocess, ``ESPER_HOME`` in a temporary directory so
Urza's SQLite file and artifact directory start empty) of ``configs/run-tiny.yaml``: MNIST-1D,
an MLP host with two slots, one blueprint (so one kernel is compiled, by the embedded forge's
worker processes), a schedule that grows a seed, blends it and judges it within 174 steps, and
the baseline. The module's tests read what it left:

- the exit status, the printed report paths, and ``report.json`` as a valid ``RunReport``;
- the kernel Urza compiled (exactly one, Validated);
- each slot's lifecycle in the legal order with non-decreasing steps, and a fossilized seed;
- ``report.md`` and ``report.png``;
- the grown and baseline curves: equal up to the first germination (a dormant wrapped host is
  bit-identical to the plain host, and both runs see the same seed and data order), still equal
  while the seed trains in isolation, different once it blends in;
- ``checkpoint.pt``: loaded into a freshly built and wrapped host it restores the grown
  morphology (stages, kernels, weights: the same test accuracy);
- ``esper run CONFIG --resume RUN_DIR`` on (a copy of) the finished run: exit 0, same results.

The error paths go through the same Typer app in-process (nothing trains, so a subprocess would
only add its start-up time): each ends with status 1 and one ``esper: error:`` line that says
what is wrong.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from esper import cli
from esper.blueprints.library import LIBRARY
from esper.contracts.report import CurvePoint, LifecycleMark, RunReport
from esper.contracts.run import MorphogeneticRunSpec
from esper.contracts.seed import SeedStage
from esper.data import DatasetSplits, load_dataset
from esper.kasmina.wrap import wrap
from esper.tolaria.trainer import Split, evaluate, load_checkpoint
from esper.zoo import build_host
from tests.support.cli_environment import cli_environment

pytestmark = pytest.mark.timeout(1800)

CONFIG = Path(__file__).parent / "configs" / "run-tiny.yaml"
RUN_TIMEOUT = 900.0
"""Bound on one ``esper run`` (about 50 s cold on an idle 2-core machine, mostly the compile)."""

STAGE_ORDER = [
    SeedStage.DORMANT,
    SeedStage.GERMINATED,
    SeedStage.TRAINING,
    SeedStage.BLENDING,
    SeedStage.PROBATION,
]
LEGAL_MOVES = {
    *itertools.pairwise(STAGE_ORDER),
    (SeedStage.PROBATION, SeedStage.FOSSILIZED),
    # A seed may be culled from any live stage (probation's verdict, a decision, the governor);
    # a culled slot is emptied at once.
    *((stage, SeedStage.CULLED) for stage in STAGE_ORDER[1:]),
    (SeedStage.CULLED, SeedStage.DORMANT),
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _environment(root: Path) -> dict[str, str]:
    # rich wraps the summary at the terminal width
    return cli_environment(root, COLUMNS="200")


def _esper_run(root: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esper", "run", *arguments],
        env=_environment(root),
        cwd=root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def _read_report(run_dir: Path) -> RunReport:
    return RunReport.model_validate_json((run_dir / "report.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class FinishedRun:
    """The module's one run.

    Attributes:
        root: The test's HOME and working directory; ``root / "esper-home"`` is ``ESPER_HOME``.
        run_dir: The run directory (``--out``).
        result: The finished ``esper run`` process.
        report: ``report.json``, validated.
    """

    root: Path
    run_dir: Path
    result: subprocess.CompletedProcess[str]
    report: RunReport

    @property
    def home(self) -> Path:
        return self.root / "esper-home"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    root = tmp_path_factory.mktemp("esper-run")
    run_dir = root / "run"
    result = _esper_run(root, str(CONFIG), "--out", str(run_dir))
    assert result.returncode == 0, f"esper run failed:\n{result.stdout}\n{result.stderr}"
    return FinishedRun(root, run_dir, result, _read_report(run_dir))


def _first_step(report: RunReport, stage: SeedStage) -> int:
    return min(mark.step for mark in report.lifecycle if mark.target is stage)


# The run ---------------------------------------------------------------------------------------


def test_run_exits_zero_and_prints_where_the_report_is(finished_run: FinishedRun) -> None:
    output = finished_run.result.stdout + finished_run.result.stderr
    assert "Traceback" not in output
    for name in ("report.json", "report.md", "report.png"):
        assert str(finished_run.run_dir / name) in output
    report = finished_run.report
    spec = MorphogeneticRunSpec.model_validate(yaml.safe_load(CONFIG.read_text(encoding="utf-8")))
    assert report.spec == spec
    saved = (finished_run.run_dir / "spec.json").read_text(encoding="utf-8")
    assert MorphogeneticRunSpec.model_validate_json(saved) == spec
    assert report.run_id.startswith("run-tiny-")
    assert report.device.startswith("cpu")
    assert report.torch_version == torch.__version__
    assert report.started_at < report.finished_at
    assert report.rollbacks == []
    steps_per_epoch = -(-len(_data(finished_run).train) // spec.dataset.batch_size)
    assert report.baseline is not None
    assert report.grown.steps == report.baseline.steps == spec.schedule.epochs * steps_per_epoch
    grown = f"test accuracy {100 * report.grown.test_accuracy:.2f}%"
    baseline = f"test accuracy {100 * report.baseline.test_accuracy:.2f}%"
    assert grown in output
    assert baseline in output


def test_one_kernel_was_compiled_and_validated(finished_run: FinishedRun) -> None:
    with sqlite3.connect(finished_run.home / "urza.sqlite") as connection:
        kernels = connection.execute("SELECT id, phase FROM kernels").fetchall()
    assert [phase for _id, phase in kernels] == ["Validated"]
    seeds = finished_run.report.seeds
    assert seeds
    assert {seed.kernel_id for seed in seeds} == {kernels[0][0]}
    assert {seed.blueprint_name for seed in seeds} == {"bottleneck-mlp"}


def test_with_no_setup_the_kernel_was_signed_with_the_local_key(finished_run: FinishedRun) -> None:
    # The forge's worker signed with $ESPER_HOME/signing.key, created on first use, and the
    # training process verified with the same key before grafting (docs/security.md).
    key = (finished_run.home / "signing.key").read_bytes().strip()
    assert len(key) >= 32
    with sqlite3.connect(finished_run.home / "urza.sqlite") as connection:
        rows = connection.execute("SELECT signature_key_id, signature FROM kernels").fetchall()
    assert rows == [("local-" + hashlib.sha256(key).hexdigest()[:12], rows[0][1])]
    assert rows[0][1] is not None


def test_lifecycle_is_legal_and_a_seed_fossilizes(finished_run: FinishedRun) -> None:
    report = finished_run.report
    marks = report.lifecycle
    assert marks, "no seed grew"
    assert [mark.step for mark in marks] == sorted(mark.step for mark in marks)
    by_slot: dict[str, list[LifecycleMark]] = {}
    for mark in marks:
        by_slot.setdefault(mark.slot_id, []).append(mark)
    for slot_id, slot_marks in by_slot.items():
        stage = SeedStage.DORMANT
        for mark in slot_marks:
            assert mark.source is stage, f"{slot_id}: {mark.source} after {stage}"
            assert (mark.source, mark.target) in LEGAL_MOVES, f"{slot_id}: {mark}"
            stage = mark.target
    assert any(mark.target is SeedStage.FOSSILIZED for mark in marks)
    # This schedule's seed lives its whole life: one slot, every stage, fossilized.
    fossilized = [seed for seed in report.seeds if seed.final_stage is SeedStage.FOSSILIZED]
    assert len(fossilized) == 1
    seed = fossilized[0]
    assert [(mark.source, mark.target) for mark in by_slot[seed.slot_id]] == [
        *itertools.pairwise(STAGE_ORDER),
        (SeedStage.PROBATION, SeedStage.FOSSILIZED),
    ]
    steps = [mark.step for mark in by_slot[seed.slot_id]]
    assert steps == sorted(steps)
    assert (seed.germinated_step, seed.ended_step) == (steps[0], steps[-1])
    assert seed.contribution is not None
    assert seed.contribution > report.spec.policy.min_contribution
    assert seed.params > 0
    assert report.baseline is not None
    assert report.grown.params == report.baseline.params + seed.params
    germinations = [d for d in report.decisions if d.kernel_id == seed.kernel_id]
    assert [(d.slot_id, d.step) for d in germinations] == [(seed.slot_id, seed.germinated_step)]


def test_markdown_and_plot(finished_run: FinishedRun) -> None:
    report = finished_run.report
    assert report.baseline is not None
    markdown = (finished_run.run_dir / "report.md").read_text(encoding="utf-8")
    assert f"| grown | {100 * report.grown.test_accuracy:.2f}% |" in markdown
    assert f"| baseline (no growth) | {100 * report.baseline.test_accuracy:.2f}% |" in markdown
    assert report.run_id in markdown
    assert "bottleneck-mlp" in markdown
    assert "FOSSILIZED" in markdown
    plot = (finished_run.run_dir / "report.png").read_bytes()
    assert plot.startswith(PNG_SIGNATURE)
    assert len(plot) > 10_000


def _curve_values(point: CurvePoint) -> tuple[int, int, float, float, float]:
    return (point.step, point.epoch, point.train_loss, point.val_loss, point.val_accuracy)


def test_grown_and_baseline_curves_agree_until_the_seed_blends_in(
    finished_run: FinishedRun,
) -> None:
    report = finished_run.report
    assert report.baseline is not None
    grown, baseline = report.grown.curve, report.baseline.curve
    assert [p.step for p in grown] == [p.step for p in baseline]
    germinated = _first_step(report, SeedStage.GERMINATED)
    blending = _first_step(report, SeedStage.BLENDING)
    before = [i for i, point in enumerate(grown) if point.step < germinated]
    assert len(before) >= 2, "the run grew before there was a curve to compare"
    for i in before:
        # Everything, parameter counts included: exactly the same model and data order.
        assert grown[i] == baseline[i]
    # A training seed's input is detached and its output adds exactly zero, so the host (and
    # every value the curve records but the parameter count) stays the baseline's...
    isolated = [i for i, point in enumerate(grown) if germinated <= point.step < blending]
    assert isolated
    for i in isolated:
        assert _curve_values(grown[i]) == _curve_values(baseline[i])
        assert grown[i].params > baseline[i].params
    # ...and once it blends in, the grown model is a different model.
    after = [i for i, point in enumerate(grown) if point.step > blending]
    assert after
    assert any(grown[i].val_loss != baseline[i].val_loss for i in after)


def _data(run: FinishedRun) -> DatasetSplits:
    """The run's data, from the cache the run left under ``ESPER_HOME``."""
    spec = run.report.spec
    return load_dataset(spec.dataset, spec.seed, run.home / "data")


def _split(dataset: TensorDataset) -> Split:
    features, labels = dataset.tensors
    return Split(features, labels)


def test_the_random_grafting_baseline_grows_from_the_same_kernels(
    finished_run: FinishedRun,
) -> None:
    # The same run with `policy: random`, in the same ESPER_HOME: its kernel is already
    # Validated, so nothing compiles; the baseline grows at the heuristic's plateau, in a slot
    # and with a kernel drawn from the legal ones.
    document = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    document["policy"]["kind"] = "random"
    document["baseline"] = False
    config = finished_run.root / "run-random.yaml"
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    run_dir = finished_run.root / "random"
    result = _esper_run(finished_run.root, str(config), "--out", str(run_dir))
    assert result.returncode == 0, f"esper run failed:\n{result.stdout}\n{result.stderr}"
    report = _read_report(run_dir)
    [decision] = report.decisions
    assert decision.reason.startswith("random grafting: ")
    assert decision.step == _first_step(finished_run.report, SeedStage.GERMINATED)
    assert {seed.kernel_id for seed in report.seeds} == {
        seed.kernel_id for seed in finished_run.report.seeds
    }


def test_a_gnn_policy_checkpoint_drives_the_run(finished_run: FinishedRun) -> None:
    # An untrained network whose kind head is biased to grow whenever it may: the run must
    # encode each boundary, let the network choose among legal actions only, and apply them.
    from esper.tamiyo import gnn  # torch_geometric: only this test needs it
    from esper.tamiyo.encoding import ActionKind

    torch.manual_seed(0)
    net = gnn.TamiyoNet()
    final = net.kind_head[-1]
    assert isinstance(final, torch.nn.Linear)
    assert final.bias is not None
    with torch.no_grad():
        final.bias[int(ActionKind.GERMINATE)] = 50.0
    gnn.save(net, finished_run.root / "eager-grower.pt")
    document = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    document["policy"] = {**document["policy"], "kind": "gnn", "checkpoint": "eager-grower.pt"}
    document["baseline"] = False
    config = finished_run.root / "run-gnn.yaml"
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    run_dir = finished_run.root / "gnn"
    result = _esper_run(finished_run.root, str(config), "--out", str(run_dir))
    assert result.returncode == 0, f"esper run failed:\n{result.stdout}\n{result.stderr}"
    report = _read_report(run_dir)
    assert report.decisions, "a policy biased to grow never grew"
    assert all(d.reason.startswith("gnn policy: ") for d in report.decisions)
    # It grew at the first boundary where it could, long before the heuristic's plateau.
    first = report.decisions[0]
    assert first.action.value == "germinate"
    assert first.step < _first_step(finished_run.report, SeedStage.GERMINATED)
    assert {seed.kernel_id for seed in report.seeds} <= {
        seed.kernel_id for seed in finished_run.report.seeds
    }


def test_checkpoint_restores_the_grown_morphology(finished_run: FinishedRun) -> None:
    spec = finished_run.report.spec
    data = _data(finished_run)
    torch.manual_seed(spec.seed + 1)  # other initial weights: all of them must come back
    host = build_host(spec.host, data.input_shape, data.num_classes)
    model = wrap(host, spec.injection, example_input=data.train.tensors[0][:2])
    assert all(slot.stage is SeedStage.DORMANT for slot in model.seed_slots())
    checkpoint = load_checkpoint(finished_run.run_dir / "checkpoint.pt")
    assert checkpoint["epochs_done"] == spec.schedule.epochs

    model.load_state_dict(checkpoint["controller"]["model"])

    final = {seed.slot_id: seed for seed in finished_run.report.seeds}
    for slot in model.seed_slots():
        if slot.slot_id in final and final[slot.slot_id].final_stage is not SeedStage.CULLED:
            seed = final[slot.slot_id]
            assert slot.stage is seed.final_stage
            assert slot.state.kernel_id == seed.kernel_id
            assert slot.state.blueprint_hash == seed.blueprint_hash
            assert slot.blueprint_name == seed.blueprint_name
            assert slot.seed_param_count() == seed.params
        else:
            assert slot.stage is SeedStage.DORMANT
            assert slot.seed is None
    assert model.param_count() == finished_run.report.grown.params
    # The weights came back too: the restored model scores what the run reported.
    restored = evaluate(model, _split(data.test), torch.device("cpu"))
    assert restored.accuracy == pytest.approx(finished_run.report.grown.test_accuracy, abs=1e-9)
    assert restored.loss == pytest.approx(finished_run.report.grown.test_loss, rel=1e-5)


def test_resume_of_the_finished_run_reports_the_same_results(finished_run: FinishedRun) -> None:
    # A copy, so the other tests still read the original run.
    resumed_dir = finished_run.root / "resumed"
    shutil.copytree(finished_run.run_dir, resumed_dir)

    result = _esper_run(finished_run.root, str(CONFIG), "--resume", str(resumed_dir))

    assert result.returncode == 0, f"resume failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    resumed = _read_report(resumed_dir)
    original = finished_run.report
    assert resumed.run_id == resumed_dir.name
    assert resumed.grown.test_accuracy == original.grown.test_accuracy
    assert resumed.grown.test_loss == original.grown.test_loss
    assert resumed.grown.params == original.grown.params
    assert resumed.grown.curve == original.grown.curve
    assert resumed.lifecycle == original.lifecycle
    assert resumed.seeds == original.seeds
    assert resumed.baseline is not None
    assert original.baseline is not None
    assert resumed.baseline.test_accuracy == original.baseline.test_accuracy
    assert f"test accuracy {100 * original.grown.test_accuracy:.2f}%" in result.stderr


# Errors, through the CLI -----------------------------------------------------------------------


def _config(directory: Path, **changes: Mapping[str, Any] | Any) -> Path:
    """Write the e2e config with top-level sections updated (dicts merged) to ``directory``."""
    document = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _fails(
    monkeypatch: pytest.MonkeyPatch, root: Path, arguments: list[str], **variables: str
) -> str:
    """Run ``esper run ARGS`` in-process in a bare environment; return its one error line."""
    for name in list(os.environ):
        if name.startswith("ESPER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ESPER_HOME", str(root / "esper-home"))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli.app, ["run", *arguments])
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith("esper: error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    return lines[0]


def test_missing_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    absent = tmp_path / "absent.yaml"
    line = _fails(monkeypatch, tmp_path, [str(absent)])
    assert f"config file {absent} does not exist" in line
    assert not (tmp_path / "esper-home").exists()


def test_invalid_config_names_the_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _config(tmp_path, schedule={"learningRate": -1})
    line = _fails(monkeypatch, tmp_path, [str(config), "--out", str(tmp_path / "run")])
    assert f"{config}: schedule.learningRate: Input should be greater than 0" in line
    assert not (tmp_path / "run").exists()


def test_unknown_blueprint_lists_the_library(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _config(tmp_path, blueprints=["bottleneck-mlp", "no-such-blueprint"])
    line = _fails(monkeypatch, tmp_path, [str(config), "--out", str(tmp_path / "run")])
    assert "blueprint 'no-such-blueprint' is not in the library" in line
    assert all(name in line for name in LIBRARY)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "is not a file"), (b"not a network", "is not a Tamiyo checkpoint")],
    ids=["missing", "not-a-network"],
)
def test_gnn_policy_with_a_bad_checkpoint_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes | None, fragment: str
) -> None:
    if content is not None:
        (tmp_path / "tamiyo.pt").write_bytes(content)
    # Relative to the config's directory, as blueprint files are.
    config = _config(tmp_path, policy={"kind": "gnn", "checkpoint": "tamiyo.pt"})
    line = _fails(monkeypatch, tmp_path, [str(config), "--out", str(tmp_path / "run")])
    assert f"{tmp_path / 'tamiyo.pt'}" in line
    assert fragment in line
    assert not (tmp_path / "run").exists()


def test_non_empty_out_directory_needs_resume(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    line = _fails(monkeypatch, tmp_path, [str(CONFIG), "--out", str(out)])
    assert f"run directory {out} is not empty; use --resume to continue it" in line
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine\n"


def test_resume_of_a_directory_that_is_not_a_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    line = _fails(monkeypatch, tmp_path, [str(CONFIG), "--resume", str(directory)])
    assert f"{directory} is not a run directory (no spec.json)" in line
    assert list(directory.iterdir()) == []


def test_resume_with_another_config_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = MorphogeneticRunSpec.model_validate(yaml.safe_load(CONFIG.read_text(encoding="utf-8")))
    other = spec.model_copy(update={"seed": spec.seed + 1})
    (run_dir / "spec.json").write_text(other.to_json() + "\n", encoding="utf-8")
    line = _fails(monkeypatch, tmp_path, [str(CONFIG), "--resume", str(run_dir)])
    assert f"{CONFIG} differs from the config {run_dir} was started with" in line
    assert sorted(path.name for path in run_dir.iterdir()) == ["spec.json"]


def test_fashion_mnist_missing_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "fashion-mnist"
    empty.mkdir()
    config = _config(tmp_path, dataset={"name": "fashion-mnist"})
    line = _fails(
        monkeypatch,
        tmp_path,
        [str(config), "--out", str(tmp_path / "run")],
        ESPER_FASHION_MNIST_DIR=str(empty),
    )
    assert f"Fashion-MNIST is not installed: {empty} lacks" in line
    assert "`sudo apt-get install dataset-fashion-mnist`" in line
    assert "$ESPER_FASHION_MNIST_DIR" in line


def test_an_unusable_signing_key_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    line = _fails(
        monkeypatch,
        tmp_path,
        [str(CONFIG), "--out", str(tmp_path / "run")],
        ESPER_SIGNING_KEY="too-short",
    )
    assert "ESPER_SIGNING_KEY: key 'default' has 9 bytes, at least 32 are required" in line
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "esper-home" / "urza.sqlite").exists()
