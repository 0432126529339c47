"""Tests for Flower's run_config -> scenario: overrides, and the per-process memo of the scenario file."""

from __future__ import annotations

from pathlib import Path

from fedbrick_flower.runconfig import scenario_from_run_config


def test_the_scenario_is_read_once_per_file_version_and_overrides(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "s.yaml"
    text = (
        "algorithm: fedavg\nrounds: 2\nmodels: {m: {source: minilm}}\ntasks: {news: {dataset: bbc-news}}\n"
        "clients:\n  - {id: a, model: m, task: news}\n"
    )
    path.write_text(text)
    run_config = {"scenario": str(path), "out-dir": "", "rounds": 0, "seed": -1}

    # Execute: read twice, then with an override, then after the file was rewritten in place.
    first = scenario_from_run_config(run_config)
    again = scenario_from_run_config(run_config)
    overridden = scenario_from_run_config({**run_config, "rounds": 5})
    path.write_text(text.replace("rounds: 2", "rounds: 7"))
    rewritten = scenario_from_run_config(run_config)

    # Assert
    assert again is first and first.rounds == 2
    assert overridden.rounds == 5
    assert rewritten.rounds == 7
