"""The powered leaderboard's protocol, as data: budgets, learning-rate grid, seeds, comparisons and controls.

The protocol (written out in ``docs/results.md``, section "Protocol") is the same for every suite:

- **budget**: rounds until the validation loss (``global``: the server's global models; ``on-device``: the mean
  over clients, for personalised methods) improved by less than ``tolerance`` over the last ``window`` rounds
  (``server.stop_when_plateau``), capped at ``rounds_cap`` (at least 30), ``local_steps`` (at least 20) per round;
  the test split is scored every ``score_every`` rounds and in the last (the headline figures are the last's);
- **learning rates**: every method gets the same ``grid`` (the product of its keys' values; keys this version's
  scenario does not know are left out and named in ``suite.json``), tuned at ``tuning_seed`` by the final
  validation loss on ``data.validation_fraction`` of the clients' training data, never a test split;
- **seeds**: ``seeds`` seeds (0..N-1) per method at the chosen values, paired by seed;
- **statistics**: each :class:`Comparison` and :class:`Control` is a mean paired difference with its 95 % t
  interval (:mod:`.stats`).

A :class:`PoweredSuite` is a :class:`~.suites.Suite` (methods, base) with its protocol, comparisons and
controls. Methods whose algorithm is not registered stay declared and show as not available.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import scenario as scenario_module
from .suites import DEPTH, HYBRID, PERSONALIZATION, RANK, RANK_MIX, Method, Suite, each_client

MIN_ROUNDS_CAP, MIN_LOCAL_STEPS, MIN_SEEDS = 30, 20, 5


@dataclass(frozen=True)
class Protocol:
    """One suite's budgets and tuning (see the module docstring)."""

    version: int = 2
    """The protocol's revision (docs/results.md): 1 kept the head's rate fixed at 5e-3 and tuned a head warm-up."""
    rounds_cap: int = 40
    """40, not the minimum 30: at `train.head_lr` 1e-3 AllLayers' validation loss still fell at round 30 (protocol 2
    pilot, docs/results.md), and a cap that binds on some grid points biases the choice against them."""
    local_steps: int = 20
    window: int = 5
    tolerance: float = 0.01
    validation_fraction: float = 0.2
    plateau_metric: str = "global"
    headline: str = "global"
    """Which accuracy and loss the comparisons read: ``global`` or ``on-device``."""
    score_every: int = 5
    """The server scores its test split (and the models without LoRA) every ``score_every`` rounds and in the
    last; the plateau rule's validation loss is scored every round."""
    grid: dict[str, tuple[Any, ...]] = field(
        # Protocol 2 (docs/results.md, "Why protocol 2"): the head's rate is tuned with the LoRA rate. Under
        # protocol 1 (`train.head_lr` fixed at 5e-3, warm-up {0, 20}) the head did the learning and the validation
        # loss chose LoRA rates at which AllLayers' adapters changed nothing (its control failed).
        default_factory=lambda: {"train.lr": (6.25e-5, 1.25e-4, 2.5e-4, 5e-4), "train.head_lr": (1e-3, 5e-3)}
    )
    extend: dict[str, float] = field(default_factory=lambda: {"train.lr": 0.5})
    """Grid keys that extend past an edge: when a method's choice is the lowest (highest) value it tried, it is
    tuned once more at that value times (divided by) the factor, the other keys as chosen."""
    max_extensions: int = 2
    """How many times a method's grid may extend; a choice still at the edge after them is flagged
    (``grid_edges`` in ``suite.json``)."""
    tuning_seed: int = 0
    seeds: int = MIN_SEEDS

    def overrides(self) -> dict[str, Any]:
        """The scenario keys every cell of the suite runs with."""
        return {
            "rounds": self.rounds_cap,
            "train.local_steps": self.local_steps,
            "data.validation_fraction": self.validation_fraction,
            "server.stop_when_plateau": self.plateau_metric,
            "server.plateau_window": self.window,
            "server.plateau_tolerance": self.tolerance,
            "server.evaluate_every": self.score_every,
        }

    def available_grid(self) -> tuple[dict[str, tuple[Any, ...]], list[str]]:
        """The grid keys this version's scenario knows, and the ones it does not (left out)."""
        known = {k: v for k, v in self.grid.items() if known_field(k)}
        return known, [k for k in self.grid if k not in known]

    def grid_points(self, ignores: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every combination of the available grid's values but for the ``ignores`` keys (one tuning cell each,
        per method: a method that ignores a key is not run once per value of it)."""
        grid, _ = self.available_grid()
        grid = {key: values for key, values in grid.items() if key not in ignores}
        return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]

    def beyond_edge(self, point: dict[str, Any], tried: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The next point past the edge a method's choice sits at: each ``extend`` key whose chosen value is the
        lowest (highest) of the values ``tried`` moves one ``extend`` factor down (up). None when the choice is
        inside on every such key."""
        at_edges = edges(point, tried)
        moved = {
            key: point[key] * factor if at_edges[key] == "lowest" else point[key] / factor
            for key, factor in self.extend.items()
            if key in at_edges
        }
        return {**point, **moved} if moved else None


def edges(point: dict[str, Any], tried: list[dict[str, Any]]) -> dict[str, str]:
    """The keys of ``point`` at the lowest or highest of the values ``tried`` (of keys with several; a lowest value
    of 0 has nothing below it): a choice at an edge says the best value may lie beyond the values tried."""
    found = {}
    for key, value in point.items():
        values = sorted({other[key] for other in tried if key in other})
        if len(values) > 1 and value == values[-1]:
            found[key] = "highest"
        elif len(values) > 1 and value == values[0] != 0:
            found[key] = "lowest"
    return found


def known_field(key: str) -> bool:
    """Whether a dotted ``section.field`` key names a field of this version's scenario."""
    section, _, name = key.partition(".")
    sections = {f.name: f.type for f in dataclasses.fields(scenario_module.Scenario)}
    settings = {
        "data": scenario_module.DataSettings,
        "train": scenario_module.TrainSettings,
        "server": scenario_module.ServerSettings,
        "lora": scenario_module.LoraDefaults,
    }.get(section)
    if settings is None:
        return section in sections and not name
    return name in {f.name for f in dataclasses.fields(settings)}


@dataclass(frozen=True)
class Comparison:
    """``method`` against ``baseline``, paired by seed, on the suite's headline accuracy and loss."""

    method: str
    baseline: str


@dataclass(frozen=True)
class Control:
    """A positive control: ``method``'s ``metric`` must beat ``baseline``'s ``baseline_metric`` (exceed it, or lie
    below it when ``lower_is_better``, as a loss) by an interval that excludes zero, else the suite is not measuring
    adapters."""

    name: str
    method: str
    baseline: str
    metric: str = "global_accuracy"
    baseline_metric: str = "global_accuracy"
    lower_is_better: bool = False


@dataclass(frozen=True)
class PoweredSuite:
    suite: Suite
    protocol: Protocol = field(default_factory=Protocol)
    comparisons: tuple[Comparison, ...] = ()
    controls: tuple[Control, ...] = ()

    @property
    def name(self) -> str:
        return self.suite.name


def _with(suite: Suite, name: str, description: str, base: dict[str, Any], methods: tuple[Method, ...]) -> Suite:
    return dataclasses.replace(suite, name=name, description=description, base={**suite.base, **base}, methods=methods)


def _methods(suite: Suite, *names: str) -> tuple[Method, ...]:
    by_name = {m.name: m for m in suite.methods}
    return tuple(by_name[n] for n in names)


# ---------------------------------------------------------------------------------------------------- depth
_CLIENTS = len(DEPTH.base["clients"])
_ALL_AT_2 = each_client("layers", 2, _CLIENTS)
# The control's ceiling keeps every client at 6 layers whatever the suite's own depths.
_ALLLAYERS, _SMALLEST, _FEDRA, FEDRA_EQUAL_STEPS, _FEDBRICK, _NO_DISTILL, _HEAD_ONLY = _methods(
    DEPTH,
    "alllayers",
    "smallest-depth",
    "fedra",
    "fedra-fedbrick-steps",
    "fedbrick",
    "fedbrick-no-distill",
    "head-only",
)
_DEPTH_CONTROLS = (
    Control("AllLayers beats the smallest depth", "alllayers", "smallest-depth"),
    Control("AllLayers: global model with LoRA beats it without", "alllayers", "alllayers", "global_accuracy",
            "global_accuracy_without_lora"),
    Control("AllLayers beats head-only", "alllayers", "head-only"),
    # The same three on the test loss, the quantity the learning rates are tuned on: at a rate low enough that
    # LoRA barely moves the accuracy, it may still lower the loss (or not: then the adapters do nothing here).
    Control("AllLayers beats the smallest depth (loss)", "alllayers", "smallest-depth", "global_loss", "global_loss",
            lower_is_better=True),
    Control("AllLayers: global model with LoRA beats it without (loss)", "alllayers", "alllayers", "global_loss",
            "global_loss_without_lora", lower_is_better=True),
    Control("AllLayers beats head-only (loss)", "alllayers", "head-only", "global_loss", "global_loss",
            lower_is_better=True),
)  # fmt: skip
_DEPTH_COMPARISONS = (
    Comparison("fedbrick", "fedra"),
    Comparison("fedra-fedbrick-steps", "fedra"),
    Comparison("fedbrick", "fedra-fedbrick-steps"),
    Comparison("fedra", "head-only"),
    Comparison("fedra", "smallest-depth"),
)
_TWO_OF_SIX_METHODS = (_FEDRA, FEDRA_EQUAL_STEPS, _FEDBRICK, _HEAD_ONLY, _SMALLEST, _ALLLAYERS)
DEPTH_2OF6 = PoweredSuite(
    _with(DEPTH, "depth-2of6", "every MiniLM client at 2 of 6 layers, chatterbot", _ALL_AT_2, _TWO_OF_SIX_METHODS),
    comparisons=_DEPTH_COMPARISONS,
    controls=_DEPTH_CONTROLS,
)
DEPTH_MIXED = PoweredSuite(
    _with(
        DEPTH,
        "depth-mixed",
        "MiniLM clients at 6/4/2/2/2/2 of 6 layers, chatterbot",
        {},
        (_FEDRA, FEDRA_EQUAL_STEPS, _FEDBRICK, _NO_DISTILL, _HEAD_ONLY, _SMALLEST, _ALLLAYERS),
    ),
    comparisons=(*_DEPTH_COMPARISONS, Comparison("fedbrick", "fedbrick-no-distill")),
    controls=_DEPTH_CONTROLS,
)
DEPTH_2OF6_DRUG = PoweredSuite(
    _with(
        DEPTH,
        "depth-2of6-drug",
        "every MiniLM client at 2 of 6 layers, drug-condition (437 test reviews: the noisier second check)",
        {**_ALL_AT_2, "tasks": {"chat": {"dataset": "drug-condition"}}},
        _TWO_OF_SIX_METHODS,
    ),
    comparisons=_DEPTH_COMPARISONS,
    controls=_DEPTH_CONTROLS,
)

# ---------------------------------------------------------------------------------------------------- others
_ON_DEVICE = Protocol(plateau_metric="on-device", headline="on-device")
PERSONALIZATION_POWERED = PoweredSuite(
    PERSONALIZATION,
    protocol=_ON_DEVICE,
    comparisons=tuple(
        Comparison(m, b) for m in ("fedbip", "fedbip-l", "fedmosaic", "fedsa") for b in ("local", "fedit")
    ),
)
HYBRID_POWERED = PoweredSuite(
    HYBRID,
    protocol=_ON_DEVICE,
    comparisons=tuple(
        Comparison(m, b) for m in ("fedmosaic", "h2tune") for b in ("local", "fedavg-within-family", "hetlora")
    ),
)
# Every client at full depth (three of the ``ranks`` scenario's clients hold fewer layers), so depth does not
# confound rank; a server test split of 30 % (439 of chatterbot's 1,464 texts).
RANK_POWERED = PoweredSuite(
    _with(RANK, "rank", RANK.description + ", every client at full depth",
          {**each_client("layers", 6, len(RANK_MIX)), "data.server_test_fraction": 0.3}, RANK.methods),
    comparisons=tuple(
        Comparison(m, b) for m in ("hetlora", "flexlora", "flora") for b in ("fedavg-min-rank", "fedavg-max-rank")
    ),
    controls=(
        Control("FedAvg at the largest rank: global model with LoRA beats it without", "fedavg-max-rank",
                "fedavg-max-rank", "global_accuracy", "global_accuracy_without_lora"),
    ),
)  # fmt: skip

POWERED: dict[str, PoweredSuite] = {
    s.name: s for s in (DEPTH_2OF6, DEPTH_MIXED, DEPTH_2OF6_DRUG, PERSONALIZATION_POWERED, HYBRID_POWERED, RANK_POWERED)
}


def powered_suite(name: str) -> PoweredSuite:
    """A powered suite by name; ``ValueError`` names the known ones."""
    try:
        return POWERED[name]
    except KeyError:
        raise ValueError(f"suite: {name!r} is not one of the powered suites {sorted(POWERED)}") from None


# ---------------------------------------------------------------------------------------------------- user file
def method_catalogue() -> dict[str, Method]:
    """Every method a user's scenario can name: the suites' methods that do not depend on the suite's own
    clients (``clients.*`` overrides), then every registered algorithm under its own name."""
    from ..registry import algorithm_names

    catalogue: dict[str, Method] = {}
    for suite in (DEPTH, RANK, PERSONALIZATION, HYBRID, *(p.suite for p in POWERED.values())):
        for method in suite.methods:
            if not any(key.startswith("clients") for key in method.overrides):
                catalogue.setdefault(method.name, method)
    for name in algorithm_names():
        catalogue.setdefault(name, Method(name, name, {}, f"the registered algorithm {name!r}"))
    return catalogue


def suite_from_file(path: str | Path, methods: list[str]) -> Suite:
    """A suite of ``methods`` on the user's scenario file (its clients, tasks and data; nothing added).

    ``ValueError`` names a method that is neither a suite method (``fedra``, ``head-only``...) nor a registered
    algorithm, and lists the names it knows.
    """
    file = Path(path)
    scenario_module.scenario_path(str(file))  # a clear error for a missing file
    if not methods:
        raise ValueError(f"bench {file}: name the methods to compare (--methods fedra fedbrick ...)")
    catalogue = method_catalogue()
    unknown = [m for m in methods if m not in catalogue]
    if unknown:
        raise ValueError(f"--methods: {unknown} are not known methods (known: {sorted(catalogue)})")
    return Suite(
        name=file.stem,
        description=f"{', '.join(methods)} on the scenario file {file}",
        scenario=str(file.resolve()),
        methods=tuple(catalogue[m] for m in methods),
    )


def user_powered_suite(suite: Suite) -> PoweredSuite:
    """The protocol applied to a user's suite, each method against the first: on the global validation loss,
    or the on-device one when the file turns the server's global evaluation off."""
    raw = scenario_module.read_yaml_mapping(Path(suite.scenario), "scenario")
    evaluate_global = (raw.get("server") or {}).get("evaluate_global", True)
    protocol = Protocol() if evaluate_global else Protocol(plateau_metric="on-device", headline="on-device")
    first = suite.methods[0].name
    return PoweredSuite(suite, protocol, comparisons=tuple(Comparison(m.name, first) for m in suite.methods[1:]))
