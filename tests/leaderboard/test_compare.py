"""compare: per-run figures, mean ± std over seeds, worst client, cumulative bytes, the self-contained page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedbrick_flower.leaderboard.compare import (
    CompareError,
    find_runs,
    load_run,
    markdown_table,
    method_table,
    run_figures,
    write_comparison,
)


def _rows(global_accuracy: list[float], client_accuracy: dict[str, list[float]], agg: float = 0.5) -> list[dict]:
    """Synthetic metric rows: 2 clients train each round (up 1000 B, down 3000 B), one server-eval per round."""
    rows = []
    for index, accuracy in enumerate(global_accuracy):
        server_round = index + 1
        for client, values in client_accuracy.items():
            rows.append(
                {
                    "round": server_round,
                    "phase": "train",
                    "client": client,
                    "bytes_up": 1000,
                    "bytes_down": 3000,
                    "train-seconds": 2.0 if client == "a" else 4.0,
                    "optimizer-steps": 5.0 if client == "a" else 15.0,
                    "forward-passes": 5.0 if client == "a" else 25.0,
                    "peak-memory-mb": 100.0 * server_round if client == "a" else 50.0,
                }
            )
            rows.append(
                {"round": server_round, "phase": "evaluate", "client": client, "accuracy": values[index]}
                | {"bytes_up": 0, "bytes_down": 0}
            )
        rows.append({"round": server_round, "phase": "aggregate", "seconds": agg, "updates": 2})
        rows.append(
            {"round": server_round, "phase": "server-eval", "model": "m", "task": "t", "accuracy": accuracy}
            | {"accuracy-without-lora": accuracy - 0.1}
        )
    return rows


def _write_run(folder: Path, method: str, seed: int, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text("{}")
    (folder / "cell.json").write_text(json.dumps({"method": method, "seed": seed}))
    return folder


def test_run_figures_final_worst_client_bytes_and_aggregation() -> None:
    # Prepare
    rows = _rows([0.5, 0.6], {"a": [0.4, 0.9], "b": [0.5, 0.7]}, agg=0.25)

    # Execute
    figures = run_figures(rows)

    # Assert
    assert figures["global_accuracy"] == pytest.approx(0.6)
    assert figures["global_accuracy_without_lora"] == pytest.approx(0.5)
    assert figures["on_device_accuracy"] == pytest.approx(0.8)
    assert figures["worst_client_accuracy"] == pytest.approx(0.7)
    # 2 clients x (1000 + 3000) B per round
    assert figures["cumulative_bytes_by_round"] == [8000.0, 16000.0]
    assert figures["cumulative_bytes"] == 16000.0
    assert figures["bytes_up_per_client_round"] == 1000.0 and figures["bytes_down_per_client_round"] == 3000.0
    assert figures["train_seconds"] == pytest.approx(3.0)
    assert figures["optimizer_steps"] == pytest.approx(10.0) and figures["forward_passes"] == pytest.approx(15.0)
    assert figures["peak_memory_by_client"] == {"a": 200.0, "b": 50.0}
    assert figures["aggregation_seconds"] == pytest.approx(0.25)
    assert figures["distillation_mse_by_layer"] == {}


def test_distillation_error_is_averaged_over_groups_per_layer_and_round() -> None:
    # Prepare: layer 0 distilled for two groups in round 1, layer 1 for one
    rows = [
        {"round": 1, "phase": "distill", "group": "a", "layer": 0, "mse_before": 1.0, "mse_after": 0.2},
        {"round": 1, "phase": "distill", "group": "b", "layer": 0, "mse_before": 1.0, "mse_after": 0.4},
        {"round": 1, "phase": "distill", "group": "a", "layer": 1, "mse_before": 1.0, "mse_after": 0.5},
    ]

    # Execute
    figures = run_figures(rows)

    # Assert
    assert figures["distillation_mse_by_layer"] == {0: {1: pytest.approx(0.3)}, 1: {1: pytest.approx(0.5)}}


def test_method_table_means_and_sample_std_over_seeds(tmp_path: Path) -> None:
    # Prepare: fedra at three seeds (final global 0.6, 0.7, 0.8), fedbrick at one
    runs = [
        load_run(_write_run(tmp_path / f"fedra-{seed}", "fedra", seed, _rows([0.5, g], {"a": [0.1, 0.3]})))
        for seed, g in enumerate([0.6, 0.7, 0.8])
    ]
    runs.append(load_run(_write_run(tmp_path / "fb", "fedbrick", 0, _rows([0.9], {"a": [0.5]}))))

    # Execute
    table = method_table(runs)

    # Assert: sample std (ddof=1) of 0.6, 0.7, 0.8 is 0.1; a single run has std 0
    fedra = table["fedra"]
    assert fedra["seeds"] == [0, 1, 2]
    assert fedra["global_accuracy"]["mean"] == pytest.approx(0.7)
    assert fedra["global_accuracy"]["std"] == pytest.approx(0.1)
    assert fedra["global_by_round"][0] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.0), "n": 3}
    assert table["fedbrick"]["global_accuracy"] == {"mean": pytest.approx(0.9), "std": 0.0, "n": 1}
    assert list(table) == ["fedra", "fedbrick"]


def test_markdown_table_shows_mean_plus_minus_std_and_unavailable_methods(tmp_path: Path) -> None:
    # Prepare
    runs = [
        load_run(_write_run(tmp_path / f"r{seed}", "fedra", seed, _rows([g], {"a": [0.5]})))
        for seed, g in enumerate([0.6, 0.8])
    ]

    # Execute
    text = markdown_table(method_table(runs), {"h2tune": "not available: algorithm not registered"})

    # Assert: 70.0 ± 14.1 (std of 0.6 and 0.8 is 0.1414)
    lines = text.splitlines()
    assert lines[2].startswith("| fedra | 2 | 70.0 ± 14.1 | 60.0 ± 14.1 | 50.0 ± 0.0 | 50.0 ± 0.0 | 1.0 ± 0.0 |")
    assert lines[3].startswith("| h2tune | 0 | not available: algorithm not registered |")


def test_page_is_self_contained(tmp_path: Path) -> None:
    # Prepare
    for seed in (0, 1):
        _write_run(tmp_path / "suite" / "fedra" / f"seed-{seed}", "fedra", seed, _rows([0.5, 0.6], {"a": [0.4, 0.5]}))

    # Execute: a suite folder is searched for its runs
    written = write_comparison([tmp_path / "suite"], tmp_path / "out")

    # Assert: plots are inline PNG; nothing refers to another file or to the network
    page = written[0].read_text()
    assert page.count("src='data:image/png;base64,") == 3
    assert not re.search(r"https?://|(src|href)\s*=\s*['\"](?!data:)", page)
    assert "<script" not in page and "<link" not in page
    assert json.loads(written[2].read_text())["methods"]["fedra"]["global_accuracy"]["n"] == 2


def test_runs_of_a_suite_directory_come_in_the_suites_method_order(tmp_path: Path) -> None:
    # Prepare: methods whose alphabetical order is not the suite's
    for method in ("zeta", "alpha"):
        _write_run(tmp_path / method / "seed-0", method, 0, _rows([0.5], {"a": [0.5]}))
    cells = [{"method": "zeta"}, {"method": "alpha"}]
    (tmp_path / "suite.json").write_text(json.dumps({"cells": cells}))

    # Execute
    runs = find_runs([tmp_path])

    # Assert
    assert [run.parent.name for run in runs] == ["zeta", "alpha"]


def test_a_runs_own_folders_are_not_searched_for_more_runs(tmp_path: Path) -> None:
    # Prepare: Flower unpacks the App into a run's .flwr-home; an App folder that carries result runs (as a FAB
    # built from a checkout with bench/results did) must not add those runs to the comparison
    run = tmp_path / "fedra" / "seed-0"
    _write_run(run, "fedra", 0, _rows([0.5], {"a": [0.5]}))
    packed = run / ".flwr-home" / "apps" / "app" / "bench" / "results" / "alllayers" / "seed-0"
    _write_run(packed, "alllayers", 0, _rows([0.9], {"a": [0.9]}))
    _write_run(run / "adapters" / "nested", "other", 0, _rows([0.1], {"a": [0.1]}))
    _write_run(tmp_path / ".hidden" / "seed-0", "hidden", 0, _rows([0.2], {"a": [0.2]}))

    # Execute
    runs = find_runs([tmp_path])

    # Assert
    assert runs == [run]


def test_a_path_without_runs_is_an_error(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(CompareError, match="no finished run"):
        find_runs([tmp_path])


def test_on_device_received_accuracy_is_each_clients_last_score_before_training() -> None:
    # Prepare: each train message scored the received model (received-accuracy) before training; client b's last
    # evaluation came from an evaluate-only message, which has no received score
    rows = _rows([0.5, 0.6], {"a": [0.4, 0.9], "b": [0.5, 0.7]})
    for row in rows:
        if row["phase"] == "evaluate":
            row["received-accuracy"] = row["accuracy"] - 0.2
    rows.append({"round": 3, "phase": "evaluate", "client": "b", "accuracy": 0.1, "bytes_up": 0, "bytes_down": 0})

    # Execute
    figures = run_figures(rows)
    table = markdown_table(method_table([]))

    # Assert: a's round 2 (0.7) and b's round 2 (0.5); the trained score stays the on-device one
    assert figures["on_device_received_accuracy"] == pytest.approx(0.6)
    assert figures["on_device_accuracy"] == pytest.approx(0.5)
    assert "on-device received acc %" in table and "on-device acc %" in table
