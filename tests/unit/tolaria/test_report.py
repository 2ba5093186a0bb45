"""The run report: JSON the contract accepts, a Markdown summary, and a PNG plot."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from esper.contracts.report import (
    CurvePoint,
    LifecycleMark,
    ModelResult,
    Rollback,
    RunReport,
    SeedSummary,
)
from esper.contracts.run import MorphogeneticRunSpec
from esper.contracts.seed import SeedStage
from esper.tolaria.report import render_markdown, write_report
from tests.unit.contracts import samples

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KERNEL = samples.SAMPLE_KERNEL_ID


def result(accuracy: float, params: int, loss: float = 0.25) -> ModelResult:
    curve = [
        CurvePoint(
            step=step,
            epoch=step // 200,
            train_loss=1.0 / (1 + step),
            val_loss=1.2 / (1 + step),
            val_accuracy=min(accuracy, 0.5 + step / 2000),
            params=params if step >= 400 else 100_000,
        )
        for step in range(100, 700, 100)
    ]
    return ModelResult(
        test_accuracy=accuracy,
        test_loss=loss,
        params=params,
        train_seconds=12.34,
        steps=600,
        train_flops=params * 6 * 600 * 64,
        inference_flops=2 * params,
        curve=curve,
    )


def mark(
    step: int, source: SeedStage, target: SeedStage, slot_id: str = "layer1.0"
) -> LifecycleMark:
    return LifecycleMark(
        step=step,
        slot_id=slot_id,
        source=source,
        target=target,
        kernel_id=KERNEL,
        blueprint_name="residual-mlp",
        reason="test",
    )


def report(*, baseline: ModelResult | None = None, grown: bool = True) -> RunReport:
    lifecycle = [
        mark(100, SeedStage.DORMANT, SeedStage.GERMINATED),
        mark(101, SeedStage.GERMINATED, SeedStage.TRAINING),
        mark(500, SeedStage.PROBATION, SeedStage.FOSSILIZED),
        mark(300, SeedStage.DORMANT, SeedStage.GERMINATED, "layer2.0"),
        mark(450, SeedStage.BLENDING, SeedStage.CULLED, "layer2.0"),
    ]
    seeds = [
        SeedSummary(
            slot_id="layer1.0",
            kernel_id=KERNEL,
            blueprint_hash=samples.BLUEPRINT_HASH,
            blueprint_name="residual-mlp",
            final_stage=SeedStage.FOSSILIZED,
            germinated_step=100,
            ended_step=500,
            params=16_512,
            contribution=0.0123,
        ),
        SeedSummary(
            slot_id="layer2.0",
            kernel_id=KERNEL,
            blueprint_hash=samples.BLUEPRINT_HASH,
            blueprint_name="residual-mlp",
            final_stage=SeedStage.BLENDING,
            germinated_step=300,
            params=16_512,
        ),
    ]
    return RunReport(
        run_id="run-1",
        spec=MorphogeneticRunSpec.model_validate(
            {**samples.run_spec_document(), "baseline": baseline is not None}
        ),
        started_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        finished_at=datetime(2025, 1, 2, 3, 14, 5, tzinfo=UTC),
        device="cpu (x86_64, 2 threads)",
        torch_version="2.13.0",
        grown=result(0.9125, 116_512),
        baseline=baseline,
        lifecycle=lifecycle if grown else [],
        decisions=[samples.adaptation_decision()] if grown else [],
        seeds=seeds if grown else [],
        rollbacks=(
            [Rollback(step=450, restored_step=400, reason="loss spike", culled_slot="layer2.0")]
            if grown
            else []
        ),
    )


def test_write_report_writes_the_three_files(tmp_path: Path) -> None:
    original = report(baseline=result(0.9, 100_000, loss=0.3))
    run_dir = tmp_path / "runs" / "run-1"
    files = write_report(original, run_dir)
    assert (files.json, files.markdown, files.plot) == (
        run_dir / "report.json",
        run_dir / "report.md",
        run_dir / "report.png",
    )
    text = files.json.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert RunReport.model_validate_json(text) == original
    assert files.markdown.read_text(encoding="utf-8") == render_markdown(original)
    png = files.plot.read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 10_000


def test_write_report_without_a_baseline_or_seeds(tmp_path: Path) -> None:
    files = write_report(report(grown=False), tmp_path)
    assert files.plot.read_bytes().startswith(PNG_MAGIC)
    assert RunReport.model_validate_json(files.json.read_text()).baseline is None


def test_markdown_compares_grown_and_baseline_and_lists_seeds() -> None:
    text = render_markdown(report(baseline=result(0.9, 100_000, loss=0.3)))
    lines = text.splitlines()
    assert lines[0] == "# Esper run `run-1`"
    assert (
        "- host: `resnet-small` {'num_classes': 10, 'width': 1.5} on `fashion-mnist`, seed 7, "
        "device cpu (x86_64, 2 threads), torch 2.13.0"
    ) in lines
    assert "- policy: gnn; budget 200000 parameters, at most 2 seeds" in lines
    assert "- 600 steps in 12.3 s" in lines
    assert "| grown | 91.25% | 0.2500 | 116512 | 2.684e+10 | 233024 |" in lines
    assert "| baseline (no growth) | 90.00% | 0.3000 | 100000 | 2.304e+10 | 200000 |" in lines
    assert (
        "The grown model **beats** the same host trained without growth "
        "(+1.25 points of test accuracy, seed 7)."
    ) in lines
    assert (
        "| `layer1.0` | residual-mlp | 16512 | step 100 | FOSSILIZED at step 500 | +0.0123 |"
        in lines
    )
    assert "| `layer2.0` | residual-mlp | 16512 | step 300 | BLENDING |  |" in lines
    assert "- step 450: loss spike (restored step 400)" in lines
    assert "- step 1000, `layer1.0`: gradient norm plateaued" in lines
    assert text.endswith("\n")


@pytest.mark.parametrize("baseline_accuracy", [0.9125, 0.95])
def test_markdown_says_when_growth_does_not_beat_the_baseline(baseline_accuracy: float) -> None:
    text = render_markdown(report(baseline=result(baseline_accuracy, 100_000)))
    assert "The grown model **does not beat** the same host" in text


def test_markdown_of_a_run_without_growth() -> None:
    text = render_markdown(report(grown=False))
    assert "baseline" not in text
    assert "No seed was grown." in text
    assert "## Rollbacks" not in text
    assert text.endswith("## Decisions\n\nNone.\n")
