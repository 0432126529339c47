"""Running a suite: resume detection, failed and unavailable cells, the time-left estimate."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from fedbrick_flower.leaderboard.runner import (
    CELL_FILE,
    call_with_teardown,
    cell_dir,
    cell_record,
    cell_status,
    earlier_invocations,
    run_suite,
    time_left,
)
from fedbrick_flower.leaderboard.suites import Cell


def _cell(method: str = "fedra", seed: int = 0, rounds: int = 2, unavailable: str | None = None) -> Cell:
    return Cell("depth", method, "fedavg", seed, "fedbrick", {"rounds": rounds, "seed": seed}, unavailable)


class FakeRuns:
    """Stands in for a ``fedbrick-flower run`` child: writes a summary (or fails) and remembers its calls."""

    def __init__(self, failing: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.failing = failing

    def __call__(self, cell: Cell, folder: Path, resume: bool, log: Path) -> int:
        self.calls.append((cell.key, resume))
        if cell.key in self.failing:
            return 1
        (folder / "summary.json").write_text(json.dumps({"rounds_completed": cell.overrides["rounds"]}))
        return 0


def test_second_invocation_runs_nothing_and_reports_finished_cells(tmp_path: Path) -> None:
    # Prepare
    cells = [_cell("fedra", 0), _cell("fedra", 1), _cell("fedbrick", 0)]
    first = FakeRuns()
    run_suite(cells, tmp_path, first, echo=lambda _: None)
    second = FakeRuns()

    # Execute
    entries = run_suite(cells, tmp_path, second, echo=lambda _: None)

    # Assert
    assert [key for key, _ in first.calls] == ["fedra/seed-0", "fedra/seed-1", "fedbrick/seed-0"]
    assert second.calls == []
    assert [e["status"] for e in entries] == ["finished"] * 3
    assert all(e["resumed"] for e in entries)


def test_after_cell_hears_each_cell_that_ran_once_it_is_recorded(tmp_path: Path) -> None:
    # Prepare: one cell finished before, two to run
    cells = [_cell("fedra", 0), _cell("fedra", 1), _cell("fedbrick", 0)]
    run_suite(cells[:1], tmp_path, FakeRuns(), echo=lambda _: None)
    finished_when_called: list[list[str]] = []

    def after_cell() -> None:
        finished_when_called.append([c.key for c in cells if cell_status(cell_dir(tmp_path, c), c) == "finished"])

    # Execute
    run_suite(cells, tmp_path, FakeRuns(), echo=lambda _: None, after_cell=after_cell)

    # Assert: called after each cell run (not for the one finished before), each cell already on record
    assert finished_when_called == [
        ["fedra/seed-0", "fedra/seed-1"],
        ["fedra/seed-0", "fedra/seed-1", "fedbrick/seed-0"],
    ]


def test_cell_status_new_finished_partial_and_stale(tmp_path: Path) -> None:
    # Prepare
    cell = _cell()
    folder = cell_dir(tmp_path, cell)

    # Execute / Assert: nothing yet
    assert cell_status(folder, cell) == "new"
    # a run stopped after its first checkpoint: resume it
    folder.mkdir(parents=True)
    (folder / CELL_FILE).write_text(json.dumps(cell_record(cell)))
    (folder / "checkpoint").mkdir()
    assert cell_status(folder, cell) == "partial"
    # finished: summary written and the wall seconds recorded
    (folder / "summary.json").write_text("{}")
    (folder / CELL_FILE).write_text(json.dumps({**cell_record(cell), "seconds": 12.0}))
    assert cell_status(folder, cell) == "finished"
    # the same cell with another configuration (e.g. --set rounds=3): start over
    assert cell_status(folder, _cell(rounds=3)) == "stale"


def test_partial_cell_is_resumed_and_stale_cell_starts_over(tmp_path: Path) -> None:
    # Prepare: one cell with a checkpoint of this configuration, one finished under another configuration
    partial, changed = _cell("fedra", 0), _cell("fedbrick", 0, rounds=3)
    partial_dir = cell_dir(tmp_path, partial)
    partial_dir.mkdir(parents=True)
    (partial_dir / CELL_FILE).write_text(json.dumps(cell_record(partial)))
    (partial_dir / "checkpoint").mkdir()
    changed_dir = cell_dir(tmp_path, changed)
    changed_dir.mkdir(parents=True)
    (changed_dir / CELL_FILE).write_text(json.dumps({**cell_record(_cell("fedbrick", 0)), "seconds": 5.0}))
    (changed_dir / "summary.json").write_text("{}")
    (changed_dir / "old-file").write_text("from the old configuration")
    runs = FakeRuns()

    # Execute
    run_suite([partial, changed], tmp_path, runs, echo=lambda _: None)

    # Assert
    assert runs.calls == [("fedra/seed-0", True), ("fedbrick/seed-0", False)]
    assert not (changed_dir / "old-file").exists()
    assert json.loads((changed_dir / CELL_FILE).read_text())["overrides"]["rounds"] == 3


def test_failed_and_unavailable_cells_are_recorded_and_the_suite_goes_on(tmp_path: Path) -> None:
    # Prepare
    cells = [_cell("fedra", 0), _cell("fedmosaic", 0, unavailable="not available: algorithm not registered")]
    cells.append(_cell("fedbrick", 0))
    runs = FakeRuns(failing={"fedra/seed-0"})
    lines: list[str] = []

    # Execute
    entries = run_suite(cells, tmp_path, runs, echo=lines.append)

    # Assert
    assert [e["status"] for e in entries] == [
        "failed: exit code 1",
        "not available: algorithm not registered",
        "finished",
    ]
    assert [key for key, _ in runs.calls] == ["fedra/seed-0", "fedbrick/seed-0"]
    assert lines[0] == "3 cells: 0 finished before, 2 to run, 1 not available"
    # a failed cell is not finished: the next invocation tries it again
    assert cell_status(cell_dir(tmp_path, cells[0]), cells[0]) == "stale"


def test_time_left_uses_each_methods_own_mean_else_the_overall_mean() -> None:
    # Prepare: fedra cells took 10 and 20 s, fedbrick 60 s
    finished = {"fedra": [10.0, 20.0], "fedbrick": [60.0]}

    # Execute
    estimate = time_left(finished, ["fedra", "fedbrick", "head-only"])

    # Assert: 15 + 60 + mean(10, 20, 60) = 105
    assert estimate == pytest.approx(105.0)
    assert time_left({}, ["fedra"]) is None
    assert time_left({}, []) == 0.0


def test_resumed_suite_keeps_the_earlier_invocations_load_and_wall_time(tmp_path: Path) -> None:
    # Prepare: a suite.json from before the invocation list, then one with it
    old = tmp_path / "old.json"
    old.write_text(
        json.dumps(
            {
                "command": "fedbrick-flower bench depth",
                "date": "d1",
                "wall_seconds_this_invocation": 9.0,
                "machine": {"load_average": [8.9, 7.0, 6.0]},
            }
        )
    )
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"invocations": [{"command": "a"}, {"command": "b"}]}))

    # Execute
    from_old = earlier_invocations(old)
    from_new = earlier_invocations(new)
    missing = earlier_invocations(tmp_path / "absent.json")

    # Assert
    assert from_old == [
        {
            "command": "fedbrick-flower bench depth",
            "date": "d1",
            "wall_seconds": 9.0,
            "machine": {"load_average": [8.9, 7.0, 6.0]},
        }
    ]
    assert [i["command"] for i in from_new] == ["a", "b"]
    assert missing == []


def test_bench_resolves_a_scenario_file_a_powered_suite_or_a_suite(tmp_path: Path) -> None:
    # Prepare
    from fedbrick_flower.leaderboard.command import resolve_suite
    from fedbrick_flower.leaderboard.protocol import PoweredSuite
    from fedbrick_flower.leaderboard.suites import Suite

    path = tmp_path / "mine.yaml"
    path.write_text("algorithm: fedavg\n")

    # Execute
    from_file = resolve_suite(str(path), ["fedra", "fedbrick"], powered=False)
    powered_file = resolve_suite(str(path), ["fedra", "fedbrick"], powered=True)
    powered = resolve_suite("depth-2of6", None, powered=True)
    plain = resolve_suite("depth", None, powered=False)

    # Assert
    assert isinstance(from_file, Suite) and [m.name for m in from_file.methods] == ["fedra", "fedbrick"]
    assert isinstance(powered_file, PoweredSuite) and isinstance(powered, PoweredSuite)
    assert isinstance(plain, Suite) and plain.name == "depth"
    with pytest.raises(ValueError, match="powered suites"):
        resolve_suite("depth", None, powered=True)


@pytest.mark.parametrize("option", [["--report"], ["--reuse", "bench/results"]])
def test_options_that_read_powered_cells_are_refused_on_a_plain_suite(
    option: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from fedbrick_flower import cli

    argv = ["bench", "depth", "--out", str(tmp_path / "out"), *option]

    # Execute
    code = cli.main(argv)

    # Assert: nothing ran, and the message names the option and the fix
    error = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out").exists()
    assert f"{option[0]} " in error and "add --powered" in error


CHILD = """
import signal, sys, time
from pathlib import Path
marker = Path(sys.argv[1])
def leave(signum, frame):
    marker.write_text("stopped by SIGTERM: its teardown ran")
    sys.exit(0)
signal.signal(signal.SIGTERM, leave)
marker.write_text("ready")
time.sleep(60)
"""


def test_an_interrupted_cell_gets_sigterm_so_that_it_stops_what_it_started(tmp_path: Path) -> None:
    # Prepare: the bench is interrupted (here by an alarm) while its cell's run is under way
    marker = tmp_path / "marker"

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 2.0)

    # Execute
    try:
        with (tmp_path / "log").open("w") as sink, pytest.raises(KeyboardInterrupt):
            call_with_teardown([sys.executable, "-c", CHILD, str(marker)], sink, grace=10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    # Assert: not SIGKILLed (which would leave its SuperLink and Ray running)
    assert marker.read_text() == "stopped by SIGTERM: its teardown ran"
