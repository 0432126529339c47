"""``fedbrick-flower report RUN_DIR``: per-round and per-client tables and PNG plots of a run.

Everything is computed from the run's ``metrics.jsonl`` (see :mod:`fedbrick_flower.run_dir`). The table
functions are pure (rows in, dicts out) so they can be tested without a Flower run; the plots go to
``RUN_DIR/plots/`` and use matplotlib's Agg backend, imported only when plotting.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from .run_dir import METRICS_FILE, read_metrics

PLOTS_DIR = "plots"
ROUND_COLUMNS = (
    "round",
    "wall_s",
    "train_loss",
    "client_acc",
    "global_acc",
    "bytes_up",
    "bytes_down",
    "adapter_bytes",
    "rejected",
)
CLIENT_COLUMNS = (
    "client",
    "layers",
    "train_loss",
    "accuracy",
    "bytes_up",
    "bytes_down",
    "adapter_bytes",
    "train_s",
    "peak_mb",
)


class ReportError(Exception):
    """The run directory cannot be reported on (missing, or without metrics)."""


def main(args: argparse.Namespace) -> int:
    """Print the tables of ``args.run_dir`` and write its plots; 2 on a missing or empty run directory."""
    try:
        rows = load_rows(args.run_dir)
    except ReportError as error:
        print(f"fedbrick-flower report: error: {error}", file=sys.stderr)
        return 2
    rounds = round_table(rows)
    print(f"run directory: {args.run_dir}\n")
    print("per round (means over clients; bytes per client):")
    print(format_table(*_with_global_columns(rounds)))
    last_round = max(r["round"] for r in rows)
    print(f"\nper client, round {last_round}:")
    print(format_table(client_table(rows, last_round), CLIENT_COLUMNS))
    for path in write_plots(rows, args.run_dir / PLOTS_DIR):
        print(f"wrote {path}")
    collapse = write_rank_collapse_plot(rows, args.run_dir / PLOTS_DIR)
    if collapse is not None:
        print(f"wrote {collapse}")
    return 0


def load_rows(run_dir: Path) -> list[dict]:
    """The metric rows of a run directory.

    Raises
    ------
    ReportError
        If ``run_dir`` is not a directory or its ``metrics.jsonl`` is missing or empty.
    """
    if not run_dir.is_dir():
        raise ReportError(f"no such run directory: {run_dir}")
    rows = read_metrics(run_dir)
    if not rows:
        raise ReportError(f"no metrics in {run_dir / METRICS_FILE} (the run has not completed a round)")
    return rows


# ------------------------------------------------------------------------------------------------ tables
def round_table(rows: Iterable[dict]) -> list[dict[str, Any]]:
    """One entry per round: wall time, means over clients, global accuracy and rejected updates.

    Parameters
    ----------
    rows : Iterable[dict]
        Rows of ``metrics.jsonl``; phases other than train, evaluate, server-eval, rejected and round are ignored.

    Returns
    -------
    list[dict[str, Any]]
        Sorted by round. ``train_loss``, ``client_acc``, ``bytes_up``, ``bytes_down`` and ``adapter_bytes`` are
        unweighted means over the clients of the round (``None`` where no client reported); ``global`` maps
        ``model/task`` to the server-side accuracy and ``global_acc`` is its mean.
    """
    by_round = _group(rows, "round")
    table = []
    for server_round in sorted(by_round):
        phases = _group(by_round[server_round], "phase")
        train, server = phases.get("train", []), phases.get("server-eval", [])
        global_accuracy = {f"{r['model']}/{r['task']}": r["accuracy"] for r in server}
        table.append(
            {
                "round": server_round,
                "wall_s": _mean(r["wall_seconds"] for r in phases.get("round", [])),
                "train_loss": _mean(r.get("train-loss") for r in train),
                "client_acc": _mean(r.get("accuracy") for r in phases.get("evaluate", [])),
                "global": global_accuracy,
                "global_acc": _mean(global_accuracy.values()),
                "bytes_up": _mean(r.get("bytes_up") for r in train),
                "bytes_down": _mean(r.get("bytes_down") for r in train),
                "adapter_bytes": _mean(r.get("adapter_bytes") for r in train),
                "rejected": len(phases.get("rejected", [])),
            }
        )
    return table


def client_table(rows: Iterable[dict], server_round: int) -> list[dict[str, Any]]:
    """One entry per client that trained or evaluated in ``server_round``, sorted by client id.

    Parameters
    ----------
    rows : Iterable[dict]
        Rows of ``metrics.jsonl``.
    server_round : int
        The round to show (usually the last one).

    Returns
    -------
    list[dict[str, Any]]
        Layers, train loss, accuracy, bytes, pure training seconds and peak memory (MB) of each client;
        ``None`` where the client sent no such row (e.g. its update was rejected).
    """
    train: dict[str, dict] = {}
    accuracy: dict[str, float] = {}
    for row in rows:
        if row.get("round") != server_round:
            continue
        if row["phase"] == "train":
            train[row["client"]] = row
        elif row["phase"] == "evaluate":
            accuracy[row["client"]] = row["accuracy"]
    table = []
    for client in sorted(train.keys() | accuracy.keys()):
        row = train.get(client, {})
        table.append(
            {
                "client": client,
                "layers": row.get("layers"),
                "train_loss": row.get("train-loss"),
                "accuracy": accuracy.get(client),
                "bytes_up": row.get("bytes_up"),
                "bytes_down": row.get("bytes_down"),
                "adapter_bytes": row.get("adapter_bytes"),
                "train_s": row.get("train-seconds"),
                "peak_mb": row.get("peak-memory-mb"),
            }
        )
    return table


def format_table(entries: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of ``columns`` of ``entries``; bytes columns in KiB, missing values as ``-``."""
    cells = [[_cell(column, entry.get(column)) for column in columns] for entry in entries]
    headers = [f"{c} (KiB)" if "bytes" in c else c for c in columns]
    widths = [max([len(header), *(len(line[i]) for line in cells)]) for i, header in enumerate(headers)]
    lines = [
        "  ".join(text.rjust(width) for text, width in zip(line, widths, strict=True)) for line in [headers, *cells]
    ]
    return "\n".join(lines)


def _with_global_columns(rounds: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Round entries with one ``global <model/task>`` column per server-evaluated pair, before the mean."""
    keys = sorted({key for entry in rounds for key in entry["global"]})
    columns = list(ROUND_COLUMNS)
    position = columns.index("global_acc")
    columns[position:position] = [f"global {key}" for key in keys]
    entries = [{**entry, **{f"global {k}": v for k, v in entry["global"].items()}} for entry in rounds]
    return entries, columns


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if "bytes" in column:
        return f"{value / 1024:.1f}"
    if isinstance(value, float):
        return (
            f"{value:.4f}"
            if column.startswith("global") or column.endswith(("acc", "accuracy", "loss"))
            else f"{value:.2f}"
        )
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


# ------------------------------------------------------------------------------------------------ plots
def write_plots(rows: Sequence[dict], folder: Path) -> list[Path]:
    """Write ``accuracy.png`` and ``bytes.png`` into ``folder`` and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "accuracy.png", folder / "bytes.png"]
    for path, draw in zip(paths, (_draw_accuracy, _draw_bytes), strict=True):
        figure, axes = plt.subplots(figsize=(7, 4.5), layout="constrained")
        draw(axes, rows)
        axes.set_xlabel("round")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", loc="best")
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return paths


def _draw_accuracy(axes: Any, rows: Sequence[dict]) -> None:
    for client, client_rows in sorted(_group((r for r in rows if r["phase"] == "evaluate"), "client").items()):
        points = sorted((r["round"], r["accuracy"]) for r in client_rows)
        axes.plot(*zip(*points, strict=True), marker="o", label=client)
    server = [r for r in rows if r["phase"] == "server-eval"]
    for (key, key_rows), marker in zip(sorted(_group(server, "model", "task").items()), "sD^vP*X", strict=False):
        points = sorted((r["round"], r["accuracy"]) for r in key_rows)
        axes.plot(*zip(*points, strict=True), "k--", marker=marker, linewidth=2, label=f"global {'/'.join(key)}")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1)
    axes.set_title("Accuracy per client (own test split) and global (server test split)")


def _draw_bytes(axes: Any, rows: Sequence[dict]) -> None:
    table = [entry for entry in round_table(rows) if entry["bytes_up"] is not None]
    rounds = [entry["round"] for entry in table]
    for column, label, style in (
        ("bytes_up", "up (client → server)", "o-"),
        ("bytes_down", "down (server → client)", "v-"),
        ("adapter_bytes", "raw adapter tensors (up)", ":"),
    ):
        values = [entry[column] for entry in table]
        if any(v is not None for v in values):
            axes.plot(rounds, [v / 1024 if v is not None else None for v in values], style, label=label)
    axes.set_ylabel("KiB per client (mean)")
    axes.set_ylim(bottom=0)
    axes.set_title("Message bytes per client and round")


def write_rank_collapse_plot(rows: Sequence[dict], folder: Path) -> Path | None:
    """Plot the rank-collapse diagnostic of a rank-heterogeneous run into ``folder/rank-collapse.png``.

    Each round's ``rank-diagnostic`` row holds the share of the aggregate's spectral energy beyond the smallest
    client rank (see ``strategies/rank_methods.py``); FlexLoRA's per-client ``flexlora-truncation`` rows, when
    present, add the share each client's truncation discards. Returns None for runs without such rows.
    """
    diagnostic = sorted((r["round"], r["energy-beyond-min-rank"]) for r in rows if r["phase"] == "rank-diagnostic")
    if not diagnostic:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rank-collapse.png"
    figure, axes = plt.subplots(figsize=(7, 4.5), layout="constrained")
    axes.plot(*zip(*diagnostic, strict=True), "k-", marker="o", linewidth=2, label="aggregate: energy beyond min rank")
    truncation = _group((r for r in rows if r["phase"] == "flexlora-truncation"), "client")
    for client, client_rows in sorted(truncation.items()):
        points = sorted((r["round"], r["discarded-energy"]) for r in client_rows)
        rank = client_rows[-1]["rank"]
        axes.plot(*zip(*points, strict=True), ":", marker=".", label=f"{client} (r={rank}): discarded by truncation")
    axes.set_xlabel("round")
    axes.set_ylabel("share of spectral energy")
    axes.set_ylim(0, 1)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    axes.set_title("Rank-collapse diagnostic (a shrinking share: high-rank components die out)")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------------------------ helpers
def _group(rows: Iterable[dict], *keys: str) -> dict[Any, list[dict]]:
    groups: dict[Any, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row[keys[0]] if len(keys) == 1 else tuple(row[k] for k in keys)].append(row)
    return groups


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(mean(present)) if present else None
