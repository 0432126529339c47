"""``fedbrick-flower bench SUITE``: a suite's methods x seeds as ordinary runs, resumable, with progress.

Each cell is one ``fedbrick-flower run`` in a child process (the same code path, Flower's Simulation Engine) in
its own run directory ``OUT/METHOD/seed-N``. The cells share one simulation SuperLink and one Ray cluster, started
once for the invocation (:func:`~fedbrick_flower.runtime.shared_simulation`; logs in ``OUT/logs``), so a cell pays
for neither. Next to it ``cell.json`` records the cell's overrides and, once the
run has written its ``summary.json``, its wall seconds: a cell whose summary exists and whose recorded
overrides are the current ones is finished and is not run again. A cell stopped half-way continues from its
checkpoint (``run --resume``); one with a different configuration starts over. At the end the suite's results
(``suite.json``) and the comparison (:mod:`.compare`: HTML page, markdown table, JSON) are written into OUT.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import Any

from .. import runtime
from ..run_files import CHECKPOINT_DIR, SUMMARY_FILE, VERSIONS_FILE
from .suites import Cell

CELL_FILE = "cell.json"
SUITE_FILE = "suite.json"
RunCell = Callable[[Cell, Path, bool, Path], int]


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / cell.method / f"seed-{cell.seed}"


def cell_record(cell: Cell) -> dict[str, Any]:
    """What ``cell.json`` holds before the run (the identity of the cell)."""
    return {
        "suite": cell.suite,
        "method": cell.method,
        "algorithm": cell.algorithm,
        "seed": cell.seed,
        "scenario": cell.scenario,
        "overrides": cell.overrides,
    }


def cell_status(folder: Path, cell: Cell) -> str:
    """``finished``, ``partial`` (a checkpoint of this configuration: resume), ``stale`` (another configuration
    or a run without a checkpoint: start over) or ``new``."""
    record_path = folder / CELL_FILE
    if not record_path.is_file():
        return "stale" if folder.exists() and any(folder.iterdir()) else "new"
    record = json.loads(record_path.read_text())
    if {k: v for k, v in record.items() if k in cell_record(cell)} != cell_record(cell):
        return "stale"
    if (folder / SUMMARY_FILE).is_file() and "seconds" in record:
        return "finished"
    return "partial" if (folder / CHECKPOINT_DIR).is_dir() else "stale"


def time_left(finished: dict[str, list[float]], remaining: list[str]) -> float | None:
    """Seconds the remaining cells should take, from the wall seconds of finished ones.

    A remaining cell is estimated by the mean of the finished cells of its own method (methods differ in cost,
    FedBRICK distils on the server), else by the mean over all finished cells; None before any cell finished.

    Parameters
    ----------
    finished : dict[str, list[float]]
        Wall seconds of the finished cells, by method.
    remaining : list[str]
        The method of each cell still to run.
    """
    everything = [s for seconds in finished.values() for s in seconds]
    if not remaining:
        return 0.0
    if not everything:
        return None
    overall = mean(everything)
    return sum(mean(finished[m]) if finished.get(m) else overall for m in remaining)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{rest:02d}s"


def run_in_child(cell: Cell, folder: Path, resume: bool, log: Path, superlink: tuple[str, Path] | None = None) -> int:
    """One ``fedbrick-flower run`` of the cell in a child process; its output goes to ``log``.

    ``superlink`` (address, log) submits the run to a running SuperLink instead of starting one.
    """
    command = [sys.executable, "-m", "fedbrick_flower.cli", "run", cell.scenario, "--out", str(folder)]
    command += cell.set_arguments() + (["--resume"] if resume else [])
    if superlink is not None:
        command += ["--superlink", superlink[0], "--superlink-log", str(superlink[1])]
    with log.open("w") as sink:
        sink.write(" ".join(command) + "\n")
        sink.flush()
        return call_with_teardown(command, sink)


def call_with_teardown(command: list[str], sink: Any, grace: float = 30.0) -> int:
    """Run ``command`` and return its exit code; interrupted (Ctrl-C, SIGTERM), stop it with SIGTERM first.

    ``subprocess.call`` would SIGKILL it, and a killed ``fedbrick-flower run`` leaves its SuperLink, Simulation
    Engine and Ray workers running: with SIGTERM it stops them itself (``grace`` seconds, then SIGKILL).
    """
    child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        return child.wait()
    except BaseException:
        runtime.stop(child, grace)
        raise


PENDING = "pending"


def run_suite(
    cells: list[Cell],
    out: Path,
    run_cell: RunCell = run_in_child,
    echo: Callable[[str], None] = print,
    run: bool = True,
    after_cell: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell not yet finished, in order; returns one status entry per cell.

    A failed cell is recorded (exit code, log) and the suite goes on: one broken method does not cost the rest.
    With ``run`` False nothing runs and every cell not finished is reported as :data:`PENDING`. ``after_cell``
    is called after each cell that ran (to write a progress report).
    """
    out.mkdir(parents=True, exist_ok=True)
    finished: dict[str, list[float]] = {}
    entries: dict[str, dict[str, Any]] = {}
    todo: list[Cell] = []
    for cell in cells:
        folder = cell_dir(out, cell)
        entry = {"method": cell.method, "algorithm": cell.algorithm, "seed": cell.seed, "run_dir": str(folder)}
        status = "unavailable" if cell.unavailable else cell_status(folder, cell)
        if status == "finished":
            record = json.loads((folder / CELL_FILE).read_text())
            finished.setdefault(cell.method, []).append(record["seconds"])
            entry.update(status="finished", seconds=record["seconds"], resumed=True)
            if "reused_from" in record:  # copied from an earlier folder (:mod:`.reuse`)
                entry["reused_from"] = record["reused_from"]
        elif status == "unavailable":
            entry.update(status=cell.unavailable)
        else:
            todo.append(cell)
        entries[cell.key] = entry
    runnable = sum(1 for c in cells if not c.unavailable)
    done = runnable - len(todo)
    if not run:
        for cell in todo:
            entries[cell.key]["status"] = PENDING
        return [entries[cell.key] for cell in cells]
    echo(f"{len(cells)} cells: {done} finished before, {len(todo)} to run, {len(cells) - runnable} not available")
    for cell in todo:
        folder = cell_dir(out, cell)
        status = cell_status(folder, cell)
        if status == "stale":
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CELL_FILE).write_text(json.dumps(cell_record(cell), indent=2))
        echo(f"[{done + 1}/{runnable}] {cell.key}: {'resuming' if status == 'partial' else 'running'} ...")
        started = time.monotonic()
        code = run_cell(cell, folder, status == "partial", folder.parent / f"seed-{cell.seed}.log")
        seconds = time.monotonic() - started
        entry = entries[cell.key]
        if code == 0 and (folder / SUMMARY_FILE).is_file():
            (folder / CELL_FILE).write_text(json.dumps({**cell_record(cell), "seconds": seconds}, indent=2))
            finished.setdefault(cell.method, []).append(seconds)
            entry.update(status="finished", seconds=seconds, resumed=False)
        else:
            entry.update(
                status=f"failed: exit code {code}", seconds=seconds, log=str(folder.parent / f"seed-{cell.seed}.log")
            )
        done += 1
        remaining = [c.method for c in todo[todo.index(cell) + 1 :]]
        echo(
            f"[{done}/{runnable}] {cell.key}: {entry['status']} in {format_seconds(seconds)}; "
            f"time left about {format_seconds(time_left(finished, remaining))}"
        )
        if after_cell is not None:
            after_cell()
    return [entries[cell.key] for cell in cells]


def machine() -> dict[str, Any]:
    """Where the suite ran: cores, platform and load (the machine is shared; figures depend on it)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def earlier_invocations(path: Path, started: str | None = None) -> list[dict[str, Any]]:
    """The invocations an earlier ``suite.json`` at ``path`` recorded, so that resuming a suite keeps the load and
    wall time of the invocations that ran its first cells (a file written before this list existed gives its
    single invocation). An invocation stopped before its end left itself under ``invocation_in_progress``: it is
    kept, marked ``interrupted``, unless it is the invocation that ``started`` then (this one, reporting again;
    also when a ``--report`` run filed it meanwhile)."""
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    if "invocations" in record:
        stopped = record.get("invocation_in_progress")
        every = [*record["invocations"], *([{**stopped, "interrupted": True}] if stopped else [])]
        return [entry for entry in every if started is None or entry.get("started") != started]
    keys = {"command": "command", "date": "date", "wall_seconds": "wall_seconds_this_invocation", "machine": "machine"}
    return [{key: record.get(source) for key, source in keys.items()}]


def _versions(entries: list[dict[str, Any]]) -> dict[str, str] | None:
    """The library versions a finished run recorded (every cell runs in the same environment)."""
    for entry in entries:
        path = Path(entry["run_dir"]) / VERSIONS_FILE
        if path.is_file():
            return json.loads(path.read_text())
    return None
