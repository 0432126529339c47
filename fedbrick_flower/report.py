"""``fedbrick-flower report RUN_DIR``: per-round and per-client tables and PNG plots of a run.

Everything is computed from the run's ``metrics.jsonl`` (read through :mod:`fedbrick_flower.metrics`). The table
functions are pure (rows in, dicts out) so they can be tested without a Flower run; the plots go to
``RUN_DIR/plots/`` and use matplotlib's Agg backend, imported only when plotting. Beside the generic tables and
plots, the report draws what the registered algorithms declare for their own rows (heat maps, curves, per-round
columns) with generic drawers; rows that no declaration can read are named in a note.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from .metrics import (
    AGGREGATE,
    EVALUATE,
    REJECTED,
    ROUND,
    SERVER_EVAL,
    TRAIN,
    CurvePlot,
    MatrixPlot,
    TableColumn,
    by_phase,
    column_values,
    curve_labels,
    curve_points,
    group,
    holding,
    left_out_notes,
    mean_of,
    of_phase,
    read_metrics,
)
from .registry import declared_phases, report_columns, report_plots
from .run_files import METRICS_FILE

PLOTS_DIR = "plots"
ROUND_COLUMNS = (
    "round",
    "wall_s",
    "agg_s",
    "train_loss",
    "client_acc",
    "global_acc",
    "no_lora_acc",
    "bytes_up",
    "bytes_down",
    "adapter_bytes",
    "eval_bytes_up",
    "eval_bytes_down",
    "total_bytes",
    "rejected",
)
EVALUATE_MESSAGE = "evaluate-message"  # the ``source`` of an evaluate row that had a message of its own
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

LEFT_ALIGNED = frozenset({"client", "layers"})
# A first-round download below this share of the later rounds' mean is explained under the table.
_SMALL_FIRST_DOWNLOAD = 0.5


class ReportError(Exception):
    """The run directory cannot be reported on (missing, or without metrics)."""


def main(args: argparse.Namespace) -> int:
    """Print the tables of ``args.run_dir`` and write its plots; 2 on a missing or empty run directory."""
    try:
        rows = load_rows(args.run_dir)
    except ReportError as error:
        print(f"fedbrick-flower report: error: {error}", file=sys.stderr)
        return 2
    declared = report_columns()
    rounds = round_table(rows, declared)
    entries, columns = _with_global_columns(rounds)
    shown = [c for c in declared if any(entry[c.name] is not None for entry in rounds)]
    print(f"run directory: {args.run_dir}\n")
    print("per round (means over clients; bytes per client):")
    print(format_table(entries, [*columns, *(c.name for c in shown)], {c.name: c.digits for c in shown}))
    for note in [*download_notes(rounds), *rejected_notes(rounds)]:
        print(note)
    last_round = max(r["round"] for r in rows if "round" in r)
    print(f"\nper client, round {last_round}:")
    print(format_table(client_table(rows, last_round), CLIENT_COLUMNS))
    for path in [*write_plots(rows, args.run_dir / PLOTS_DIR), *write_declared_plots(rows, args.run_dir / PLOTS_DIR)]:
        print(f"wrote {path}")
    for note in left_out_notes(rows, declared_phases(), [*report_plots(), *declared]):
        print(note)
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
def round_table(rows: Iterable[dict], columns: Sequence[TableColumn] = ()) -> list[dict[str, Any]]:
    """One entry per round: wall time, means over clients, global accuracy and rejected updates.

    Parameters
    ----------
    rows : Iterable[dict]
        Rows of ``metrics.jsonl``; phases other than train, evaluate, server-eval, rejected, round and those of
        ``columns`` are ignored.
    columns : Sequence[TableColumn] (default: ())
        Declared columns (``registry.report_columns()``): each adds its value per round, None where it has none.

    Returns
    -------
    list[dict[str, Any]]
        Sorted by round. ``train_loss``, ``client_acc``, ``bytes_up``, ``bytes_down`` and ``adapter_bytes`` are
        unweighted means over the clients of the round (``None`` where no client reported); ``global`` maps
        ``model/task`` to the server-side accuracy and ``global_acc`` is its mean; ``no_lora_acc`` is that
        mean with the global LoRA B zeroed (``server.evaluate_without_lora``); ``agg_s`` is the strategy's
        ``aggregate`` seconds.
    """
    rows = list(rows)
    declared = {column.name: column_values(rows, column) for column in columns}
    by_round = group((r for r in rows if "round" in r), "round")
    table = []
    for server_round in sorted(by_round):
        phases = by_phase(by_round[server_round])
        train, server = phases[TRAIN], phases[SERVER_EVAL]
        evaluated = evaluate_messages(phases[EVALUATE])
        global_accuracy = {f"{r['model']}/{r['task']}": r["accuracy"] for r in server}
        table.append(
            {
                "round": server_round,
                "wall_s": mean_of(r["wall_seconds"] for r in phases[ROUND]),
                "agg_s": mean_of(r["seconds"] for r in phases[AGGREGATE]),
                "train_loss": mean_of(r.get("train-loss") for r in train),
                "client_acc": mean_of(r.get("accuracy") for r in phases[EVALUATE]),
                "global": global_accuracy,
                "global_acc": mean_of(global_accuracy.values()),
                "no_lora_acc": mean_of(r.get("accuracy-without-lora") for r in server),
                "bytes_up": mean_of(r.get("bytes_up") for r in train),
                "bytes_down": mean_of(r.get("bytes_down") for r in train),
                "adapter_bytes": mean_of(r.get("adapter_bytes") for r in train),
                "eval_bytes_up": mean_of(r.get("bytes_up") for r in evaluated),
                "eval_bytes_down": mean_of(r.get("bytes_down") for r in evaluated),
                "total_bytes": message_bytes([*train, *evaluated]),
                "rejected": len(phases[REJECTED]),
                **{name: values.get(server_round) for name, values in declared.items()},
            }
        )
    return table


def evaluate_messages(evaluations: Iterable[dict]) -> list[dict]:
    """The evaluate rows of clients that got an evaluate message of their own (they did not train that round);
    an evaluation inside a train message costs no bytes of its own."""
    return [r for r in evaluations if r.get("source") == EVALUATE_MESSAGE]


def message_bytes(rows: Iterable[dict]) -> int | None:
    """Every byte the rows' messages carried, both ways (None: no row states any)."""
    counted = [r.get(key) for r in rows for key in ("bytes_up", "bytes_down") if r.get(key) is not None]
    return sum(counted) if counted else None


def rejected_notes(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """One line naming the rounds in which an update was rejected (empty when none was)."""
    marked = [f"{entry['round']} ({entry['rejected']})" for entry in rounds if entry["rejected"]]
    if not marked:
        return []
    return [f"rounds with rejected updates (count): {', '.join(marked)}; reasons in metrics.jsonl, phase 'rejected'"]


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
    evaluated: dict[str, dict] = {}  # clients that only evaluated: their own message's bytes
    for row in rows:
        if row.get("round") != server_round:
            continue
        if row["phase"] == TRAIN:
            train[row["client"]] = row
        elif row["phase"] == EVALUATE:
            accuracy[row["client"]] = row["accuracy"]
            if row.get("source") == EVALUATE_MESSAGE:
                evaluated[row["client"]] = row
    table = []
    for client in sorted(train.keys() | accuracy.keys()):
        row = train.get(client) or evaluated.get(client, {})
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


def format_table(
    entries: Sequence[dict[str, Any]], columns: Sequence[str], digits: Mapping[str, int] | None = None
) -> str:
    """A plain-text table of ``columns`` of ``entries``; bytes columns in KiB, missing values as ``-``.

    Names (:data:`LEFT_ALIGNED`) are aligned left, numbers right. ``digits`` sets the decimals of a column's
    floats (default: 4 for accuracies and losses, else 2).
    """
    digits = digits or {}
    cells = [[_cell(column, entry.get(column), digits.get(column)) for column in columns] for entry in entries]
    headers = [f"{c} (KiB)" if "bytes" in c else c for c in columns]
    widths = [max([len(header), *(len(line[i]) for line in cells)]) for i, header in enumerate(headers)]
    left = [column in LEFT_ALIGNED for column in columns]
    lines = [
        "  ".join(
            text.ljust(width) if is_left else text.rjust(width)
            for text, width, is_left in zip(line, widths, left, strict=True)
        ).rstrip()
        for line in [headers, *cells]
    ]
    return "\n".join(lines)


def download_notes(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """Explain a first round whose download is far below the later ones'.

    The server holds no trained adapters before round 1 has been aggregated, so round 1 sends the round's
    instructions and little else (what it does send, such as seeded BRICKs, counts as usual). The mean of the
    later rounds is what a client downloads in a typical round.
    """
    downloads = [(entry["round"], entry["bytes_down"]) for entry in rounds if entry["bytes_down"] is not None]
    if len(downloads) < 2:
        return []
    (first_round, first), later = downloads[0], [value for _, value in downloads[1:]]
    typical = mean(later)
    if first >= _SMALL_FIRST_DOWNLOAD * typical:
        return []
    return [
        f"note: round {first_round} downloads {first / 1024:.1f} KiB per client: the server holds no trained "
        f"adapters yet, so it sends the round's instructions and little else; from round {downloads[1][0]} on a "
        f"client downloads {typical / 1024:.1f} KiB per round on average"
    ]


def _with_global_columns(rounds: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Round entries with one ``global <model/task>`` column per server-evaluated pair, before their mean.

    With a single pair the mean is that pair's accuracy, so only ``global_acc`` is shown.
    """
    keys = sorted({key for entry in rounds for key in entry["global"]})
    if len(keys) < 2:
        return rounds, list(ROUND_COLUMNS)
    columns = list(ROUND_COLUMNS)
    position = columns.index("global_acc")
    columns[position:position] = [f"global {key}" for key in keys]
    entries = [{**entry, **{f"global {k}": v for k, v in entry["global"].items()}} for entry in rounds]
    return entries, columns


def _cell(column: str, value: Any, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if "bytes" in column:
        return f"{value / 1024:.1f}"
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
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
    for client, client_rows in sorted(group(of_phase(rows, EVALUATE), "client").items()):
        points = sorted((r["round"], r["accuracy"]) for r in client_rows)
        axes.plot(*zip(*points, strict=True), marker="o", label=client)
    server = of_phase(rows, SERVER_EVAL)
    for (key, key_rows), marker in zip(sorted(group(server, "model", "task").items()), "sD^vP*X", strict=False):
        points = sorted((r["round"], r["accuracy"]) for r in key_rows)
        axes.plot(*zip(*points, strict=True), "k--", marker=marker, linewidth=2, label=f"global {'/'.join(key)}")
    _mark_rejected(axes, round_table(rows))
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1)
    axes.set_title("Accuracy per client (own test split) and global (server test split)")


def _draw_bytes(axes: Any, rows: Sequence[dict]) -> None:
    rounds_table = round_table(rows)
    table = [entry for entry in rounds_table if entry["bytes_up"] is not None or entry["eval_bytes_up"] is not None]
    rounds = [entry["round"] for entry in table]
    for column, label, style in (
        ("bytes_up", "up (client → server)", "o-"),
        ("bytes_down", "down (server → client)", "v-"),
        ("adapter_bytes", "raw adapter tensors (up)", ":"),
        ("eval_bytes_up", "evaluate message, up", "s--"),
        ("eval_bytes_down", "evaluate message, down", "^--"),
    ):
        values = [entry[column] for entry in table]
        if any(v is not None for v in values):
            axes.plot(rounds, [v / 1024 if v is not None else None for v in values], style, label=label)
    _mark_rejected(axes, rounds_table)
    axes.set_ylabel("KiB per client (mean)")
    axes.set_ylim(bottom=0)
    axes.set_title("Message bytes per client and round")


def _mark_rejected(axes: Any, rounds: Sequence[dict[str, Any]]) -> None:
    """A dotted red line at every round in which an update was rejected (labelled once)."""
    for index, entry in enumerate(e for e in rounds if e["rejected"]):
        axes.axvline(
            entry["round"], color="red", linestyle=":", label="round with rejected updates" if not index else None
        )


# ------------------------------------------------------------------------------------------------ declared plots
def write_declared_plots(rows: Sequence[dict], folder: Path) -> list[Path]:
    """Draw every plot a registered algorithm declares (``registry.report_plots()``) whose rows the run has."""
    paths: list[Path] = []
    for plot in report_plots():
        if isinstance(plot, MatrixPlot):
            paths += write_matrix_plots(rows, plot, folder)
        else:
            drawn = write_curve_plot(rows, plot, folder)
            paths += [drawn] if drawn is not None else []
    return paths


def matrix_table(
    rows: Iterable[dict], plot: MatrixPlot, server_round: int, group_value: Any = None, key: str | None = None
) -> dict[str, Any]:
    """One round's matrix ``key`` (default: the plot's first) of one group, ordered by column label then id.

    Parameters
    ----------
    rows : Iterable[dict]
        Rows of ``metrics.jsonl``; those of the plot's phase that hold its keys are used.
    plot : MatrixPlot
        The declaration (which keys hold the ids, their labels, the group and the matrices).
    server_round : int
        The round to show.
    group_value : Any (default: None)
        The group (the row's ``plot.group_key``); ignored by a plot without groups.
    key : str | None (default: None)
        One of the plot's matrices (its ``value_key``).

    Returns
    -------
    dict[str, Any]
        ``rows`` and ``columns`` (ids), ``row_labels`` and ``column_labels``, and ``matrix`` (lists).

    Raises
    ------
    ReportError
        If the run has no such row for that round and group.
    """
    matrix = next(m for m in plot.matrices if m.value_key == (key or plot.matrices[0].value_key))
    found = [
        r
        for r in holding(of_phase(rows, plot.phase), plot.keys())
        if r["round"] == server_round and (plot.group_key is None or r[plot.group_key] == group_value)
    ]
    if not found:
        where = f", group {group_value!r}" if plot.group_key else ""
        raise ReportError(f"no {plot.phase!r} row for round {server_round}{where}")
    row = found[0]
    ids, labels = row[plot.column_key], row[plot.label_key]
    label_of = dict(zip(ids, labels, strict=True))
    row_ids = row[matrix.rows_key]
    columns = sorted(range(len(ids)), key=lambda i: (labels[i], ids[i]))
    ordered_rows = sorted(range(len(row_ids)), key=lambda i: (label_of[row_ids[i]], row_ids[i]))
    return {
        "rows": [row_ids[i] for i in ordered_rows],
        "row_labels": [label_of[row_ids[i]] for i in ordered_rows],
        "columns": [ids[i] for i in columns],
        "column_labels": [labels[i] for i in columns],
        "matrix": [[row[matrix.value_key][i][j] for j in columns] for i in ordered_rows],
    }


def write_matrix_plots(rows: Sequence[dict], plot: MatrixPlot, folder: Path) -> list[Path]:
    """Heat maps of the plot's matrices (first and last round) per group; none without such rows."""
    found = holding(of_phase(rows, plot.phase), plot.keys())
    if not found:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    groups = sorted(group(found, plot.group_key).items()) if plot.group_key else [(None, found)]
    paths = []
    for group_value, group_rows in groups:
        rounds = sorted({r["round"] for r in group_rows})
        shown = [rounds[0], rounds[-1]] if len(rounds) > 1 else rounds
        lines = len(plot.matrices)
        # At least 7.5 inches wide: a one-round figure still fits its title.
        size = (max(7.5, 5.5 * len(shown)), 5 * lines)
        figure, axes = plt.subplots(lines, len(shown), figsize=size, layout="constrained", squeeze=False)
        for column, server_round in enumerate(shown):
            for line, matrix in enumerate(plot.matrices):
                table = matrix_table(group_rows, plot, server_round, group_value, matrix.value_key)
                _draw_matrix(axes[line][column], table, matrix.colormap, matrix.limits)
                axes[line][column].set_title(f"{matrix.value_key}, round {server_round}")
        figure.suptitle(plot.title.format(group=group_value))
        stem = f"{plot.name}-{str(group_value).replace('/', '-')}" if plot.group_key else plot.name
        path = folder / f"{stem}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


def _draw_matrix(axes: Any, table: dict[str, Any], colormap: str, limits: tuple[float, float]) -> None:
    image = axes.imshow(table["matrix"], cmap=colormap, vmin=limits[0], vmax=limits[1])
    axes.figure.colorbar(image, ax=axes, shrink=0.7)
    axes.set_xticks(range(len(table["columns"])), table["columns"], rotation=90, fontsize="small")
    axes.set_yticks(range(len(table["rows"])), table["rows"], fontsize="small")
    # Lines between label blocks: with tasks as labels, the diagonal blocks are what a client gives its own task.
    for labels, draw in ((table["column_labels"], axes.axvline), (table["row_labels"], axes.axhline)):
        for position in range(1, len(labels)):
            if labels[position] != labels[position - 1]:
                draw(position - 0.5, color="white", linewidth=1.5)


def write_curve_plot(rows: Sequence[dict], plot: CurvePlot, folder: Path) -> Path | None:
    """Draw the plot's curves over rounds into ``folder/<name>.png``; None for runs without their rows.

    Each curve is one line, or one per value of its series key (per client, per layer), labelled from the series'
    last row.
    """
    lines = [(curve, curve_points(rows, curve), curve_labels(rows, curve)) for curve in plot.curves]
    if not any(points for _, points, _ in lines):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{plot.name}.png"
    figure, axes = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for curve, points, labels in lines:
        width = {} if curve.linewidth is None else {"linewidth": curve.linewidth}
        for series, by_round in points.items():
            axes.plot(list(by_round), list(by_round.values()), curve.style, label=labels[series], **width)
    axes.set_xlabel("round")
    axes.set_ylabel(plot.ylabel)
    if plot.limits is not None:
        axes.set_ylim(*plot.limits)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    axes.set_title(plot.title)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
