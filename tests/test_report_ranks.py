"""The rank-collapse plot of ``fedbrick-flower report`` (the rank methods' declaration, drawn by the curve drawer)."""

from __future__ import annotations

from pathlib import Path

from fedbrick_flower.registry import algorithm_entry
from fedbrick_flower.report import write_curve_plot

(PLOT,) = algorithm_entry("flexlora").metrics.report_plots


def test_rank_collapse_plot_is_written_for_rank_runs_only(tmp_path: Path) -> None:
    # Prepare
    rows = [
        {"round": 1, "phase": "rank-diagnostic", "energy-beyond-min-rank": 0.4},
        {"round": 2, "phase": "rank-diagnostic", "energy-beyond-min-rank": 0.3},
        {"round": 1, "phase": "flexlora-truncation", "client": "c2", "rank": 2, "discarded-energy": 0.5},
        {"round": 2, "phase": "flexlora-truncation", "client": "c2", "rank": 2, "discarded-energy": 0.45},
        {"round": 1, "phase": "train", "client": "c2"},
    ]

    # Execute
    path = write_curve_plot(rows, PLOT, tmp_path / "plots")
    nothing = write_curve_plot(rows[-1:], PLOT, tmp_path / "other")

    # Assert
    assert path == tmp_path / "plots" / "rank-collapse.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert nothing is None and not (tmp_path / "other").exists()
