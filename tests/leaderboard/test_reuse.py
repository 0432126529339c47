"""Reusing earlier runs: a cell is copied only when it would repeat a finished run exactly (same settings, a cap
the run never reached, same versions), and the copy says where it came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedbrick_flower.leaderboard.powered import run_powered
from fedbrick_flower.leaderboard.reuse import finished_runs, reuse_finished, same_run
from fedbrick_flower.leaderboard.runner import CELL_FILE, cell_record, run_suite
from fedbrick_flower.leaderboard.suites import Cell, expand
from fedbrick_flower.run_dir import library_versions
from fedbrick_flower.scenario import load_scenario
from tests.leaderboard.test_powered import POWERED, FakeRuns


def _cell(rounds: int = 40, lr: float = 0.001, seed: int = 0) -> Cell:
    return Cell("toy", "fedra", "fedbrick", seed, "fedbrick-tiny", {"rounds": rounds, "train.lr": lr, "seed": seed})


def _finished(
    folder: Path, cell: Cell, stopped_at: int = 12, stop: bool = True, versions: dict[str, str] | None = None
) -> Path:
    """A finished run of ``cell`` as ``fedbrick-flower run`` leaves it: its last plateau check at ``stopped_at``."""
    folder.mkdir(parents=True)
    raw: dict[str, Any] = load_scenario(cell.scenario, cell.overrides).raw
    raw["train"] = {**raw["train"], "head_warmup_steps": 0}  # a default written out, as protocol 1's runs did
    (folder / "scenario.yaml").write_text(yaml.safe_dump(raw))
    (folder / "versions.json").write_text(json.dumps(versions or library_versions()))
    rows = [
        {"round": stopped_at, "phase": "server-eval", "accuracy": 0.7, "loss": 0.6, "validation-loss": 0.5},
        {"round": stopped_at, "phase": "plateau", "validation-loss": 0.5, "stop": stop},
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "summary.json").write_text(json.dumps({"rounds_completed": stopped_at}))
    (folder / CELL_FILE).write_text(json.dumps({**cell_record(cell), "seconds": 321.0}))
    (folder.parent / f"{folder.name}.log").write_text("the earlier run's log\n")
    return folder


def test_a_cell_that_repeats_a_plateau_stopped_run_under_a_higher_cap_is_copied_not_run(tmp_path: Path) -> None:
    # Prepare: protocol 1's run (cap 30, stopped at 12); protocol 2 plans the same run with cap 40
    earlier = _finished(tmp_path / "old" / "fedra" / "seed-0", _cell(rounds=30))
    out, planned = tmp_path / "new", _cell(rounds=40)
    calls: list[str] = []

    # Execute
    copied = reuse_finished([planned], out, finished_runs([tmp_path / "old"]), echo=lambda _: None)
    entries = run_suite([planned], out, lambda cell, *_: calls.append(cell.key) or 0, echo=lambda _: None)

    # Assert
    assert copied == 1 and calls == []
    assert entries[0]["status"] == "finished" and entries[0]["reused_from"] == str(earlier)
    record = json.loads((out / "fedra" / "seed-0" / CELL_FILE).read_text())
    assert record["overrides"]["rounds"] == 40 and record["seconds"] == 321.0
    assert (out / "fedra" / "seed-0.log").read_text() == "the earlier run's log\n"


def test_only_the_same_run_is_reused(tmp_path: Path) -> None:
    # Prepare: runs that differ from the planned one in a setting, in how they stopped, or in versions
    _finished(tmp_path / "lr" / "seed-0", _cell(rounds=30, lr=0.002))
    _finished(tmp_path / "seed" / "seed-1", _cell(rounds=30, seed=1))
    _finished(tmp_path / "capped" / "seed-0", _cell(rounds=30), stopped_at=30, stop=False)
    _finished(tmp_path / "versions" / "seed-0", _cell(rounds=30), versions={**library_versions(), "torch": "0.1"})
    _finished(tmp_path / "long" / "seed-0", _cell(rounds=30), stopped_at=25)
    _finished(tmp_path / "at-cap" / "seed-0", _cell(rounds=30, lr=0.004), stopped_at=30)

    # Execute
    runs = finished_runs([tmp_path])

    # Assert: not candidates: the versions mismatch, the run stopped by its cap, the plateau met at the cap (the
    # last round is scored as such, on the clients' test splits too)
    assert sorted(run.folder.parent.name for run in runs) == ["long", "lr", "seed"]
    assert same_run(_cell(rounds=40), runs) is not None
    assert same_run(_cell(rounds=25), runs) is None  # the only same run stopped at round 25: the new cap
    assert same_run(_cell(rounds=40, lr=0.004), runs) is None


def test_a_finished_cell_is_not_overwritten_by_a_reuse(tmp_path: Path) -> None:
    # Prepare
    planned = _cell(rounds=40)
    _finished(tmp_path / "old" / "seed-0", _cell(rounds=30))
    own = _finished(tmp_path / "new" / "fedra" / "seed-0", planned, stopped_at=14)

    # Execute
    copied = reuse_finished([planned], tmp_path / "new", finished_runs([tmp_path / "old"]), echo=lambda _: None)

    # Assert
    assert copied == 0
    assert "reused_from" not in json.loads((own / CELL_FILE).read_text())


def test_a_powered_suite_copies_the_tuning_cells_it_would_repeat(tmp_path: Path) -> None:
    # Prepare: an earlier run of method `good` at the grid point lr 0.001, stopped on its plateau at round 2
    point = {**POWERED.protocol.overrides(), "train.lr": 0.001}
    (earlier,) = expand(POWERED.suite, [POWERED.protocol.tuning_seed], point, ["good"])
    _finished(tmp_path / "old" / "good" / "seed-0", earlier, stopped_at=2)
    runs = FakeRuns()

    # Execute
    record = run_powered(
        POWERED, tmp_path / "new", [0], run_cell=runs, echo=lambda _: None, reusable=finished_runs([tmp_path / "old"])
    )

    # Assert: three of the four tuning cells ran; the fourth is the earlier run, named as such
    assert sorted(runs.calls) == ["lr-0.001/base/seed-0", "lr-0.002/base/seed-0", "lr-0.002/good/seed-0"]
    assert record["chosen"]["good"]["tuning_losses"]["lr-0.001"] is not None  # read from the copied run
    # its loss (0.5) beats the fake runs' (0.8 at best), so it is also the measurement at seed 0: still named
    source = str(tmp_path / "old" / "good" / "seed-0")
    assert record["reused"] == {"tuning/lr-0.001/good/seed-0": source, "good/seed-0": source}
    copied_record = json.loads((tmp_path / "new" / "tuning" / "lr-0.001" / "good" / "seed-0" / CELL_FILE).read_text())
    assert copied_record["reused_from"] == str(tmp_path / "old" / "good" / "seed-0")


def test_a_reuse_folder_that_does_not_exist_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from fedbrick_flower import cli

    argv = ["bench", "depth-2of6", "--powered", "--out", str(tmp_path / "out"), "--reuse", str(tmp_path / "typo")]

    # Execute
    code = cli.main(argv)

    # Assert
    assert code == 2 and not (tmp_path / "out").exists()
    assert "--reuse: no such folder" in capsys.readouterr().err
