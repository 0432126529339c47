"""The benchmark suites, as data: a base scenario, overrides every method shares, and one entry per method.

Every method of a suite runs on the same clients, data split, seeds and budgets (rounds, local steps, batch
size): a method's overrides change only the algorithm and what defines the method (its depth or rank
assignment, its parameters). A cell is one method at one seed; it becomes one ``fedbrick-flower run``.

Methods whose algorithm is not registered (FedMosaic, H2Tune until their modules are merged) stay declared: their
cells are reported as not available and run as soon as the registry knows the name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..registry import algorithm_names, algorithm_parameters

NOT_REGISTERED = "not available: algorithm not registered"


@dataclass(frozen=True)
class Method:
    """One column of a suite's leaderboard.

    Parameters
    ----------
    name : str
        The label of the method in tables and run directories (kebab-case).
    algorithm : str
        The registered algorithm it runs.
    overrides : dict[str, Any]
        Dotted scenario keys (as ``--set`` takes them) on top of the suite's base; ``algorithm`` is added.
    description : str
        One line for listings.
    local_steps : Callable[[int], int] | None
        This method's ``train.local_steps`` as a function of the cell's (the suite's, or a size override's), for
        a method that must match another's compute; None keeps the cell's.
    ignores : tuple[str, ...]
        Tuning-grid keys this method never reads (a method with frozen LoRA ignores ``train.lr``): the powered
        protocol tunes it over the grid's other keys only, instead of running the same cell once per value.
    """

    name: str
    algorithm: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    local_steps: Callable[[int], int] | None = None
    ignores: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    """A base scenario, the overrides every method shares and the methods compared on it."""

    name: str
    description: str
    scenario: str
    methods: tuple[Method, ...]
    base: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One method at one seed: the overrides of one run, or the reason it cannot run."""

    suite: str
    method: str
    algorithm: str
    seed: int
    scenario: str
    overrides: dict[str, Any]
    unavailable: str | None = None

    @property
    def key(self) -> str:
        """The cell's folder under the suite's output directory."""
        return f"{self.method}/seed-{self.seed}"

    def set_arguments(self) -> list[str]:
        """The ``--set KEY=VALUE`` arguments of ``fedbrick-flower run`` (values as flow-style YAML)."""
        import yaml

        arguments = []
        for key, value in self.overrides.items():
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            arguments += ["--set", f"{key}={text.removesuffix('...').strip()}"]
        return arguments


def each_client(key: str, value: Any, count: int) -> dict[str, Any]:
    """The same value for ``clients.{i}.{key}`` of the first ``count`` clients."""
    return {f"clients.{index}.{key}": value for index in range(count)}


def expand(
    suite: Suite, seeds: list[int], extra: dict[str, Any] | None = None, methods: list[str] | None = None
) -> list[Cell]:
    """The suite's cells, method-major (all seeds of one method, then the next), so a partial suite is whole
    methods.

    Parameters
    ----------
    suite : Suite
        The suite.
    seeds : list[int]
        Scenario seeds (each also redraws the data split).
    extra : dict[str, Any] | None
        Overrides applied to every cell after the suite's base and the method's own (sizes such as ``rounds``,
        ``train.local_steps``); an ``algorithm_params.NAME`` override goes only to methods whose algorithm has
        that parameter (``algorithm_params.distill_epochs`` sizes FedBRICK's cells, not FedAvg's).
    methods : list[str] | None
        Only these methods (by name), in the suite's order; ``ValueError`` names an unknown one.
    """
    registered = set(algorithm_names())
    cells = []
    for method in selected(suite, methods):
        for seed in seeds:
            shared = _applicable(extra or {}, method.algorithm) if method.algorithm in registered else {}
            overrides = {**suite.base, **method.overrides, **shared, "algorithm": method.algorithm, "seed": seed}
            if method.local_steps is not None:
                overrides["train.local_steps"] = method.local_steps(_local_steps(suite, overrides))
            cells.append(
                Cell(
                    suite=suite.name,
                    method=method.name,
                    algorithm=method.algorithm,
                    seed=seed,
                    scenario=suite.scenario,
                    overrides=overrides,
                    unavailable=None if method.algorithm in registered else NOT_REGISTERED,
                )
            )
    return cells


def selected(suite: Suite, methods: list[str] | None) -> tuple[Method, ...]:
    """The suite's methods named in ``methods`` (all when None or empty), in the suite's order; ``ValueError``
    names an unknown one."""
    known = [m.name for m in suite.methods]
    unknown = sorted(set(methods or []) - set(known))
    if unknown:
        raise ValueError(f"--methods: {unknown} not in suite {suite.name!r} (methods: {known})")
    return tuple(m for m in suite.methods if not methods or m.name in methods)


def _local_steps(suite: Suite, overrides: dict[str, Any]) -> int:
    """A cell's ``train.local_steps``: its override, else the suite scenario's."""
    if "train.local_steps" in overrides:
        return int(overrides["train.local_steps"])
    from ..scenario import load_scenario

    return load_scenario(suite.scenario).train.local_steps


def fedbrick_round_steps(local_steps: int) -> int:
    """The optimizer steps of one FedBRICK client round at its default Stage II: Stage I's ``local_steps`` plus
    ``max(10, 20 % of them)`` Stage-II steps (``clients.fedbrick.stage_two_steps``)."""
    from ..clients.fedbrick import stage_two_steps

    return local_steps + stage_two_steps(local_steps)


def _applicable(extra: dict[str, Any], algorithm: str) -> dict[str, Any]:
    """``extra`` without the ``algorithm_params.NAME`` keys that ``algorithm`` does not accept."""
    prefix = "algorithm_params."
    if not any(key.startswith(prefix) for key in extra):
        return extra
    accepted = algorithm_parameters(algorithm)
    return {k: v for k, v in extra.items() if not k.startswith(prefix) or k.removeprefix(prefix) in accepted}


# ---------------------------------------------------------------------------------------------------- depth
# Six MiniLM-L6 clients, four of them at 2 layers: with more clients at small depth FedRA falls clearly below
# AllLayers (with 6/5/4/3/2/2 it was within 0.7 points of it). A larger proxy split (FedBRICK distils on it) and
# a larger server test split (one point is not one example).
DEPTH_BUDGETS = (6, 4, 2, 2, 2, 2)
_DEPTH_CLIENTS = [
    {"id": f"c{index}-{layers}", "model": "minilm", "task": "chat", "layers": layers}
    for index, layers in enumerate(DEPTH_BUDGETS)
]
_FEDRA = {"algorithm_params": {"resample_layers": True}}
_FEDBRICK_PARAMS = {"brick_rank": 8, "distill_epochs": 10, "distill_lr": 0.001, "distill_batch_size": 128}
DEPTH = Suite(
    name="depth",
    description="partial-depth MiniLM clients (6/4/2/2/2/2 of 6 layers), chatterbot: what depth heterogeneity costs",
    scenario="fedbrick",
    base={
        "clients": _DEPTH_CLIENTS,
        "data.proxy_fraction": 0.15,
        "data.server_test_fraction": 0.3,
        "server.evaluate_without_lora": True,
    },
    methods=(
        Method(
            "alllayers",
            "fedavg",
            {"algorithm_params": {}, **each_client("layers", 6, len(DEPTH_BUDGETS))},
            "every client holds all 6 layers (the ceiling)",
        ),
        Method(
            "smallest-depth",
            "fedavg",
            {"algorithm_params": {}, **each_client("layers", min(DEPTH_BUDGETS), len(DEPTH_BUDGETS))},
            "every client at the smallest depth",
        ),
        Method("fedra", "fedavg", _FEDRA, "FedRA: layer allocation redrawn every round, layer-wise FedAvg"),
        Method(
            "fedra-fedbrick-steps",
            "fedavg",
            _FEDRA,
            "FedRA with FedBRICK's optimizer steps per round (its Stage I + Stage II): the gain without extra compute",
            local_steps=fedbrick_round_steps,
        ),
        Method("fedbrick", "fedbrick", {"algorithm_params": _FEDBRICK_PARAMS}, "FedBRICK: FedRA + distilled BRICKs"),
        Method(
            "fedbrick-no-distill",
            "fedbrick",
            {"algorithm_params": {**_FEDBRICK_PARAMS, "distill": False}},
            "FedBRICK without server distillation",
        ),
        Method(
            "head-only",
            "fedavg",
            {**_FEDRA, "train.freeze_lora": True},
            "backbone frozen, no LoRA training: a federated linear probe (FedRA's allocation)",
            ignores=("train.lr",),
        ),
    ),
)

# ---------------------------------------------------------------------------------------------------- rank
RANK_MIX = (16, 8, 8, 4, 4, 2, 2, 2)  # the clients of the ``ranks`` scenario
RANK = Suite(
    name="rank",
    description="MiniLM clients at LoRA ranks 16 to 2, chatterbot: mixing ranks against one rank for all",
    scenario="ranks",
    base={"server.evaluate_without_lora": True},
    methods=(
        Method("fedavg-min-rank", "fedavg", each_client("rank", min(RANK_MIX), len(RANK_MIX)), "FedAvg, all at r=2"),
        Method("fedavg-max-rank", "fedavg", each_client("rank", max(RANK_MIX), len(RANK_MIX)), "FedAvg, all at r=16"),
        Method("hetlora", "hetlora", {}, "HetLoRA: zero-padded factors, norm-weighted"),
        Method("flexlora", "flexlora", {}, "FlexLoRA: mean of products, SVD per client rank"),
        Method("flora", "flora", {}, "FLoRA: stacked factors"),
    ),
)

# ---------------------------------------------------------------------------------------------------- personalization
PERSONALIZATION = Suite(
    name="personalization",
    description="8 MiniLM clients on 4 conflicting tasks: personalized adapters against one shared LoRA",
    scenario="fedbip",
    methods=(
        Method("local", "local", {}, "local training only"),
        Method("fedit", "fedavg", {}, "FedIT: one shared LoRA, one head per task"),
        Method("fedbip", "fedbip", {}, "FedBip: per-client mixing by task-vector similarity"),
        Method("fedbip-l", "fedbip-l", {}, "FedBip-L: one similarity weighting per layer"),
        Method("fedsa", "fedsa", {}, "FedSA-LoRA: A shared, B and the head personal"),
        Method("fedmosaic", "fedmosaic", {}, "FedMosaic"),
    ),
)

# ---------------------------------------------------------------------------------------------------- hybrid
# The ``fedmosaic`` scenario's six clients: three families of different width and depth (MiniLM 6x384, MPNet
# 12x768, SmolLM2 30x576), two each, on tasks that cross families (news: BERT and Llama; chat: BERT and MPNet;
# sentiment: MPNet and Llama), so what one family learns is useful to another. One LoRA rank for all (FedMosaic
# requires it); every method runs at the same budget, only FedMosaic takes the scenario's probe settings.
_FEDMOSAIC_PARAMS = {"probe": "smollm2-135m", "gradient_every": 2, "align_steps": 100}
HYBRID = Suite(
    name="hybrid",
    description="three model families and widths (BERT, MPNet, Llama) on tasks that cross families",
    scenario="fedmosaic",
    base={"algorithm_params": {}},
    methods=(
        Method("local", "local", {}, "local training only"),
        Method("fedavg-within-family", "fedavg", {}, "layer-wise FedAvg inside each family"),
        Method("hetlora", "hetlora", {}, "HetLoRA inside each family (norm-weighted)"),
        Method("fedmosaic", "fedmosaic", {"algorithm_params": _FEDMOSAIC_PARAMS}, "FedMosaic: P/Q across families"),
        Method("h2tune", "h2tune", {}, "H2Tune: the middle-matrix bank across families"),
    ),
)

SUITES: dict[str, Suite] = {suite.name: suite for suite in (DEPTH, RANK, PERSONALIZATION, HYBRID)}


def suite(name: str) -> Suite:
    """A suite by name; ``ValueError`` names the known ones."""
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"suite: {name!r} is not one of {sorted(SUITES)}") from None
