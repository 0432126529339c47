"""A powered suite on fake runs: tuning picks the lowest validation loss, seed 0 reuses its tuning run, the
comparison holds paired intervals, micro-averages and control verdicts; a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedbrick_flower.leaderboard.powered import cell_figures, choose, run_powered
from fedbrick_flower.leaderboard.protocol import Comparison, Control, PoweredSuite, Protocol
from fedbrick_flower.leaderboard.runner import earlier_invocations
from fedbrick_flower.leaderboard.suites import Cell, Method, Suite

SUITE = Suite(
    "toy",
    "two methods",
    "fedbrick-tiny",
    (Method("good", "fedavg", {}), Method("base", "fedavg", {"train.freeze_lora": True}), Method("gone", "nope")),
)
PROTOCOL = Protocol(rounds_cap=3, local_steps=2, grid={"train.lr": (0.001, 0.002)}, extend={}, seeds=3)
POWERED = PoweredSuite(
    SUITE,
    PROTOCOL,
    comparisons=(Comparison("good", "base"),),
    controls=(Control("good beats base", "good", "base"), Control("good with LoRA", "good", "good",
                                                                  "global_accuracy", "global_accuracy_without_lora"),
              Control("good beats base (loss)", "good", "base", "global_loss", "global_loss", lower_is_better=True)),
)  # fmt: skip


class FakeRuns:
    """Writes a run directory: the validation loss is lowest at lr 0.002, ``good`` beats ``base`` by 5 + seed
    points, and the run stops after 2 of its 3 rounds."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, cell: Cell, folder: Path, resume: bool, log: Path) -> int:
        self.calls.append(f"{folder.parent.parent.name}/{cell.key}")
        lr = cell.overrides.get("train.lr", 0.001)
        accuracy = 0.6 + (0.05 + 0.01 * cell.seed if cell.method == "good" else 0.0)
        rows = [
            {"round": 2, "phase": "server-eval", "accuracy": accuracy, "loss": 1 - accuracy,
             "accuracy-without-lora": 0.6, "validation-loss": 1.0 - lr * 100},
            {"round": 2, "phase": "evaluate", "client": "a", "accuracy": 0.5, "loss": 1.0, "num-examples": 10.0},
            {"round": 2, "phase": "evaluate", "client": "b", "accuracy": 1.0, "loss": 0.5, "num-examples": 30.0},
        ]  # fmt: skip
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "summary.json").write_text(json.dumps({"rounds_completed": 2, "storage": 0.01}))
        return 0


def test_cell_figures_pool_the_clients_test_examples() -> None:
    # Prepare
    rows = [
        {"round": 1, "phase": "evaluate", "client": "a", "accuracy": 0.0, "num-examples": 10.0},
        {"round": 2, "phase": "evaluate", "client": "a", "accuracy": 0.5, "num-examples": 10.0},
        {"round": 2, "phase": "evaluate", "client": "b", "accuracy": 1.0, "num-examples": 30.0},
    ]

    # Execute
    figures = cell_figures(rows, {"rounds_completed": 2})

    # Assert: mean over clients 0.75; pooled (5 + 30) / 40 = 0.875
    assert figures["on_device_accuracy"] == 0.75
    assert figures["on_device_micro_accuracy"] == pytest.approx(0.875)
    assert figures["rounds_run"] == 2 and figures["global_accuracy"] is None


def test_a_method_that_ignores_a_grid_key_is_tuned_over_the_others_only(tmp_path: Path) -> None:
    # Prepare: "base" freezes its LoRA, so the LoRA learning rate cannot change its run
    probe = Method("base", "fedavg", {"train.freeze_lora": True}, ignores=("train.lr",))
    suite = Suite("toy", "two methods", "fedbrick-tiny", (Method("good", "fedavg", {}), probe))
    grid = {"train.lr": (0.001, 0.002), "train.head_warmup_steps": (0, 20)}
    powered = PoweredSuite(suite, Protocol(rounds_cap=3, local_steps=2, grid=grid, extend={}, seeds=2))
    runs = FakeRuns()

    # Execute
    record = run_powered(powered, tmp_path, [0, 1], run_cell=runs, echo=lambda _: None)

    # Assert: good at 4 points, base at 2 (warm-up only, no learning rate set), then seed 1 of each
    tuned = [call for call in runs.calls if call.startswith(("lr-", "head_"))]
    assert sorted(c for c in tuned if "/base/" in c) == ["head_warmup_steps-0/base/seed-0",
                                                          "head_warmup_steps-20/base/seed-0"]  # fmt: skip
    assert len(tuned) == 6 and len(runs.calls) == 8
    assert record["progress"] == {"finished": 8, "planned": 8}
    assert record["chosen"]["base"]["ignored"] == ["train.lr"]
    assert "train.lr" not in record["chosen"]["base"]["point"]
    assert record["chosen"]["good"]["grid_edges"] == {"train.lr": "highest"}


def test_a_choice_at_the_grids_edge_is_tuned_past_it_as_often_as_the_protocol_allows(tmp_path: Path) -> None:
    # Prepare: the fake validation loss falls as the learning rate rises, so the highest rate always wins
    protocol = Protocol(rounds_cap=3, local_steps=2, grid={"train.lr": (0.001, 0.002)}, max_extensions=2, seeds=1)
    powered = PoweredSuite(Suite("toy", "one method", "fedbrick-tiny", (Method("good", "fedavg", {}),)), protocol)
    runs = FakeRuns()

    # Execute
    record = run_powered(powered, tmp_path, [0], run_cell=runs, echo=lambda _: None)
    report = run_powered(powered, tmp_path, [0], echo=lambda _: None, run=False)

    # Assert: two doublings past the grid (0.004, 0.008), the last still at the edge and flagged
    assert [call.partition("/")[0] for call in runs.calls] == ["lr-0.001", "lr-0.002", "lr-0.004", "lr-0.008"]
    assert record["chosen"]["good"]["point"] == {"train.lr": 0.008}
    assert record["chosen"]["good"]["grid_edges"] == {"train.lr": "highest"}
    assert report["chosen"]["good"]["point"] == {"train.lr": 0.008}
    assert report["progress"] == {"finished": 4, "planned": 4}


def test_choose_takes_the_lowest_finished_loss() -> None:
    # Execute / Assert
    assert choose({"lr-0.001": 0.9, "lr-0.002": 0.8, "lr-0.004": None}) == "lr-0.002"
    assert choose({"lr-0.001": None}) is None


def test_powered_suite_tunes_measures_compares_and_resumes(tmp_path: Path) -> None:
    # Prepare
    runs = FakeRuns()

    # Execute
    record = run_powered(POWERED, tmp_path, [0, 1, 2], run_cell=runs, echo=lambda _: None)
    again = FakeRuns()
    run_powered(POWERED, tmp_path, [0, 1, 2], run_cell=again, echo=lambda _: None)

    # Assert: 2 grid points x 2 methods tuned, then seeds 1 and 2 seed by seed (seed 0 is the tuning run, copied)
    assert len(runs.calls) == 4 + 4 and again.calls == []
    assert [call.partition("/")[2] for call in runs.calls[4:]] == [
        "good/seed-1", "base/seed-1", "good/seed-2", "base/seed-2"
    ]  # fmt: skip
    assert record["chosen"]["good"]["point"] == {"train.lr": 0.002}
    assert record["chosen"]["gone"]["point"] is None
    assert record["rounds_run"]["good/seed-1"] == 2
    assert record["budgets"]["met"] is False  # a cap of 3 rounds is below the protocol's 30
    assert record["protocol"]["version"] == PROTOCOL.version  # results say which protocol made them
    compare = json.loads((tmp_path / "compare.json").read_text())
    difference = compare["comparisons"][0]["global_accuracy"]
    assert difference["differences"] == pytest.approx([5.0, 6.0, 7.0])
    assert difference["low"] == pytest.approx(6 - 4.3027 / 3**0.5, abs=1e-3)
    assert [c["verdict"] for c in compare["controls"]] == ["met", "met", "met"]
    # a loss control reads baseline - method in nats: base's loss 0.4, good's 0.35 - 0.01 x seed
    assert compare["controls"][2]["difference"]["differences"] == pytest.approx([0.05, 0.06, 0.07])
    assert compare["methods"]["good"]["mean"]["on_device_micro_accuracy"] == pytest.approx(0.875)
    assert compare["methods"]["gone"]["status"].startswith("not available")
    assert compare["comparisons"][0]["global_accuracy_by_round"]["2"]["mean"] == pytest.approx(6.0)
    table = (tmp_path / "compare.md").read_text()
    assert table.count("| good - base |") == 1
    assert "- good - base: r2 +6.0" in table
    assert "| good | 0.900 | 0.800* |" in table  # the tuning evidence: loss 1 - 100 lr, the lower chosen


def test_suite_states_list_suites_not_run(tmp_path: Path) -> None:
    # Prepare
    from fedbrick_flower.leaderboard.powered import suite_states

    folder = tmp_path / "powered-rank"
    folder.mkdir()
    cells = [{"status": "finished"}, {"status": "failed: exit code 1"}]
    (folder / "suite.json").write_text(json.dumps({"cells": cells}))

    # Execute
    states = suite_states(tmp_path)

    # Assert
    assert states["rank"] == "1 of 2 cells finished"
    assert states["depth-2of6"] == "not run"


def test_a_report_runs_nothing_and_chooses_no_rate_from_an_unfinished_grid(tmp_path: Path) -> None:
    # Prepare: only the first grid point's tuning cells have run
    first_point = PoweredSuite(SUITE, Protocol(rounds_cap=3, local_steps=2, grid={"train.lr": (0.002,)}, seeds=3))
    run_powered(first_point, tmp_path, [0, 1, 2], run_cell=FakeRuns(), echo=lambda _: None)
    untouched = FakeRuns()

    # Execute
    record = run_powered(POWERED, tmp_path, [0, 1, 2], run_cell=untouched, echo=lambda _: None, run=False)

    # Assert: nothing ran; 2 of 2 methods x (2 grid points + 2 seeds) cells, 2 finished; no rate chosen yet
    assert untouched.calls == []
    assert record["progress"] == {"finished": 2, "planned": 8}
    assert record["chosen"]["good"]["point"] is None
    assert record["chosen"]["good"]["status"] == "tuning: 1 of 2 grid points finished"
    assert record["chosen"]["good"]["tuning_losses"]["lr-0.001"] is None
    assert record["cells"] == []
    compare = json.loads((tmp_path / "compare.json").read_text())
    assert compare["methods"]["good"]["status"] == "tuning: 1 of 2 grid points finished"


def test_the_command_records_its_progress_after_every_cell_and_its_invocation_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: no SuperLink or Ray (a stand-in shared simulation); each cell's run is a fake that also reads the
    # progress the previous cell left in suite.json
    import argparse
    import contextlib

    from fedbrick_flower.leaderboard import powered

    seen: list[int] = []
    runs = FakeRuns()

    def run_in_child(cell: Cell, folder: Path, resume: bool, log: Path, superlink: Any = None) -> int:
        suite = tmp_path / "suite.json"
        seen.append(json.loads(suite.read_text())["progress"]["finished"] if suite.is_file() else 0)
        return runs(cell, folder, resume, log)

    monkeypatch.setattr(powered.runtime, "shared_simulation", lambda out, cpus: contextlib.nullcontext(("a", out)))
    monkeypatch.setattr(powered, "run_in_child", run_in_child)
    args = argparse.Namespace(seeds=None, seed=[0, 1, 2], out=tmp_path, set=[], methods=None, report=False)

    # Execute
    code = powered.main(args, POWERED)

    # Assert: 8 cells, each saw the ones before it on record; the final file has the invocation, not "in progress"
    assert code == 0
    assert seen == list(range(8))
    record = json.loads((tmp_path / "suite.json").read_text())
    assert record["progress"] == {"finished": 8, "planned": 8}
    assert "invocation_in_progress" not in record
    assert len(record["invocations"]) == 1 and record["invocations"][0]["machine"]["load_average_before"]


def test_an_interrupted_invocation_stays_on_record_once(tmp_path: Path) -> None:
    # Prepare: an invocation stopped mid-suite left itself "in progress" beside one that ended
    path = tmp_path / "suite.json"
    stopped = {"command": "bench", "started": "t1", "wall_seconds": 600.0}
    path.write_text(json.dumps({"invocations": [{"command": "first"}], "invocation_in_progress": stopped}))

    # Execute
    from_a_later_invocation = earlier_invocations(path, started="t2")
    from_itself_reporting_again = earlier_invocations(path, started="t1")

    # Assert
    assert from_a_later_invocation == [{"command": "first"}, {**stopped, "interrupted": True}]
    assert from_itself_reporting_again == [{"command": "first"}]
