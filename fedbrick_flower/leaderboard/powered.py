"""``fedbrick-flower bench SUITE --powered``: a suite under the protocol (:mod:`.protocol`), resumable.

Two stages, each an ordinary suite run (:func:`.runner.run_suite`, so finished cells are not run again):

1. **tuning**: every method at every grid point at the tuning seed, in ``OUT/tuning/<point>/METHOD/seed-N``;
   each method takes the point with the lowest final validation loss;
2. **measurement**: every method at its chosen point for seeds 0..N-1 in ``OUT/METHOD/seed-N``. The tuning cell
   of the chosen point is the same configuration as the measurement cell at the tuning seed, so it is copied,
   not run again.

Then ``OUT/suite.json`` (protocol, budgets, chosen values with every tuning loss, rounds run per cell, machine,
load, versions) and ``OUT/compare.json`` / ``compare.md`` (per-seed figures, paired differences with 95 % t
intervals, control verdicts) are written from the run directories.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import runtime
from ..metrics import mean_of, read_metrics
from ..run_files import SUMMARY_FILE
from .protocol import MIN_LOCAL_STEPS, MIN_ROUNDS_CAP, MIN_SEEDS, PoweredSuite, Protocol, edges
from .reuse import FinishedRun, finished_runs, reuse_finished
from .runner import PENDING, RunCell, _versions, cell_dir, cell_status, earlier_invocations, machine, run_in_child
from .runner import run_suite as run_cells
from .stats import NOT_RUN, paired, verdict
from .suites import Cell, expand, selected

SUITE_FILE, COMPARE_FILE = "suite.json", "compare.json"


# ------------------------------------------------------------------------------------------------ figures
def cell_figures(rows: list[dict], summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers one cell contributes: last-round global and on-device accuracy and loss, the on-device figures
    also pooled over every client's test examples (micro-average), the final validation losses, rounds run and
    the summary's other numbers (e.g. an algorithm's storage overhead)."""
    server = [r for r in rows if r.get("phase") == "server-eval"]
    last_round = max((r["round"] for r in server), default=None)
    server_last = [r for r in server if r["round"] == last_round]
    last: dict[str, dict] = {}
    for row in sorted((r for r in rows if r.get("phase") == "evaluate"), key=lambda r: r["round"]):
        last[row["client"]] = row
    clients = list(last.values())
    figures = {
        "global_accuracy": mean_of(r.get("accuracy") for r in server_last),
        "global_loss": mean_of(r.get("loss") for r in server_last),
        "global_accuracy_without_lora": mean_of(r.get("accuracy-without-lora") for r in server_last),
        "global_loss_without_lora": mean_of(r.get("loss-without-lora") for r in server_last),
        "global_validation_loss": mean_of(r.get("validation-loss") for r in server_last),
        "on_device_accuracy": mean_of(r.get("accuracy") for r in clients),
        "on_device_loss": mean_of(r.get("loss") for r in clients),
        "on_device_micro_accuracy": _pooled(clients, "accuracy"),
        "on_device_micro_loss": _pooled(clients, "loss"),
        "on_device_received_accuracy": mean_of(r.get("received-accuracy") for r in clients),
        "on_device_validation_loss": mean_of(r.get("validation-loss") for r in clients),
        "rounds_run": summary.get("rounds_completed"),
        "global_accuracy_by_round": _by_round(server, lambda row: row.get("accuracy")),
        "on_device_accuracy_by_round": _by_round(
            [r for r in rows if r.get("phase") == "evaluate"], lambda row: row.get("accuracy")
        ),
    }
    extra = {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {**figures, "summary": extra}


def _by_round(rows: list[dict], value: Callable[[dict], float | None]) -> dict[str, float]:
    """Mean ``value`` of the rows of each round that has one (keys are round numbers as text, as JSON keeps them)."""
    rounds: dict[int, list[float]] = {}
    for row in rows:
        if (number := value(row)) is not None:
            rounds.setdefault(row["round"], []).append(number)
    return {str(k): sum(v) / len(v) for k, v in sorted(rounds.items())}


def _pooled(rows: list[dict], key: str) -> float | None:
    """Every client's test examples pooled: sum of value x examples over the sum of examples (accuracy x examples
    is the client's correct count)."""
    weighted = [(r[key], r["num-examples"]) for r in rows if r.get(key) is not None and r.get("num-examples")]
    total = sum(n for _, n in weighted)
    return sum(v * n for v, n in weighted) / total if total else None


def load_figures(folder: Path) -> dict[str, Any] | None:
    """A finished run directory's :func:`cell_figures`, None when it has no summary."""
    if not (folder / SUMMARY_FILE).is_file():
        return None
    return cell_figures(read_metrics(folder), json.loads((folder / SUMMARY_FILE).read_text()))


# ------------------------------------------------------------------------------------------------ tuning
def point_label(point: dict[str, Any]) -> str:
    """A grid point as a folder name: ``{"train.lr": 0.001, "train.head_lr": 0.01}`` -> ``lr-0.001_head_lr-0.01``."""
    return "_".join(f"{key.rpartition('.')[2]}-{value}" for key, value in point.items()) or "default"


def choose(losses: dict[str, float | None]) -> str | None:
    """The grid point (label) with the lowest validation loss; None when no tuning cell finished."""
    finished = {label: loss for label, loss in losses.items() if loss is not None}
    return min(finished, key=finished.__getitem__) if finished else None


# ------------------------------------------------------------------------------------------------ statistics
def headline_keys(headline: str) -> tuple[str, str]:
    prefix = "global" if headline == "global" else "on_device"
    return f"{prefix}_accuracy", f"{prefix}_loss"


def by_seed(cells: dict[str, dict[int, dict[str, Any]]], method: str, key: str) -> dict[int, float | None]:
    return {seed: figures.get(key) for seed, figures in cells.get(method, {}).items()}


def comparison_entry(cells: dict[str, dict[int, dict[str, Any]]], method: str, baseline: str, headline: str) -> dict:
    """Paired differences ``method - baseline`` (accuracy in points, loss in nats) with 95 % t intervals."""
    accuracy, loss = headline_keys(headline)
    entry: dict[str, Any] = {"method": method, "baseline": baseline}
    for key, scale in ((accuracy, 100.0), (loss, 1.0)):
        interval = paired(
            {s: _scaled(v, scale) for s, v in by_seed(cells, method, key).items()},
            {s: _scaled(v, scale) for s, v in by_seed(cells, baseline, key).items()},
        )
        entry[key] = interval.as_dict()
    entry[f"{accuracy}_by_round"] = trend(cells, method, baseline, f"{accuracy}_by_round")
    return entry


def trend(cells: dict[str, dict[int, dict[str, Any]]], method: str, baseline: str, key: str) -> dict[str, dict]:
    """The paired accuracy difference (points) at each round both methods scored at two seeds or more: whether a
    gap grows with rounds. Rounds past a seed's plateau stop have no pair at that seed."""
    mine, theirs = cells.get(method, {}), cells.get(baseline, {})
    rounds = sorted({int(r) for figures in mine.values() for r in figures.get(key) or {}})
    result = {}
    for number in rounds:
        at = str(number)
        interval = paired(
            {s: _scaled((f.get(key) or {}).get(at), 100.0) for s, f in mine.items()},
            {s: _scaled((f.get(key) or {}).get(at), 100.0) for s, f in theirs.items()},
        )
        if interval.n >= 2:
            result[at] = {k: v for k, v in interval.as_dict().items() if k != "differences"}
    return result


def control_entry(cells: dict[str, dict[int, dict[str, Any]]], control: Any) -> dict:
    """A positive control's paired difference and verdict: met when the interval lies above zero. Accuracy in
    points (method - baseline); a loss in nats, baseline - method, so that above zero is better here too."""
    scale, sign = (1.0, -1.0) if control.lower_is_better else (100.0, 1.0)
    interval = paired(
        {s: _scaled(v, sign * scale) for s, v in by_seed(cells, control.method, control.metric).items()},
        {s: _scaled(v, sign * scale) for s, v in by_seed(cells, control.baseline, control.baseline_metric).items()},
    )
    unit = "nats, baseline - method" if control.lower_is_better else "points"
    return {**dataclasses.asdict(control), "difference": interval.as_dict(), "unit": unit,
            "verdict": verdict(interval, 0.0)}  # fmt: skip


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def summarize_interval(interval: dict[str, Any]) -> str:
    """``+1.23 [+0.40, +2.06] (n=5)``, or what is missing."""
    if not interval["n"]:
        return "no pairs"
    if interval["low"] is None:
        return f"{interval['mean']:+.2f} (n=1, no interval)"
    return f"{interval['mean']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}] (n={interval['n']})"


def comparison_record(
    powered: PoweredSuite, cells: dict[str, dict[int, dict[str, Any]]], notes: dict, chosen: dict[str, dict]
) -> dict:
    """What ``compare.json`` holds; ``chosen`` is each method's tuning (``suite.json``'s), kept beside its figures."""
    headline = powered.protocol.headline
    methods = {}
    for method in powered.suite.methods:
        seeds = cells.get(method.name, {})
        keys = sorted({k for figures in seeds.values() for k, v in figures.items() if not isinstance(v, dict)})
        tuned = chosen.get(method.name, {})
        methods[method.name] = {
            "seeds": sorted(seeds),
            "per_seed": {str(s): f for s, f in sorted(seeds.items())},
            "mean": {k: mean_of(f.get(k) for f in seeds.values()) for k in keys},
            "status": notes.get(method.name, "finished" if seeds else NOT_RUN),
            "chosen": tuned.get("label"),
            "tuning_losses": tuned.get("tuning_losses", {}),
        }
    return {
        "suite": powered.name,
        "headline": headline,
        "methods": methods,
        "comparisons": [comparison_entry(cells, c.method, c.baseline, headline) for c in powered.comparisons],
        "controls": [control_entry(cells, c) for c in powered.controls],
    }


def compare_markdown(record: dict[str, Any]) -> str:
    """The comparison as markdown: per-method means, paired differences, controls."""
    accuracy, loss = headline_keys(record["headline"])
    lines = [f"# Powered suite `{record['suite']}` (headline: {record['headline']})", ""]
    lines += ["| method | seeds | accuracy % | loss | micro acc % | rounds run | status |", "|---" * 7 + "|"]
    for name, entry in record["methods"].items():
        mean_of = entry["mean"]
        cells = [
            _format(mean_of.get(accuracy), 100, 1),
            _format(mean_of.get(loss), 1, 3),
            _format(mean_of.get("on_device_micro_accuracy"), 100, 1),
            _format(mean_of.get("rounds_run"), 1, 1),
        ]
        lines.append(f"| {name} | {len(entry['seeds'])} | " + " | ".join(cells) + f" | {entry['status']} |")
    lines += ["", "| method - baseline | accuracy points, 95 % t | loss, 95 % t |", "|---|---|---|"]
    for entry in record["comparisons"]:
        lines.append(
            f"| {entry['method']} - {entry['baseline']} | {summarize_interval(entry[accuracy])} | "
            f"{summarize_interval(entry[loss])} |"
        )
    trends = [(e, e.get(f"{accuracy}_by_round") or {}) for e in record["comparisons"]]
    if any(by_round for _, by_round in trends):
        lines += ["", "Accuracy difference by round (points; rounds both methods scored at 2 or more seeds):", ""]
        for entry, by_round in trends:
            steps = ", ".join(f"r{r} {v['mean']:+.1f}" for r, v in by_round.items())
            lines.append(f"- {entry['method']} - {entry['baseline']}: {steps or 'no round with 2 pairs'}")
    lines += ["", "| positive control | difference, 95 % t | unit | verdict |", "|---|---|---|---|"]
    for entry in record["controls"]:
        interval = summarize_interval(entry["difference"])
        lines.append(f"| {entry['name']} | {interval} | {entry['unit']} | {entry['verdict']} |")
    return "\n".join(lines + tuning_table(record["methods"])) + "\n"


def tuning_table(methods: dict[str, dict[str, Any]]) -> list[str]:
    """The tuning evidence: each method's final validation loss at every grid point it ran (``*`` its choice)."""
    labels = list(dict.fromkeys(label for entry in methods.values() for label in entry.get("tuning_losses", {})))
    if not labels:
        return []
    lines = ["", "Tuning at the tuning seed: final validation loss per grid point (* the choice, - not run):", ""]
    lines += ["| method | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, entry in methods.items():
        losses = entry.get("tuning_losses", {})
        cells = [
            "-" if losses.get(label) is None else f"{losses[label]:.3f}" + ("*" if label == entry.get("chosen") else "")
            for label in labels
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _format(value: float | None, scale: float, digits: int) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


# ------------------------------------------------------------------------------------------------ the run
def protocol_checks(powered: PoweredSuite, overrides: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Whether the budgets actually run meet the protocol's minimums (``--set`` may lower them for a try)."""
    cap, steps = overrides.get("rounds"), overrides.get("train.local_steps")
    checks = {
        f"rounds cap >= {MIN_ROUNDS_CAP}": cap is not None and cap >= MIN_ROUNDS_CAP,
        f"local steps >= {MIN_LOCAL_STEPS}": steps is not None and steps >= MIN_LOCAL_STEPS,
        f"seeds >= {MIN_SEEDS}": len(seeds) >= MIN_SEEDS,
    }
    return {"rounds_cap": cap, "local_steps": steps, "checks": checks, "met": all(checks.values())}


def run_powered(
    powered: PoweredSuite,
    out: Path,
    seeds: list[int],
    extra: dict[str, Any] | None = None,
    methods: list[str] | None = None,
    run_cell: RunCell = run_in_child,
    echo: Callable[[str], None] = print,
    run: bool = True,
    after_cell: Callable[[], None] | None = None,
    started: str | None = None,
    reusable: Sequence[FinishedRun] = (),
) -> dict[str, Any]:
    """Tune, measure and write ``compare.json`` into ``out``; returns the suite record (``suite.json``'s).

    With ``run`` False no cell runs: the record and the comparison describe the cells finished so far, and a
    method whose tuning is not complete gets no learning rate yet (a choice from part of the grid would not be
    the protocol's). ``after_cell`` is called after each cell that ran. ``started`` stamps the invocation that
    calls (:func:`.runner.earlier_invocations`). A cell that repeats one of the ``reusable`` runs is copied from it
    instead of run (:mod:`.reuse`).
    """
    protocol = powered.protocol
    shared = {**protocol.overrides(), **(extra or {})}
    _, left_out = protocol.available_grid()
    tuning: dict[str, dict[str, Any]] = {}
    tuning_entries: list[dict[str, Any]] = []
    groups = tuning_groups(powered, methods)
    for _ in range(protocol.max_extensions + 1):
        for label, (point, names) in groups.items():
            echo(f"tuning {label} at seed {protocol.tuning_seed}")
            cells = expand(powered.suite, [protocol.tuning_seed], {**shared, **point}, names)
            if run:
                reuse_finished(cells, out / "tuning" / label, list(reusable), echo)
            ran = run_cells(cells, out / "tuning" / label, run_cell, echo, run, after_cell)
            for entry, cell in zip(ran, cells, strict=True):
                method_tuning = tuning.setdefault(cell.method, _new_tuning(entry["status"]))
                _record_tuning(method_tuning, label, point, entry, protocol)
            tuning_entries += ran
        groups = extension_groups(tuning, protocol)
    measured: list[Cell] = []
    chosen: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    for method in selected(powered.suite, methods):
        record = tuning.get(method.name, _new_tuning(NOT_RUN))
        label = choose(record["losses"])
        if record["pending"]:
            points = len(record["points"])
            notes[method.name] = f"tuning: {points - record['pending']} of {points} grid points finished"
            chosen[method.name] = {"point": None, "tuning_losses": record["losses"], "status": notes[method.name]}
            continue
        if label is None:
            notes[method.name] = record["status"] if record["status"] != "finished" else "tuning gave no loss"
            chosen[method.name] = {"point": None, "tuning_losses": record["losses"], "status": notes[method.name]}
            continue
        point = record["points"][label]
        chosen[method.name] = {
            "point": point,
            "label": label,
            "grid_edges": edges(point, list(record["points"].values())),
            "ignored": list(method.ignores),
            "tuning_losses": record["losses"],
        }
        cells = expand(powered.suite, seeds, {**shared, **point}, [method.name])
        for cell in cells:
            _reuse_tuning_cell(out / "tuning" / label, out, cell)
        measured += cells
    # Seed by seed across methods: an invocation stopped part-way leaves every method at the same seeds, so each
    # comparison has a pair for every seed finished.
    measured.sort(key=lambda cell: cell.seed)
    if run:
        reuse_finished(measured, out, list(reusable), echo)
    entries = run_cells(measured, out, run_cell, echo, run, after_cell)
    cells_figures: dict[str, dict[int, dict[str, Any]]] = {}
    for entry in entries:
        figures = load_figures(Path(entry["run_dir"])) if entry["status"] == "finished" else None
        if figures is not None:
            cells_figures.setdefault(entry["method"], {})[entry["seed"]] = figures
            entry["rounds_run"] = figures["rounds_run"]
    comparison = comparison_record(powered, cells_figures, notes, chosen)
    (out / COMPARE_FILE).write_text(json.dumps(comparison, indent=2))
    (out / "compare.md").write_text(compare_markdown(comparison))
    record = {
        "suite": powered.name,
        "description": powered.suite.description,
        "scenario": powered.suite.scenario,
        "protocol": {**dataclasses.asdict(protocol), "grid_left_out": left_out},
        "budgets": protocol_checks(powered, shared, seeds),
        "seeds": seeds,
        "extra_overrides": extra or {},
        "chosen": chosen,
        "rounds_run": {f"{e['method']}/seed-{e['seed']}": e.get("rounds_run") for e in entries},
        "progress": progress(tuning_entries, entries, seeds, protocol.tuning_seed),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "invocations": earlier_invocations(out / SUITE_FILE, started),
        "versions": _versions(entries),
        "reused": {  # cells copied from an earlier folder (:mod:`.reuse`), tuning cells included
            str(Path(e["run_dir"]).relative_to(out)): e["reused_from"]
            for e in [*tuning_entries, *entries]
            if "reused_from" in e
        },
        "cells": entries,
    }
    return record


def progress(
    tuning: list[dict[str, Any]], measured: list[dict[str, Any]], seeds: list[int], tuning_seed: int
) -> dict[str, int]:
    """Cells finished, and cells the whole suite runs: each method's grid points at the tuning seed, then every
    other seed (the tuning seed's cell is a copy of the chosen point's tuning run), for each method this version
    can run."""
    runnable = [e for e in tuning if not e["status"].startswith("not available")]
    other_seeds = len({e["method"] for e in runnable}) * len([s for s in seeds if s != tuning_seed])
    finished = [e for e in tuning if e["status"] == "finished"]
    finished += [e for e in measured if e["status"] == "finished" and e["seed"] != tuning_seed]
    return {"finished": len(finished), "planned": len(runnable) + other_seeds}


def _new_tuning(status: str) -> dict[str, Any]:
    """A method's tuning record: its points and final validation losses by label, its first cell's ``status`` and
    how many of its cells have not finished."""
    return {"points": {}, "losses": {}, "status": status, "pending": 0}


def _record_tuning(record: dict[str, Any], label: str, point: dict, entry: dict, protocol: Protocol) -> None:
    figures = load_figures(Path(entry["run_dir"])) if entry["status"] == "finished" else None
    loss = figures.get(f"{protocol.plateau_metric.replace('-', '_')}_validation_loss") if figures else None
    record["points"][label] = point
    record["losses"][label] = loss
    record["pending"] += entry["status"] == PENDING


def extension_groups(tuning: dict[str, dict[str, Any]], protocol: Protocol) -> dict[str, tuple[dict, list[str]]]:
    """The next tuning cells past the grid's edge (:meth:`.Protocol.beyond_edge`), by label: for each method whose
    tuning is complete and whose choice sits at an edge (the point past it is new: it lies beyond every value
    tried)."""
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for method, record in tuning.items():
        label = choose(record["losses"])
        if record["pending"] or label is None:
            continue
        point = protocol.beyond_edge(record["points"][label], list(record["points"].values()))
        if point is not None:
            groups.setdefault(point_label(point), (point, []))[1].append(method)
    return groups


def tuning_groups(powered: PoweredSuite, methods: list[str] | None) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """The tuning cells by grid point (its folder label): the point and the methods tuned at it. A method that
    ignores a grid key is tuned over the other keys only, under a label without that key."""
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for method in selected(powered.suite, methods):
        for point in powered.protocol.grid_points(method.ignores):
            groups.setdefault(point_label(point), (point, []))[1].append(method.name)
    return groups


def _reuse_tuning_cell(tuning_out: Path, out: Path, cell: Cell) -> None:
    """Copy the tuning run of this very configuration (same method, seed and overrides) instead of rerunning it."""
    source, target = cell_dir(tuning_out, cell), cell_dir(out, cell)
    if cell_status(source, cell) == "finished" and cell_status(target, cell) != "finished":
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


def suite_states(results: Path) -> dict[str, str]:
    """Each powered suite's state under ``results``: ``not run``, or how many of its cells finished."""
    from .protocol import POWERED

    states = {}
    for name in POWERED:
        path = results / f"powered-{name}" / SUITE_FILE
        if not path.is_file():
            states[name] = NOT_RUN
            continue
        record = json.loads(path.read_text())
        if "progress" in record:  # tuning cells included
            done, planned = record["progress"]["finished"], record["progress"]["planned"]
        else:
            done, planned = sum(1 for c in record["cells"] if c["status"] == "finished"), len(record["cells"])
        states[name] = f"{done} of {planned} cells finished"
    return states


def main(args: argparse.Namespace, powered: PoweredSuite) -> int:
    """``bench SUITE --powered``: run it and write ``suite.json`` (this invocation appended)."""
    from ..scenario import parse_overrides

    seeds = list(range(args.seeds if args.seeds is not None else powered.protocol.seeds))
    seeds = seeds if args.seed is None else list(args.seed)
    out = (args.out or Path("bench") / "results" / f"powered-{powered.name}").resolve()
    clock_start, load_before = time.monotonic(), machine()["load_average"]
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    extra = parse_overrides(args.set)

    def report() -> dict[str, Any]:
        return run_powered(powered, out, seeds, extra, args.methods, run=False, echo=lambda _: None, started=stamp)

    def invocation() -> dict[str, Any]:
        return {
            "command": " ".join(["fedbrick-flower", *sys.argv[1:]]),
            "started": stamp,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "wall_seconds": time.monotonic() - clock_start,
            "machine": {**machine(), "load_average_before": load_before},
        }

    def progress_report() -> None:  # suite.json follows the cells: an interrupted invocation leaves its progress
        _write({**report(), "invocation_in_progress": invocation()}, out, quiet=True)

    if getattr(args, "report", False):
        return _write(report(), out)
    sources = getattr(args, "reuse", None) or []
    missing = [str(source) for source in sources if not Path(source).is_dir()]
    if missing:  # a mistyped folder would otherwise reuse nothing, silently
        print(f"fedbrick-flower bench: error: --reuse: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    reusable = finished_runs(sources)
    if sources:
        print(f"{len(reusable)} finished runs under {', '.join(map(str, sources))} can stand in for cells")
    # Every cell joins one simulation SuperLink and one Ray cluster instead of starting its own.
    with runtime.shared_simulation(out, os.cpu_count() or 1) as superlink:
        run_cell = functools.partial(run_in_child, superlink=superlink)
        record = run_powered(
            powered,
            out,
            seeds,
            extra,
            args.methods,
            run_cell,
            after_cell=progress_report,
            started=stamp,
            reusable=reusable,
        )
    record["invocations"].append(invocation())
    return _write(record, out)


def _write(record: dict[str, Any], out: Path, quiet: bool = False) -> int:
    """Write ``suite.json`` and print the comparison (unless ``quiet``); exit code 1 when a cell failed."""
    (out / SUITE_FILE).write_text(json.dumps(record, indent=2))
    if not quiet:
        print((out / "compare.md").read_text())
        print(f"wrote {out / SUITE_FILE}, {out / COMPARE_FILE}")
    failed = [e for e in record["cells"] if e["status"].startswith("failed")]
    return 1 if failed else 0
