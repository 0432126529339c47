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

from .run_files import METRICS_FILE, read_metrics
from .strategies.fedbip import SIMILARITY_PHASE

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
    rounds = round_table(rows)
    print(f"run directory: {args.run_dir}\n")
    print("per round (means over clients; bytes per client):")
    print(format_table(*_with_global_columns(rounds)))
    for note in download_notes(rounds):
        print(note)
    last_round = max(r["round"] for r in rows)
    print(f"\nper client, round {last_round}:")
    print(format_table(client_table(rows, last_round), CLIENT_COLUMNS))
    for path in write_plots(rows, args.run_dir / PLOTS_DIR):
        print(f"wrote {path}")
    for path in write_similarity_plots(rows, args.run_dir / PLOTS_DIR):
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
        ``model/task`` to the server-side accuracy and ``global_acc`` is its mean; ``no_lora_acc`` is that
        mean with the global LoRA B zeroed (``server.evaluate_without_lora``); ``agg_s`` is the strategy's
        ``aggregate`` seconds.
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
                "agg_s": _mean(r["seconds"] for r in phases.get("aggregate", [])),
                "train_loss": _mean(r.get("train-loss") for r in train),
                "client_acc": _mean(r.get("accuracy") for r in phases.get("evaluate", [])),
                "global": global_accuracy,
                "global_acc": _mean(global_accuracy.values()),
                "no_lora_acc": _mean(r.get("accuracy-without-lora") for r in server),
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
    """A plain-text table of ``columns`` of ``entries``; bytes columns in KiB, missing values as ``-``.

    Names (:data:`LEFT_ALIGNED`) are aligned left, numbers right.
    """
    cells = [[_cell(column, entry.get(column)) for column in columns] for entry in entries]
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


# ------------------------------------------------------------------------------------------------ similarity
def similarity_matrix(rows: Iterable[dict], server_round: int, group: str, key: str = "similarity") -> dict[str, Any]:
    """One round's similarity (or ``key="weights"``) matrix of one group, clients ordered by task then id.

    Parameters
    ----------
    rows : Iterable[dict]
        Rows of ``metrics.jsonl``; the ``similarity`` rows (one per group and round, written by FedBip) are used.
    server_round : int
        The round to show.
    group : str
        The group label (model and rank, e.g. ``minilm/r8``).
    key : str (default: "similarity")
        ``similarity``: the cosine matrix among all compared clients; ``weights``: the weights each of the
        round's receivers (rows) gave to every compared client (columns).

    Returns
    -------
    dict[str, Any]
        ``rows`` and ``columns`` (client ids), ``row_tasks`` and ``column_tasks``, and ``matrix`` (lists).

    Raises
    ------
    ReportError
        If the run has no similarity row for that round and group.
    """
    found = [r for r in rows if r["phase"] == SIMILARITY_PHASE and r["round"] == server_round and r["group"] == group]
    if not found:
        raise ReportError(f"no similarity row for round {server_round}, group {group!r}")
    row = found[0]
    task_of = dict(zip(row["clients"], row["tasks"], strict=True))
    row_ids = row["clients"] if key == "similarity" else row["receivers"]
    columns = sorted(range(len(row["clients"])), key=lambda i: (row["tasks"][i], row["clients"][i]))
    ordered_rows = sorted(range(len(row_ids)), key=lambda i: (task_of[row_ids[i]], row_ids[i]))
    return {
        "rows": [row_ids[i] for i in ordered_rows],
        "row_tasks": [task_of[row_ids[i]] for i in ordered_rows],
        "columns": [row["clients"][i] for i in columns],
        "column_tasks": [row["tasks"][i] for i in columns],
        "matrix": [[row[key][i][j] for j in columns] for i in ordered_rows],
    }


def write_similarity_plots(rows: Sequence[dict], folder: Path) -> list[Path]:
    """Heat maps of the similarity and weight matrices (first and last round) per group; none without such rows."""
    found = [r for r in rows if r["phase"] == SIMILARITY_PHASE]
    if not found:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for group, group_rows in sorted(_group(found, "group").items()):
        rounds = sorted({r["round"] for r in group_rows})
        shown = [rounds[0], rounds[-1]] if len(rounds) > 1 else rounds
        figure, axes = plt.subplots(2, len(shown), figsize=(5.5 * len(shown), 10), layout="constrained", squeeze=False)
        for column, server_round in enumerate(shown):
            for line, (key, colormap, limits) in enumerate(
                (("similarity", "coolwarm", (-1, 1)), ("weights", "viridis", (0, 1)))
            ):
                _draw_matrix(axes[line][column], similarity_matrix(rows, server_round, group, key), colormap, limits)
                axes[line][column].set_title(f"{key}, round {server_round}")
        figure.suptitle(f"{group}: task-vector cosine and mixing weights (clients ordered by task)")
        path = folder / f"similarity-{group.replace('/', '-')}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


def _draw_matrix(axes: Any, table: dict[str, Any], colormap: str, limits: tuple[float, float]) -> None:
    image = axes.imshow(table["matrix"], cmap=colormap, vmin=limits[0], vmax=limits[1])
    axes.figure.colorbar(image, ax=axes, shrink=0.7)
    axes.set_xticks(range(len(table["columns"])), table["columns"], rotation=90, fontsize="small")
    axes.set_yticks(range(len(table["rows"])), table["rows"], fontsize="small")
    # Lines between task blocks: the diagonal blocks are the weight a client gives to its own task.
    for tasks, draw in ((table["column_tasks"], axes.axvline), (table["row_tasks"], axes.axhline)):
        for position in range(1, len(tasks)):
            if tasks[position] != tasks[position - 1]:
                draw(position - 0.5, color="white", linewidth=1.5)


# ------------------------------------------------------------------------------------------------ helpers
def _group(rows: Iterable[dict], *keys: str) -> dict[Any, list[dict]]:
    groups: dict[Any, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row[keys[0]] if len(keys) == 1 else tuple(row[k] for k in keys)].append(row)
    return groups


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(mean(present)) if present else None


# ------------------------------------------------------------------------------------------------ ranks
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
