"""``fedbrick-flower compare RUN_DIR...``: any set of runs side by side, grouped by method, mean ± std over seeds.

Everything comes from the run directories (``metrics.jsonl``, ``summary.json``, ``cell.json`` when the run is a
suite cell). The figure functions are pure (rows in, numbers out) and tested on synthetic rows; the page is one
HTML file with the plots inlined as base64 PNG (matplotlib, Agg), so it opens from disk with no server and
loads nothing from the network.

Per run:

- ``global``: server-side accuracy of the full-depth global model, last round, mean over its (model, task)
  pairs; ``global w/o LoRA``: the same model with its LoRA B zeroed (``server.evaluate_without_lora``);
- ``on-device``: mean over clients of each client's last evaluation on its own test split (the network the
  device runs: its depth, its personalized adapters where the method has them); ``worst client``: the lowest;
  ``on-device received`` (the last column): the same over each client's last score of the model its train message
  received, before local training (the server's model, or the client's personalized one), so a local fine-tune
  does not count as the method's;
- bytes: serialized messages, ``up``/``down`` per client and round (mean over train replies), and the run's
  cumulative total (train and evaluation messages, all clients);
- ``train s``: a client's pure local training seconds per round; ``steps`` and ``forwards``: a client's
  optimizer steps and forward passes per round (counted while training, mean over train replies), so a method's
  gain can be told from extra compute; ``peak MB``: the memory of one client's
  training measured in its own process (see ``clients/trainer.TrainingMemory``), the largest client;
- ``agg s``: the strategy's ``aggregate`` seconds per round.

Beside these, the page draws the curves the registered algorithms declare for their own rows
(``registry.compare_curves()``), a band per method and series.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from ..metrics import (
    AGGREGATE,
    EVALUATE,
    SERVER_EVAL,
    TRAIN,
    CurvePlot,
    by_phase,
    curve_points,
    last_by_client,
    last_round,
    mean_of,
    of_round,
    read_metrics,
)
from ..records import RECEIVED_PREFIX
from ..registry import compare_curves
from ..run_files import SCENARIO_FILE, SUMMARY_FILE

# (key, header, kind): kind picks the formatting (accuracy in %, bytes in KiB or MiB, seconds, MB).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("global_accuracy", "global acc %", "acc"),
    ("global_accuracy_without_lora", "global w/o LoRA %", "acc"),
    ("on_device_accuracy", "on-device acc %", "acc"),
    ("worst_client_accuracy", "worst client %", "acc"),
    ("bytes_up_per_client_round", "up KiB/client/round", "kib"),
    ("bytes_down_per_client_round", "down KiB/client/round", "kib"),
    ("cumulative_bytes", "total MiB", "mib"),
    ("train_seconds", "train s/round", "s"),
    ("optimizer_steps", "steps/client/round", "count"),
    ("forward_passes", "forwards/client/round", "count"),
    ("peak_memory_mb", "peak MB (largest client)", "mb"),
    ("aggregation_seconds", "agg s/round", "s"),
    ("on_device_received_accuracy", "on-device received acc %", "acc"),
)

# An evaluate row written from a train message also holds the score of the model it received, before training.
RECEIVED_ACCURACY = RECEIVED_PREFIX + "accuracy"


@dataclass
class Run:
    """One run directory: its method label, seed, metric rows and summary."""

    path: Path
    method: str
    seed: int | None
    rows: list[dict]
    summary: dict[str, Any]


class CompareError(Exception):
    """A path given to compare holds no finished run."""


# ------------------------------------------------------------------------------------------------ loading
def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Run directories among ``paths``: each path is a run (holds ``summary.json``) or a folder searched for runs
    (e.g. a suite's output directory)."""
    found: list[Path] = []
    for path in paths:
        if (path / SUMMARY_FILE).is_file():
            found.append(path)
            continue
        nested = runs_under(path) if path.is_dir() else []
        nested.sort(key=_suite_order(path))
        if not nested:
            raise CompareError(f"{path}: no finished run ({SUMMARY_FILE}) in it")
        found += nested
    return found


def runs_under(folder: Path) -> list[Path]:
    """The run directories under ``folder``, sorted by path. A folder holding ``summary.json`` is a run and is not
    searched further, and hidden folders are skipped: a run's ``.flwr-home`` holds the unpacked Flower App, which
    may carry other runs' files."""
    if (folder / SUMMARY_FILE).is_file():
        return [folder]
    children = sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith("."))
    return [run for child in children for run in runs_under(child)]


def _suite_order(folder: Path) -> Callable[[Path], int]:
    """Sort key of runs in a suite directory: the suite's method order (``suite.json``), else none (all equal)."""
    record = folder / "suite.json"
    if not record.is_file():
        return lambda run: 0
    methods = list(dict.fromkeys(cell["method"] for cell in json.loads(record.read_text())["cells"]))
    return lambda run: methods.index(run.parent.name) if run.parent.name in methods else len(methods)


def load_run(path: Path) -> Run:
    """Read a run directory; the method is the suite cell's (``cell.json``), else the scenario's algorithm."""
    import yaml

    cell = json.loads((path / "cell.json").read_text()) if (path / "cell.json").is_file() else {}
    scenario = yaml.safe_load((path / SCENARIO_FILE).read_text()) if (path / SCENARIO_FILE).is_file() else {}
    return Run(
        path=path,
        method=cell.get("method") or scenario.get("algorithm") or path.name,
        seed=cell.get("seed", scenario.get("seed")),
        rows=read_metrics(path),
        summary=json.loads((path / SUMMARY_FILE).read_text()),
    )


# ------------------------------------------------------------------------------------------------ per run
def run_figures(rows: Sequence[dict]) -> dict[str, Any]:
    """The final numbers and per-round curves of one run (see the module docstring for each figure).

    Returns
    -------
    dict[str, Any]
        The :data:`COLUMNS` keys (None where the run has no such rows), ``peak_memory_by_client`` (MB),
        ``rounds`` and per-round lists ``global_by_round``, ``on_device_by_round``, ``cumulative_bytes_by_round``
        (None where a round has no value), and per declared curve plot (its ``name``) ``{series: {round: value}}``.
    """
    phases = by_phase(rows)
    rounds = sorted({row["round"] for row in phases[TRAIN] + phases[EVALUATE]})
    last_evaluation = last_by_client(phases[EVALUATE])
    last_received = last_by_client(r for r in phases[EVALUATE] if RECEIVED_ACCURACY in r)
    server_last = of_round(phases[SERVER_EVAL], last_round(phases[SERVER_EVAL]))
    peak_by_client: dict[str, float] = {}
    for row in phases[TRAIN]:
        if row.get("peak-memory-mb") is not None:
            peak_by_client[row["client"]] = max(peak_by_client.get(row["client"], 0.0), row["peak-memory-mb"])
    message_bytes = defaultdict(float)
    for row in phases[TRAIN] + phases[EVALUATE]:
        message_bytes[row["round"]] += (row.get("bytes_up") or 0) + (row.get("bytes_down") or 0)
    cumulative, running = [], 0.0
    for server_round in rounds:
        running += message_bytes.get(server_round, 0.0)
        cumulative.append(running)
    return {
        "global_accuracy": mean_of(r["accuracy"] for r in server_last),
        "global_accuracy_without_lora": mean_of(r.get("accuracy-without-lora") for r in server_last),
        "on_device_received_accuracy": mean_of(r[RECEIVED_ACCURACY] for r in last_received.values()),
        "on_device_accuracy": mean_of(r["accuracy"] for r in last_evaluation.values()),
        "worst_client_accuracy": min((r["accuracy"] for r in last_evaluation.values()), default=None),
        "bytes_up_per_client_round": mean_of(r.get("bytes_up") for r in phases[TRAIN]),
        "bytes_down_per_client_round": mean_of(r.get("bytes_down") for r in phases[TRAIN]),
        "cumulative_bytes": cumulative[-1] if cumulative else None,
        "train_seconds": mean_of(r.get("train-seconds") for r in phases[TRAIN]),
        "optimizer_steps": mean_of(r.get("optimizer-steps") for r in phases[TRAIN]),
        "forward_passes": mean_of(r.get("forward-passes") for r in phases[TRAIN]),
        "peak_memory_mb": max(peak_by_client.values(), default=None),
        "aggregation_seconds": mean_of(r["seconds"] for r in phases[AGGREGATE]),
        "peak_memory_by_client": peak_by_client,
        "rounds": rounds,
        "global_by_round": [mean_of(r["accuracy"] for r in of_round(phases[SERVER_EVAL], k)) for k in rounds],
        "on_device_by_round": [mean_of(r["accuracy"] for r in of_round(phases[EVALUATE], k)) for k in rounds],
        "cumulative_bytes_by_round": cumulative,
        **{plot.name: curve_points(rows, plot.curves[0]) for plot in compare_curves()},
    }


# ------------------------------------------------------------------------------------------------ over seeds
def mean_std(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and count of the values that are not None."""
    present = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": mean(present), "std": stdev(present) if len(present) > 1 else 0.0, "n": len(present)}


def method_table(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Per method (in order of first appearance): mean ± std over its runs of every column, per-round curves
    and per-client peak memory, and the seeds and run directories it came from."""
    by_method: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_method[run.method].append(run)
    table = {}
    for method, method_runs in by_method.items():
        figures = [run_figures(run.rows) for run in method_runs]
        rounds = sorted({k for f in figures for k in f["rounds"]})
        table[method] = {
            "seeds": [run.seed for run in method_runs],
            "run_dirs": [str(run.path) for run in method_runs],
            **{key: mean_std(f[key] for f in figures) for key, _, _ in COLUMNS},
            "rounds": rounds,
            **{
                curve: [mean_std(_at(f, curve, k) for f in figures) for k in rounds]
                for curve in ("global_by_round", "on_device_by_round", "cumulative_bytes_by_round")
            },
            **{
                plot.name: {
                    series: [mean_std(f[plot.name].get(series, {}).get(k) for f in figures) for k in rounds]
                    for series in sorted({series for f in figures for series in f[plot.name]})
                }
                for plot in compare_curves()
            },
            "peak_memory_by_client": {
                client: mean_std(f["peak_memory_by_client"].get(client) for f in figures)
                for client in sorted({c for f in figures for c in f["peak_memory_by_client"]})
            },
        }
    return table


def _at(figures: dict[str, Any], curve: str, server_round: int) -> float | None:
    rounds = figures["rounds"]
    return figures[curve][rounds.index(server_round)] if server_round in rounds else None


# ------------------------------------------------------------------------------------------------ tables
def format_value(value: dict[str, Any], kind: str) -> str:
    """``mean ± std`` in the column's unit; ``-`` without values; no ``±`` for a single run."""
    if value["mean"] is None:
        return "-"
    scale, digits = {
        "acc": (100, 1),
        "kib": (1 / 1024, 1),
        "mib": (1 / 2**20, 2),
        "s": (1, 2),
        "mb": (1, 1),
        "count": (1, 1),
    }[kind]
    if kind == "s" and value["mean"] < 0.1:
        digits = 4
    text = f"{value['mean'] * scale:.{digits}f}"
    return text + (f" ± {value['std'] * scale:.{digits}f}" if value["n"] > 1 else "")


def markdown_table(table: dict[str, dict[str, Any]], notes: dict[str, str] | None = None) -> str:
    """The final table as GitHub markdown: one line per method, mean ± std over seeds (n = runs)."""
    headers = ["method", "n", *(header for _, header, _ in COLUMNS)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for method, entry in table.items():
        cells = [format_value(entry[key], kind) for key, _, kind in COLUMNS]
        lines.append("| " + " | ".join([method, str(len(entry["seeds"])), *cells]) + " |")
    for method, reason in (notes or {}).items():
        lines.append("| " + " | ".join([method, "0", reason, *("" for _ in COLUMNS[1:])]) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ page
def html_page(table: dict[str, dict[str, Any]], title: str, notes: dict[str, str] | None = None) -> str:
    """One self-contained page: the final table, per-client memory, and the plots as inline base64 PNG."""
    esc = html.escape
    headers = "".join(f"<th>{esc(h)}</th>" for h in ["method", "n", *(header for _, header, _ in COLUMNS)])
    body = "".join(
        "<tr><td>"
        + esc(method)
        + f"</td><td>{len(entry['seeds'])}</td>"
        + "".join(f"<td>{esc(format_value(entry[key], kind))}</td>" for key, _, kind in COLUMNS)
        + "</tr>"
        for method, entry in table.items()
    )
    body += "".join(
        f"<tr><td>{esc(m)}</td><td>0</td><td colspan='{len(COLUMNS)}'>{esc(r)}</td></tr>"
        for m, r in (notes or {}).items()
    )
    memory = "".join(
        f"<tr><td>{esc(method)}</td><td>{esc(client)}</td><td>{esc(format_value(value, 'mb'))}</td></tr>"
        for method, entry in table.items()
        for client, value in entry["peak_memory_by_client"].items()
    )
    images = "".join(
        f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'><figcaption>{esc(caption)}"
        "</figcaption></figure>"
        for caption, data in plots(table)
    )
    runs = "".join(f"<li>{esc(m)}: {esc(', '.join(e['run_dirs']))}</li>" for m, e in table.items())
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        "figure{display:inline-block;margin:0.5em}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
        f"</head><body><h1>{esc(title)}</h1><p>mean ± std over seeds (n runs per method). Accuracy: global = "
        "server-side full-depth global model, last round; on-device = mean over clients of their own test split; "
        "worst client = lowest client. Bytes: serialized messages. Peak MB: one client's training, measured in "
        f"its own process.</p><table><tr>{headers}</tr>{body}</table>{images}"
        f"<h2>Peak memory per client (MB)</h2><table><tr><th>method</th><th>client</th><th>peak MB</th></tr>"
        f"{memory}</table><h2>Runs</h2><ul>{runs}</ul></body></html>"
    )


def plots(table: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(caption, base64 PNG) of: global and on-device accuracy per round (mean ± std bands), and accuracy
    against cumulative bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    for curve, caption in (
        ("global_by_round", "Global model accuracy per round (server test split), mean ± std over seeds"),
        ("on_device_by_round", "On-device accuracy per round (mean over clients), mean ± std over seeds"),
    ):
        if not any(point["mean"] is not None for entry in table.values() for point in entry[curve]):
            continue
        figure, axes = plt.subplots(figsize=(7, 4.5), layout="constrained")
        for method, entry in table.items():
            _band(axes, entry["rounds"], entry[curve], method)
        axes.set_xlabel("round")
        axes.set_ylabel("accuracy")
        axes.xaxis.get_major_locator().set_params(integer=True)
        images.append((caption, _finish(plt, figure, axes)))
    figure, axes = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for method, entry in table.items():
        curve = entry["global_by_round"] if any(p["mean"] is not None for p in entry["global_by_round"]) else None
        accuracy = curve or entry["on_device_by_round"]
        mib = [p["mean"] / 2**20 if p["mean"] is not None else None for p in entry["cumulative_bytes_by_round"]]
        _band(axes, mib, accuracy, method + ("" if curve else " (on-device)"))
    axes.set_xlabel("cumulative MiB (all clients, up + down)")
    axes.set_ylabel("accuracy")
    images.append(("Accuracy against cumulative bytes (global where the method has one)", _finish(plt, figure, axes)))
    for plot in compare_curves():
        drawn = {method: entry[plot.name] for method, entry in table.items() if entry[plot.name]}
        if drawn:
            images.append((plot.title, _declared_curve(plt, plot, drawn, table)))
    return images


def _declared_curve(plt: Any, plot: CurvePlot, drawn: dict[str, dict], table: dict[str, dict[str, Any]]) -> str:
    """A declared curve plot: a band per method and series; its label names the series alone (see ``Curve``)."""
    (curve,) = plot.curves
    figure, axes = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for method, series_points in drawn.items():
        for series, points in series_points.items():
            label = curve.label.format(**{curve.series_key: series}) if curve.series_key else curve.label
            _band(axes, table[method]["rounds"], points, f"{method} {label}")
    axes.set_xlabel("round")
    axes.set_ylabel(plot.ylabel)
    if plot.limits is not None:
        axes.set_ylim(*plot.limits)
    axes.xaxis.get_major_locator().set_params(integer=True)
    return _finish(plt, figure, axes)


def _band(axes: Any, xs: Sequence[float | None], points: Sequence[dict[str, Any]], label: str) -> None:
    kept = [
        (x, p["mean"], p["std"]) for x, p in zip(xs, points, strict=True) if x is not None and p["mean"] is not None
    ]
    if not kept:
        return
    x, y, s = zip(*kept, strict=True)
    (line,) = axes.plot(x, y, marker="o", label=label)
    axes.fill_between(
        x,
        [a - b for a, b in zip(y, s, strict=True)],
        [a + b for a, b in zip(y, s, strict=True)],
        color=line.get_color(),
        alpha=0.2,
    )


def _finish(plt: Any, figure: Any, axes: Any) -> str:
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------------------ entry
def write_comparison(
    paths: Sequence[Path], out: Path, title: str = "fedbrick-flower compare", notes: dict[str, str] | None = None
) -> list[Path]:
    """Write ``compare.html``, ``compare.md`` and ``compare.json`` (every figure) into ``out``."""
    runs = [load_run(path) for path in find_runs(paths)]
    table = method_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "compare.html", out / "compare.md", out / "compare.json"]
    written[0].write_text(html_page(table, title, notes))
    written[1].write_text(markdown_table(table, notes) + "\n")
    written[2].write_text(json.dumps({"title": title, "methods": table, "not_available": notes or {}}, indent=2))
    return written


def main(args: argparse.Namespace) -> int:
    """``fedbrick-flower compare``: print the markdown table and write the page; 2 when a path holds no run."""
    try:
        written = write_comparison(args.run_dirs, args.out)
    except CompareError as error:
        print(f"fedbrick-flower compare: error: {error}", file=sys.stderr)
        return 2
    print(written[1].read_text())
    for path in written:
        print(f"wrote {path}")
    return 0
