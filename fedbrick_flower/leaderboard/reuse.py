"""Cells an earlier results folder already ran, copied into a powered suite instead of run again (``--reuse``).

A finished cell of an earlier folder is the very run a planned cell would make when

- their resolved scenarios are equal in everything but ``rounds``, the cap;
- the earlier run stopped on its validation plateau before its own cap and before the planned one: a cap the run
  never reached did not shape it, so raising the cap (protocol 1's 30 rounds to protocol 2's 40) leaves it as it
  was. (A round at the cap is scored as the last one, on the clients' test splits too, so a run that stopped
  exactly at either cap is not the same run under the other.)
- it ran with this machine's Python and library versions (its ``versions.json``).

A configuration runs deterministically on one machine (the ``depth-2of6`` re-run reproduced protocol 1's cells
to the last digit), so the copy is the run. It cannot check the package's own code: name only folders made by
the code that would run now. A reused cell says where it came from (``reused_from`` in its ``cell.json``, ``reused``
in ``suite.json``) and keeps its own files, its ``scenario.yaml`` with the cap it ran under included.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..metrics import read_metrics
from ..run_dir import library_versions
from ..run_files import SCENARIO_FILE, SUMMARY_FILE, VERSIONS_FILE
from ..scenario import Scenario, ScenarioError, load_scenario, parse_scenario, read_yaml_mapping
from .runner import CELL_FILE, cell_dir, cell_record, cell_status
from .suites import Cell


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """A finished cell that stopped on its plateau before its cap: where it is, its settings but the cap, its
    length."""

    folder: Path
    settings: tuple[Any, ...]  # :func:`run_settings`
    rounds_completed: int
    seconds: float


def finished_runs(sources: Iterable[Path]) -> list[FinishedRun]:
    """Every cell under ``sources`` (searched recursively) that stopped on its plateau before its cap, with this
    machine's versions; cells whose scenario no longer validates cannot be the same run and are left out."""
    versions = library_versions()
    runs = []
    for source in sources:
        for record in sorted(Path(source).rglob(CELL_FILE)):
            run = _finished_run(record.parent, versions)
            if run is not None:
                runs.append(run)
    return runs


def _finished_run(folder: Path, versions: dict[str, str]) -> FinishedRun | None:
    record = json.loads((folder / CELL_FILE).read_text())
    summary, recorded_versions = folder / SUMMARY_FILE, folder / VERSIONS_FILE
    if "seconds" not in record or not summary.is_file() or not stopped_on_plateau(folder):
        return None
    if not recorded_versions.is_file() or json.loads(recorded_versions.read_text()) != versions:
        return None
    try:
        scenario = parse_scenario(read_yaml_mapping(folder / SCENARIO_FILE, "scenario"))
    except ScenarioError:
        return None
    rounds = json.loads(summary.read_text())["rounds_completed"]
    if rounds >= scenario.rounds:  # its cap and its plateau agreed: the cap may have shaped its last round
        return None
    return FinishedRun(folder, run_settings(scenario), rounds, record["seconds"])


def run_settings(scenario: Scenario) -> tuple[Any, ...]:
    """Every validated setting of ``scenario`` but its cap and description. (Scenarios compare by their raw
    mapping, where a default written out differs from one left out: protocol 1 wrote ``head_warmup_steps: 0``.)"""
    unused = {"raw", "rounds", "description"}
    return tuple(getattr(scenario, f.name) for f in dataclasses.fields(scenario) if f.name not in unused)


def stopped_on_plateau(folder: Path) -> bool:
    """Whether the run's last plateau check stopped it (rather than its cap, a failure or no plateau rule)."""
    checks = [row for row in read_metrics(folder) if row["phase"] == "plateau"]
    return bool(checks) and checks[-1].get("stop") is True


def same_run(cell: Cell, runs: Iterable[FinishedRun]) -> FinishedRun | None:
    """The earlier run ``cell`` would repeat, if any."""
    planned = load_scenario(cell.scenario, cell.overrides)
    settings = run_settings(planned)
    return next((r for r in runs if r.settings == settings and r.rounds_completed < planned.rounds), None)


def reuse_finished(
    cells: Iterable[Cell], out: Path, runs: list[FinishedRun], echo: Callable[[str], None] = print
) -> int:
    """Copy into ``out`` the earlier run of every cell not finished there; returns how many were copied."""
    if not runs:  # nothing to compare against: skip loading every cell's scenario
        return 0
    copied = 0
    for cell in cells:
        target = cell_dir(out, cell)
        if cell.unavailable or cell_status(target, cell) == "finished":
            continue
        run = same_run(cell, runs)
        if run is None:
            continue
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run.folder, target)
        log = run.folder.parent / f"{run.folder.name}.log"
        if log.is_file():
            shutil.copyfile(log, target.parent / f"{target.name}.log")
        reused = {**cell_record(cell), "seconds": run.seconds, "reused_from": str(run.folder)}
        (target / CELL_FILE).write_text(json.dumps(reused, indent=2))
        echo(f"{cell.key}: the same run as {run.folder} ({run.rounds_completed} rounds): copied, not run")
        copied += 1
    return copied
