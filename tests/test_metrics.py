"""The one reader of ``metrics.jsonl``: reading, picking and averaging rows, declared curves and columns, and the
notes on rows that nothing can draw."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import fedbrick_flower
from fedbrick_flower.metrics import (
    GENERIC_PHASES,
    Curve,
    Matrix,
    MatrixPlot,
    Phase,
    TableColumn,
    column_values,
    curve_labels,
    curve_points,
    group,
    last_by_client,
    last_round,
    left_out_notes,
    mean_of,
    read_metrics,
)

PHASES = {phase.name: phase for phase in GENERIC_PHASES} | {"mix": Phase("mix", ("round", "group", "weights"))}
MIX_PLOT = MatrixPlot(
    name="mix",
    phase="mix",
    column_key="clients",
    label_key="tasks",
    matrices=(Matrix("weights", rows_key="clients"),),
    title="{group}",
    group_key="group",
)


def test_read_metrics_skips_blank_lines_and_a_new_run_has_none(tmp_path: Path) -> None:
    # Prepare
    rows = [{"round": 1, "phase": "train"}, {"round": 1, "phase": "round"}]
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")

    # Execute
    found, empty = read_metrics(tmp_path), read_metrics(tmp_path / "new")

    # Assert
    assert found == rows and empty == []


def test_mean_of_leaves_out_missing_values() -> None:
    # Execute / Assert
    assert mean_of([1.0, None, 2.0]) == pytest.approx(1.5)
    assert mean_of([None]) is None and mean_of([]) is None


def test_group_last_round_and_last_row_per_client() -> None:
    # Prepare: rows out of round order; a row without the key groups under None
    rows = [
        {"round": 2, "phase": "evaluate", "client": "a", "accuracy": 0.8},
        {"round": 1, "phase": "evaluate", "client": "a", "accuracy": 0.5},
        {"round": 1, "phase": "evaluate", "client": "b", "accuracy": 0.4},
        {"round": 1, "phase": "round"},
    ]

    # Execute
    by_client = group(rows, "client")
    last = last_by_client(rows[:3])

    # Assert
    assert [len(by_client[c]) for c in ("a", "b", None)] == [2, 1, 1]
    assert {c: r["accuracy"] for c, r in last.items()} == {"a": 0.8, "b": 0.4}
    assert last_round(rows) == 2 and last_round([]) is None


def test_curve_points_average_a_round_per_series_and_labels_come_from_the_last_row() -> None:
    # Prepare: two rows of layer 0 in round 1 (two groups), one lacking the curve's value (another layout)
    curve = Curve("distill", "mse", label="layer {layer} (r={rank})", series_key="layer")
    rows = [
        {"round": 1, "phase": "distill", "layer": 0, "rank": 2, "mse": 0.2},
        {"round": 1, "phase": "distill", "layer": 0, "rank": 4, "mse": 0.4},
        {"round": 2, "phase": "distill", "layer": 1, "rank": 2, "mse": 0.1},
        {"round": 2, "phase": "distill", "layer": 1},
        {"round": 2, "phase": "train", "layer": 0, "mse": 9.0},
    ]

    # Execute
    points, labels = curve_points(rows, curve), curve_labels(rows, curve)

    # Assert
    assert points == {0: {1: pytest.approx(0.3)}, 1: {2: pytest.approx(0.1)}}
    assert labels == {0: "layer 0 (r=4)", 1: "layer 1 (r=2)"}


def test_a_curve_of_one_line_is_keyed_by_its_label() -> None:
    # Prepare
    curve = Curve("diag", "share", label="aggregate")

    # Execute
    points = curve_points([{"round": 3, "phase": "diag", "share": 0.5}], curve)

    # Assert
    assert points == {"aggregate": {3: 0.5}}


@pytest.mark.parametrize(("reduce", "expected"), [("mean", 2.0), ("max", 3.0), ("sum", 4.0)])
def test_column_values_reduce_a_rounds_rows(reduce: str, expected: float) -> None:
    # Prepare
    column = TableColumn("c", "p", "v", reduce=reduce)
    rows = [{"round": 1, "phase": "p", "v": 1.0}, {"round": 1, "phase": "p", "v": 3.0}, {"round": 2, "phase": "p"}]

    # Execute
    values = column_values(rows, column)

    # Assert: round 2's row lacks the key, so the round has no value
    assert values == {1: expected}


def test_notes_name_undeclared_phases_and_rows_a_drawer_cannot_read() -> None:
    # Prepare: one mix row of the declared layout, two of another (no group), and a phase nobody declares
    good = {"round": 1, "phase": "mix", "group": "g", "clients": ["a"], "tasks": ["t"], "weights": [[1.0]]}
    other = {"round": 1, "phase": "mix", "clients": ["a"], "tasks": ["t"], "lora_weights": [[1.0]]}
    rows = [good, other, {**other, "round": 2}, {"round": 1, "phase": "mystery"}]

    # Execute
    notes = left_out_notes(rows, PHASES, [MIX_PLOT])

    # Assert
    assert notes == [
        "note: 1 rows of phase 'mystery': no registered algorithm declares it, so none is drawn",
        "note: 2 'mix' rows lack group, weights (another layout, e.g. an older run's): left out of 'mix'",
    ]
    assert left_out_notes([good], PHASES, [MIX_PLOT]) == []


@pytest.mark.parametrize("module", ["report.py", "leaderboard/compare.py", "metrics.py", "registry.py"])
def test_readers_import_no_strategy(module: str) -> None:
    # Prepare
    path = Path(fedbrick_flower.__file__).parent / module
    tree = ast.parse(path.read_text())

    # Execute
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)] + [
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    ]

    # Assert: the declarations they draw come from the registry, which imports no strategy either
    assert not [name for name in imported if "strategies" in name]
