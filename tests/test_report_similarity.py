"""The FedBip similarity heat map of ``fedbrick-flower report`` (its registry declaration drawn by the generic matrix
drawer): matrices reordered by task, PNGs per group."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbrick_flower.registry import algorithm_entry
from fedbrick_flower.report import ReportError, matrix_table, write_matrix_plots

(PLOT,) = algorithm_entry("fedbip").metrics.report_plots

# Clients listed out of task order; b-2 received nothing this round (absent), so it is a column only.
ROW = {
    "round": 3,
    "phase": "similarity",
    "group": "minilm/r8",
    "clients": ["b-1", "a-1", "b-2"],
    "tasks": ["tb", "ta", "tb"],
    "ages": [0, 0, 1],
    "receivers": ["b-1", "a-1"],
    "similarity": [[1.0, 0.1, 0.8], [0.1, 1.0, -0.2], [0.8, -0.2, 1.0]],
    "weights": [[0.5, 0.05, 0.45], [0.1, 0.9, 0.0]],
    "layerwise": False,
}


def test_similarity_matrix_orders_clients_by_task() -> None:
    # Execute
    table = matrix_table([ROW], PLOT, 3, "minilm/r8")

    # Assert
    assert table["rows"] == table["columns"] == ["a-1", "b-1", "b-2"]
    assert table["matrix"] == [[1.0, 0.1, -0.2], [0.1, 1.0, 0.8], [-0.2, 0.8, 1.0]]


def test_weight_matrix_has_receivers_as_rows() -> None:
    # Execute
    table = matrix_table([ROW], PLOT, 3, "minilm/r8", key="weights")

    # Assert
    assert table["rows"] == ["a-1", "b-1"] and table["row_labels"] == ["ta", "tb"]
    assert table["matrix"] == [[0.9, 0.1, 0.0], [0.05, 0.5, 0.45]]


def test_missing_round_is_named_and_plots_are_written(tmp_path: Path) -> None:
    # Execute
    paths = write_matrix_plots([ROW, {**ROW, "round": 1}], PLOT, tmp_path)

    # Assert
    with pytest.raises(ReportError, match="round 2"):
        matrix_table([ROW], PLOT, 2, "minilm/r8")
    assert [p.name for p in paths] == ["similarity-minilm-r8.png"] and paths[0].stat().st_size > 10_000
    assert write_matrix_plots([{"round": 1, "phase": "train"}], PLOT, tmp_path / "none") == []
