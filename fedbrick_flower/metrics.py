"""``metrics.jsonl`` for everyone: reading its rows, picking and averaging them, and what may be drawn from them.

A run's strategy and its round callbacks write one JSON row per event (:mod:`fedbrick_flower.run_dir` appends
them), each with a ``phase``. The generic phases are named here. An algorithm's own phases are constants of its
strategy module, declared by its registry entry (:class:`MetricDeclarations`): each phase with the keys its rows
hold, and the plots and table columns ``report`` and ``compare`` draw from them. Those commands hold only the
generic drawers of this module's declarations; a drawer uses the rows of its phase that hold the keys it reads,
and :func:`left_out_notes` names the others (an older run's layout), never a ``KeyError``.

No torch and no strategy: every command may import this module.
"""

from __future__ import annotations

import json
import string
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any, Literal

from .run_files import METRICS_FILE

# ------------------------------------------------------------------------------------------------ generic phases
TRAIN = "train"
EVALUATE = "evaluate"
SERVER_EVAL = "server-eval"
AGGREGATE = "aggregate"
ROUND = "round"
REJECTED = "rejected"
CLIPPED = "clipped"
REGISTRATION_FAILED = "registration-failed"
PRIVACY = "privacy"


# ------------------------------------------------------------------------------------------------ declarations
@dataclass(frozen=True)
class Phase:
    """One kind of metric row: its ``phase`` value and the keys every such row holds besides ``phase``.

    Parameters
    ----------
    name : str
        The row's ``phase``. Unique among the generic phases and every registered algorithm's.
    keys : tuple[str, ...]
        The keys each row of the phase holds (a row may hold more, such as a client's reply metrics).
    description : str (default: "")
        One line: when the row is written and what it holds.
    """

    name: str
    keys: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Matrix:
    """One matrix of a :class:`MatrixPlot` row: the row's ``value_key`` (a list of lists) whose rows are the
    client ids in ``rows_key`` and whose columns are the plot's ``column_key`` ids."""

    value_key: str
    rows_key: str
    colormap: str = "viridis"
    limits: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class MatrixPlot:
    """Heat maps of the matrices that rows of ``phase`` hold, first and last round side by side.

    Parameters
    ----------
    name : str
        File stem: ``<name>-<group>.png`` per value of ``group_key``, or ``<name>.png`` without one.
    phase : str
        The phase whose rows hold the matrices (one row per round and group).
    column_key : str
        The row's key holding the column ids (client ids).
    label_key : str
        The row's key holding one label per column id (the client's task): rows and columns are ordered by label,
        then id, and lines separate the label blocks.
    matrices : tuple[Matrix, ...]
        The matrices drawn, one line of panels each.
    title : str
        The figure's title; ``{group}`` is replaced by the group.
    group_key : str | None (default: None)
        The row's key naming its group: one figure per group. None: one figure.
    """

    name: str
    phase: str
    column_key: str
    label_key: str
    matrices: tuple[Matrix, ...]
    title: str
    group_key: str | None = None

    def keys(self) -> tuple[str, ...]:
        """The keys a row needs to be drawn."""
        group = (self.group_key,) if self.group_key else ()
        matrices = tuple(k for m in self.matrices for k in (m.value_key, m.rows_key))
        return tuple(dict.fromkeys(("round", self.column_key, self.label_key, *group, *matrices)))

    def needs(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``(phase, keys)`` of the rows it reads."""
        return ((self.phase, self.keys()),)


@dataclass(frozen=True)
class Curve:
    """One value of rows of ``phase`` over rounds: the mean of ``y_key`` over the rows of a round and series.

    ``series_key`` splits the rows into one line per value (per client, per layer); None draws one line.
    ``label`` may name keys of the row in braces (``{client} (r={rank})``), filled from the series' last row; a
    curve that ``compare`` draws names only ``series_key`` (its lines are averaged over seeds). ``style`` is a
    matplotlib format string (``ko-``: black, round markers, solid line).
    """

    phase: str
    y_key: str
    label: str
    series_key: str | None = None
    style: str = "o-"
    linewidth: float | None = None

    def keys(self) -> tuple[str, ...]:
        """The keys a row needs to be drawn."""
        named = [field for _, field, _, _ in string.Formatter().parse(self.label) if field]
        series = (self.series_key,) if self.series_key else ()
        return tuple(dict.fromkeys(("round", self.y_key, *series, *named)))


@dataclass(frozen=True)
class CurvePlot:
    """Curves over rounds in one figure: ``<name>.png`` in ``report``; in ``compare`` (one curve each) a band per
    method and series, mean ± std over seeds, and ``<name>`` the figure's key in ``compare.json``."""

    name: str
    title: str
    ylabel: str
    curves: tuple[Curve, ...]
    limits: tuple[float, float] | None = None

    def needs(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``(phase, keys)`` of the rows it reads, per curve."""
        return tuple((curve.phase, curve.keys()) for curve in self.curves)


@dataclass(frozen=True)
class TableColumn:
    """A column of ``report``'s per-round table: ``reduce`` over the round's rows of ``phase`` of ``key``.

    The column is shown when the run has such rows; a ``name`` holding ``bytes`` is shown in KiB, other values with
    ``digits`` decimals.
    """

    name: str
    phase: str
    key: str
    reduce: Literal["mean", "max", "sum"] = "mean"
    digits: int = 4

    def needs(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``(phase, keys)`` of the rows it reads."""
        return ((self.phase, ("round", self.key)),)


@dataclass(frozen=True)
class MetricDeclarations:
    """An algorithm's own metric rows (its registry entry's ``metrics``) and what is drawn from them.

    Parameters
    ----------
    phases : tuple[Phase, ...] (default: ())
        The phases its strategy writes beside the generic ones.
    report_plots : tuple[MatrixPlot | CurvePlot, ...] (default: ())
        The plots ``fedbrick-flower report`` writes into ``RUN_DIR/plots``.
    report_columns : tuple[TableColumn, ...] (default: ())
        The columns added to ``report``'s per-round table.
    compare_curves : tuple[CurvePlot, ...] (default: ())
        The plots ``fedbrick-flower compare`` adds to its page, one curve each.
    """

    phases: tuple[Phase, ...] = ()
    report_plots: tuple[MatrixPlot | CurvePlot, ...] = ()
    report_columns: tuple[TableColumn, ...] = ()
    compare_curves: tuple[CurvePlot, ...] = ()


GENERIC_PHASES: tuple[Phase, ...] = (
    Phase(
        TRAIN,
        ("round", "client", "layers", "bytes_up", "bytes_down", "adapter_bytes"),
        "a client's aggregated update: its reply's metrics (train-loss, train-seconds, peak-memory-mb...) and bytes",
    ),
    Phase(
        EVALUATE,
        ("round", "client", "source", "bytes_up", "bytes_down", "accuracy", "loss"),
        "a client's evaluation on its own test split, with the task objective's metrics",
    ),
    Phase(SERVER_EVAL, ("round", "model", "task", "accuracy", "loss"), "the global model of one (model, task)"),
    Phase(AGGREGATE, ("round", "seconds", "updates"), "the strategy's aggregation of one round"),
    Phase(ROUND, ("round", "wall_seconds"), "one completed round"),
    Phase(REJECTED, ("round", "client", "stage", "reason"), "a reply left out of the round, and why"),
    Phase(CLIPPED, ("round", "client", "factor"), "an update scaled down to the norm limit"),
    Phase(REGISTRATION_FAILED, ("round", "node", "reason"), "a node whose profile query failed"),
    Phase(
        PRIVACY,
        ("round", "mode", "epsilon", "delta", "noise_multiplier", "clip_norm", "sample_rate"),
        "under privacy.mode central or local: epsilon at delta after this round (Opacus's RDP accountant)",
    ),
)
# What report and compare draw from the generic rows, beside each algorithm's declarations (registry.py).
GENERIC_METRICS = MetricDeclarations(
    report_columns=(TableColumn("epsilon", PRIVACY, "epsilon", reduce="max", digits=3),),
    compare_curves=(
        CurvePlot(
            name="privacy_epsilon",
            title="Client-level privacy loss over rounds, mean ± std over seeds",
            ylabel="epsilon at the run's delta",
            curves=(Curve(PRIVACY, "epsilon", label="epsilon"),),
        ),
    ),
)


# ------------------------------------------------------------------------------------------------ reading
def read_metrics(run_dir: Path) -> list[dict]:
    """All rows of a run's ``metrics.jsonl`` (empty for a new run)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_of(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None without any."""
    present = [v for v in values if v is not None]
    return float(mean(present)) if present else None


def group(rows: Iterable[dict], *keys: str) -> dict[Any, list[dict]]:
    """Rows by the value of ``keys`` (a tuple for several keys), in their order; a missing key groups as None."""
    groups: dict[Any, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row.get(keys[0]) if len(keys) == 1 else tuple(row.get(k) for k in keys)].append(row)
    return groups


def by_phase(rows: Iterable[dict]) -> defaultdict[str, list[dict]]:
    """Rows by phase; an absent phase reads as no rows."""
    phases: defaultdict[str, list[dict]] = defaultdict(list)
    for row in rows:
        phases[row["phase"]].append(row)
    return phases


def of_phase(rows: Iterable[dict], phase: str) -> list[dict]:
    return [row for row in rows if row["phase"] == phase]


def of_round(rows: Iterable[dict], server_round: int | None) -> list[dict]:
    return [row for row in rows if row.get("round") == server_round]


def last_round(rows: Iterable[dict]) -> int | None:
    """The highest round of ``rows``, None without rows."""
    return max((row["round"] for row in rows), default=None)


def last_by_client(rows: Iterable[dict]) -> dict[str, dict]:
    """Each client's row of the latest round (rows in round order, the later row winning a tie)."""
    return {row["client"]: row for row in sorted(rows, key=lambda r: r["round"])}


def holding(rows: Iterable[dict], keys: Sequence[str]) -> list[dict]:
    """The rows that hold every one of ``keys``."""
    return [row for row in rows if all(key in row for key in keys)]


Drawer = MatrixPlot | CurvePlot | TableColumn


def left_out_notes(rows: Sequence[dict], phases: dict[str, Phase], drawers: Iterable[Drawer]) -> list[str]:
    """Notes on rows nothing draws: rows of a phase nobody declares, and rows a declared drawer cannot read.

    Parameters
    ----------
    rows : Sequence[dict]
        The run's rows.
    phases : dict[str, Phase]
        The declared phases by name (generic and every registered algorithm's).
    drawers : Iterable[MatrixPlot | CurvePlot | TableColumn]
        The declared plots and columns; a row of a drawer's phase that lacks a key it reads is named.
    """
    by_name = by_phase(rows)
    notes = [
        f"note: {len(by_name[name])} rows of phase {name!r}: no registered algorithm declares it, so none is drawn"
        for name in sorted(by_name)
        if name not in phases
    ]
    for drawer in drawers:
        for phase, keys in drawer.needs():
            lacking = [row for row in by_name.get(phase, []) if not all(key in row for key in keys)]
            if lacking:
                missing = sorted({key for row in lacking for key in keys if key not in row})
                notes.append(
                    f"note: {len(lacking)} {phase!r} rows lack {', '.join(missing)} (another layout, e.g. an "
                    f"older run's): left out of {drawer.name!r}"
                )
    return notes


# ------------------------------------------------------------------------------------------------ declared values
def curve_points(rows: Iterable[dict], curve: Curve) -> dict[Any, dict[int, float]]:
    """The points of ``curve``: ``{series: {round: mean of y_key}}``, rows that lack its keys left out.

    The series is the row's ``series_key`` value, or the curve's label for a curve of one line.
    """
    values: dict[Any, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in holding(of_phase(rows, curve.phase), curve.keys()):
        series = row[curve.series_key] if curve.series_key else curve.label
        values[series][row["round"]].append(row[curve.y_key])
    return {series: {k: mean(v) for k, v in sorted(by_round.items())} for series, by_round in sorted(values.items())}


def curve_labels(rows: Iterable[dict], curve: Curve) -> dict[Any, str]:
    """Each series' label, filled from its last row."""
    last = {}
    for row in holding(of_phase(rows, curve.phase), curve.keys()):
        last[row[curve.series_key] if curve.series_key else curve.label] = row
    return {series: curve.label.format(**row) for series, row in last.items()}


def column_values(rows: Iterable[dict], column: TableColumn) -> dict[int, float]:
    """``{round: value}`` of a table column, over the rows of its phase that hold its key."""
    reduce = {"mean": mean, "max": max, "sum": sum}[column.reduce]
    per_round = group(holding(of_phase(rows, column.phase), ("round", column.key)), "round")
    return {k: float(reduce([row[column.key] for row in v])) for k, v in per_round.items()}
