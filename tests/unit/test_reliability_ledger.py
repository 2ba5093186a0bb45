"""The reliability ledger plugin and its renderer (tests/support/reliability*.py).

The plugin is exercised in a real pytest subprocess on a throwaway test file; the renderer on
ledgers written by hand, so each refusal is seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import reliability, reliability_report
from tests.support.reliability import ROWS

REPOSITORY = Path(__file__).resolve().parents[2]

SAMPLE_TESTS = """
import pytest

from tests.support.reliability import note_faults, note_inputs, note_lost, note_served


@pytest.mark.reliability("redis-restarted")
def test_fault_survived():
    note_faults(2)
    note_served(40)
    note_lost(0)


@pytest.mark.reliability("redis-restarted")
def test_fault_lost_data():
    note_faults()
    note_lost(3)
    assert False


@pytest.mark.reliability("bundle-fuzz")
@pytest.mark.parametrize("n", range(3))
def test_inputs(n):
    note_inputs(n + 1)


@pytest.mark.reliability("bundle-fuzz")
def test_skipped():
    pytest.skip("not here")


def test_unmarked_may_serve_but_not_inject():
    note_served(5)
    note_faults()
"""


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    root = tmp_path_factory.mktemp("ledger")
    (root / "test_sample.py").write_text(SAMPLE_TESTS, encoding="utf-8")
    out = root / "ledger.json"
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.support.reliability",
         "-p", "no:cacheprovider", "--rootdir", str(root), "-c", os.devnull,
         "--reliability-ledger", str(out), str(root / "test_sample.py")],
        capture_output=True, text=True, env=environment, cwd=root, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # two tests fail on purpose
    assert "note_faults() outside a test marked" in result.stdout, result.stdout
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert isinstance(rows, dict)
    return rows


def test_the_ledger_has_every_row_in_order(ledger: dict[str, dict[str, object]]) -> None:
    assert list(ledger) == list(ROWS)
    assert ledger["rbac"]["passed"] == 0
    assert ledger["rbac"]["tests"] == []


def test_a_row_sums_what_its_tests_noted(ledger: dict[str, dict[str, object]]) -> None:
    redis = ledger["redis-restarted"]
    assert (redis["faults"], redis["served"], redis["lost"], redis["lost_checks"]) == (3, 40, 3, 2)
    assert (redis["passed"], redis["failed"], redis["skipped"]) == (1, 1, 0)
    fuzz = ledger["bundle-fuzz"]
    assert (fuzz["inputs"], fuzz["passed"], fuzz["skipped"]) == (6, 3, 1)
    assert len(fuzz["tests"]) == 4  # type: ignore[arg-type]


def _write(path: Path, **changes: dict[str, object]) -> Path:
    rows: dict[str, dict[str, object]] = {}
    for key, row in ROWS.items():
        rows[key] = {
            "area": row.area,
            "title": row.title,
            "served_unit": row.served_unit,
            "inputs": 5 if row.area == "input" else 0,
            "faults": 2 if row.area == "fault" else 0,
            "served": 7,
            "lost": 0,
            "lost_checks": 1 if row.area == "fault" else 0,
            "passed": 1,
            "failed": 0,
            "skipped": 0,
            "tests": [f"tests/x/test_{key.replace('-', '_')}.py::test_it"],
        }
        rows[key].update(changes.get(key, {}))
    path.write_text(json.dumps({"rows": rows}), encoding="utf-8")
    return path


def test_a_clean_ledger_renders_one_table(tmp_path: Path) -> None:
    out = tmp_path / "reliability.md"
    assert reliability_report.main([str(_write(tmp_path / "l.json")), "--out", str(out)]) == 0
    document = out.read_text(encoding="utf-8")
    table = [line for line in document.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(ROWS)
    assert "| Fault | Redis restarted or crashed with events in flight | 1 | — | 2 |" in document
    assert "7 events delivered | **0** (1 check) |" in document
    assert (
        "| Security | No code path unpickles (AST scan of src/) | 1 | — | — | in-process | n/a |"
        in (document)
    )
    assert "`tests/x/test_s3_down.py`" in document


@pytest.mark.parametrize(
    ("row", "change", "problem"),
    [
        ("s3-down", {"lost": 1}, "s3-down: 1 item(s) of data lost"),
        ("rbac", {"passed": 0}, "rbac: no test passed"),
        ("urza-auth", {"failed": 2}, "urza-auth: 2 test(s) failed"),
        ("non-root", {"skipped": 1}, "non-root: 1 test(s) skipped"),
        ("ir-fuzz", {"inputs": 0}, "ir-fuzz: no input was tried"),
        ("redis-restarted", {"faults": 0}, "redis-restarted: no fault was injected"),
        ("training-killed", {"lost_checks": 0}, "training-killed: data lost was never measured"),
    ],
)
def test_a_row_that_does_not_hold_stops_the_document(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    row: str,
    change: dict[str, object],
    problem: str,
) -> None:
    out = tmp_path / "reliability.md"
    out.write_text("the previous document\n", encoding="utf-8")
    ledger = _write(tmp_path / "l.json", **{row: change})
    assert reliability_report.main([str(ledger), "--out", str(out)]) == 1
    assert problem in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "the previous document\n"


def test_a_ledger_without_a_row_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_text(json.dumps({"rows": {"rbac": {}}}), encoding="utf-8")
    with pytest.raises(ValueError, match="rows missing from the ledger: ir-fuzz"):
        reliability_report.load(path)
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match="not a reliability ledger"):
        reliability_report.load(path)


def test_an_unknown_row_is_an_error() -> None:
    with pytest.raises(KeyError, match="unknown reliability row 'no-such-row'"):
        reliability._tally("no-such-row")
