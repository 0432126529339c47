"""Algorithm registry: a name maps to its server half (a strategy) and its client half.

Entries are import paths, resolved on use, so a ClientApp process imports only its own algorithm's client
module (every Flower message starts a fresh process in deployment) and the Flower entry points never branch
on an algorithm's name. Reading an entry imports nothing; :func:`algorithm_parameters` imports the strategy.
An entry also declares the algorithm's own metric rows and what ``report`` and ``compare`` draw from them
(:class:`~fedbrick_flower.metrics.MetricDeclarations`), so those commands read them without importing a strategy.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .metrics import (
    GENERIC_METRICS,
    GENERIC_PHASES,
    Curve,
    CurvePlot,
    Matrix,
    MatrixPlot,
    MetricDeclarations,
    Phase,
    TableColumn,
)


@dataclass(frozen=True)
class AlgorithmEntry:
    """Where one algorithm's two halves live (``module:attribute``) and what it supports.

    Parameters
    ----------
    server, client : str
        Import paths of the strategy class and of the client-half class.
    description : str
        One line for listings and the field reference.
    mixes_ranks : bool (default: False)
        True if clients of one model may train LoRA of different ranks (HetLoRA, FlexLoRA, FLoRA...). Scenarios
        that give one model several ranks are refused at load under any other algorithm.
    one_rank : bool (default: False)
        True if every client of the federation, whatever its model, must train at one rank (FedMosaic averages
        r x r matrices across models). Scenarios with several ranks are refused at load.
    classification_only : bool (default: False)
        True if the client half trains with its own classification loss rather than the task objective's
        (``session.objective``), so scenarios with a generative task are refused at load.
    robust_aggregation : bool (default: False)
        True if the strategy combines every tensor over its holders through
        ``HeterogeneousStrategy.combine_layerwise``, so ``server.aggregation`` (median, trimmed mean) applies.
        Scenarios asking for a robust aggregation are refused at load under any other algorithm.
    linear_probe : bool (default: False)
        True if the strategy keeps global LoRA per layer, a layer nobody sent staying at its seeded start (B = 0),
        so under ``train.freeze_lora`` LoRA stays off the wire both ways and only the head (and the algorithm's
        own modules) travel. Scenarios with ``train.freeze_lora`` are refused at load under any other algorithm.
    secure_aggregation : bool (default: False)
        True if the server needs only sums of the updates: each tensor's weighted mean over its holders, which
        the strategy takes through ``aggregation_key`` and ``aggregate_means``. Only such algorithms run under
        ``privacy.secure_aggregation`` (SecAgg+); the others, needing each client's own update, are refused at load.
    central_dp : bool (default: False)
        True if the server's math on the updates is a mean of each tensor over its holders, every holder having
        started it from the same value (``HeterogeneousStrategy.combine_layerwise``), so central differential
        privacy applies (each client's delta clipped, each mean noised: docs/privacy.md). Scenarios with
        ``privacy.mode: central`` are refused at load under any other algorithm.
    scenario_checks : str, optional
        ``module:function`` of the algorithm's own scenario check (the scenario contract block below).
    metrics : MetricDeclarations (default: none)
        The metric phases its strategy writes beside the generic ones (each a constant of the strategy module),
        the keys of their rows, and the plots and table columns ``report`` and ``compare`` draw from them.
    """

    server: str
    client: str
    description: str
    mixes_ranks: bool = False
    """True when clients of different LoRA ranks can federate (the strategy mixes factors of different ranks)."""
    one_rank: bool = False
    robust_aggregation: bool = False
    classification_only: bool = False
    linear_probe: bool = False
    secure_aggregation: bool = False
    central_dp: bool = False
    # ---- metric rows: phases, their row keys, and what report and compare draw (see metrics.py) ----
    metrics: MetricDeclarations = MetricDeclarations()

    # ---- scenario contract: what the algorithm itself refuses in a scenario ------------------------------------
    scenario_checks: str | None = None
    """Import path (``module:function``) of the algorithm's own scenario check, ``problems(scenario) -> list[str]``,
    each problem starting with the field's dotted path (``algorithm_params.temperature: must be > 0, got 0``).
    The pre-flight (:func:`fedbrick_flower.preflight.check_scenario`) calls it once the ``algorithm_params`` have
    their declared types, before any Flower process starts; it lives in the algorithm's strategy module, which
    is imported then. None: the generic checks and the capability flags above say all."""

    # ---- the algorithm's wire contract (record keys), beside the generic keys of ``records``
    wire_keys: tuple[str, ...] = ()
    """The config and metric keys this algorithm's two halves exchange besides the generic ones of ``records``
    (a built-in algorithm's are constants below its entry's class, e.g. ``FLORA_SEGMENTS_KEY``). Two algorithms
    with different client halves may not declare the same key (:func:`register`)."""


# ---- wire keys: the record keys an algorithm adds to the generic ones of ``records``
# Both halves read them from here: neither the strategy nor the client half imports the other, this module imports
# neither torch nor Flower, and the algorithm's entry below declares them (``AlgorithmEntry.wire_keys``).
FLORA_SEGMENTS_KEY = "flora-segments"  # config: per layer, the [first round, last round, rank] blocks of the stack
HETLORA_ALPHA_KEY = "lora-alpha"  # config: the LoRA alpha a HetLoRA client trains with (its scale is alpha / rank)


# ------------------------------------------------------------------------------------------------ metric rows
# Each algorithm's own metric phases, declared here rather than beside the strategy that writes them (under the
# same name, a constant of its module) because report and compare import no strategy. A phase name belongs to
# one declaration: two algorithms of one family (the FedBip variants, the rank methods) share the same objects.
# Tests hold the two spellings together: every *_PHASE constant of a strategy is declared by its entry, and the
# rows of a real one-round run of each algorithm hold the declared keys.
_FEDBIP_SIMILARITY = "similarity"  # strategies/fedbip.py: SIMILARITY_PHASE
_FEDBIP_METRICS = MetricDeclarations(
    phases=(
        Phase(
            _FEDBIP_SIMILARITY,
            ("round", "group", "clients", "tasks", "ages", "receivers", "similarity", "weights", "layerwise"),
            "per group and round: the task vectors' cosine matrix and the weights each receiver gave the others",
        ),
    ),
    report_plots=(
        MatrixPlot(
            name="similarity",
            phase=_FEDBIP_SIMILARITY,
            column_key="clients",
            label_key="tasks",
            group_key="group",
            matrices=(
                Matrix("similarity", rows_key="clients", colormap="coolwarm", limits=(-1.0, 1.0)),
                Matrix("weights", rows_key="receivers", colormap="viridis", limits=(0.0, 1.0)),
            ),
            title="{group}: task-vector cosine and mixing weights (clients ordered by task)",
        ),
    ),
)

_FEDMOSAIC_RELEVANCE = "fedmosaic-relevance"  # strategies/fedmosaic.py: RELEVANCE_PHASE
_FEDMOSAIC_METRICS = MetricDeclarations(
    phases=(
        Phase(
            _FEDMOSAIC_RELEVANCE,
            ("round", "clients", "models", "tasks", "similarity", "weights", "lora_weights"),
            "per round: RELA's relevance matrix and the mixing weights of P/Q (weights) and of ordinary LoRA",
        ),
        Phase(
            "fedmosaic-bytes",  # strategies/fedmosaic.py: BYTES_PHASE
            ("round", "pq-up", "lora-up", "gradient-up"),
            "per round: the bytes of each part of the messages (aligned A/B, P/Q, LoRA, gradients), up and down",
        ),
        Phase(
            "alignment",  # strategies/fedmosaic.py: ALIGNMENT_PHASE
            ("round", "pivot", "models", "seconds"),
            "once, before round 1: the pivot alignment of the frozen A/B and its error before and after",
        ),
    ),
    report_plots=(
        MatrixPlot(
            name="relevance",
            phase=_FEDMOSAIC_RELEVANCE,
            column_key="clients",
            label_key="tasks",
            matrices=(
                Matrix("similarity", rows_key="clients", colormap="coolwarm", limits=(-1.0, 1.0)),
                Matrix("weights", rows_key="clients", colormap="viridis", limits=(0.0, 1.0)),
                Matrix("lora_weights", rows_key="clients", colormap="viridis", limits=(0.0, 1.0)),
            ),
            title="RELA relevance, P/Q and LoRA mixing weights (clients ordered by task)",
        ),
    ),
)

_FEDBRICK_DISTILL = "distill"  # strategies/fedbrick.py: DISTILL_PHASE
_FEDBRICK_METRICS = MetricDeclarations(
    phases=(
        Phase(
            _FEDBRICK_DISTILL,
            ("round", "model", "group", "layer", "mse_before", "mse_after", "steps"),
            "per round, model, group and layer: the BRICK's distillation error before and after",
        ),
    ),
    report_columns=(TableColumn("distill_mse", _FEDBRICK_DISTILL, "mse_after", digits=5),),
    compare_curves=(
        CurvePlot(
            name="distillation_mse_by_layer",
            title="Per-layer distillation error over rounds, mean ± std over seeds",
            ylabel="BRICK distillation MSE (after)",
            curves=(Curve(_FEDBRICK_DISTILL, "mse_after", label="layer {layer}", series_key="layer"),),
        ),
    ),
)

_RANK_DIAGNOSTIC = Phase(
    "rank-diagnostic",  # strategies/rank_methods.py: DIAGNOSTIC_PHASE
    ("round", "energy-beyond-min-rank", "min-rank", "max-rank", "modules"),
    "per round: the share of the aggregate's spectral energy beyond the smallest client rank",
)
_FLEXLORA_TRUNCATION = Phase(
    "flexlora-truncation",  # strategies/flexlora.py: TRUNCATION_PHASE
    ("round", "client", "rank", "discarded-energy"),
    "per client and round: the share of its modules' spectrum cut by truncating at its rank",
)
# One plot for the rank methods: the diagnostic of every one, and FlexLoRA's truncation where a run has it.
_RANK_COLLAPSE = CurvePlot(
    name="rank-collapse",
    title="Rank-collapse diagnostic (a shrinking share: high-rank components die out)",
    ylabel="share of spectral energy",
    limits=(0.0, 1.0),
    curves=(
        Curve(_RANK_DIAGNOSTIC.name, "energy-beyond-min-rank", "aggregate: energy beyond min rank", None, "ko-", 2),
        Curve(
            _FLEXLORA_TRUNCATION.name,
            "discarded-energy",
            "{client} (r={rank}): discarded by truncation",
            series_key="client",
            style=".:",
        ),
    ),
)
_RANK_COLUMN = TableColumn("beyond_min_rank", _RANK_DIAGNOSTIC.name, "energy-beyond-min-rank")
_HETLORA_METRICS = MetricDeclarations(
    phases=(_RANK_DIAGNOSTIC,), report_plots=(_RANK_COLLAPSE,), report_columns=(_RANK_COLUMN,)
)
_FLEXLORA_METRICS = MetricDeclarations(
    phases=(_RANK_DIAGNOSTIC, _FLEXLORA_TRUNCATION), report_plots=(_RANK_COLLAPSE,), report_columns=(_RANK_COLUMN,)
)
_FLORA_STACK = Phase(
    "flora-stack",  # strategies/flora.py: STACK_PHASE
    ("round", "stack-rank-max", "stack-rank-mean", "stack-bytes"),
    "per round: the rank and bytes of the stacked factors every client downloads",
)
_FLORA_RANK = Phase(
    "flora",  # strategies/flora.py: RANK_PHASE
    ("round", "module", "stacked-rank", "rank-sum", "max-client-rank"),
    "per round: the numerical rank of one module's stacked update, against the sum and the largest client rank",
)
_FLORA_METRICS = MetricDeclarations(
    phases=(_RANK_DIAGNOSTIC, _FLORA_STACK, _FLORA_RANK),
    report_plots=(_RANK_COLLAPSE,),
    report_columns=(
        _RANK_COLUMN,
        TableColumn("stack_bytes", _FLORA_STACK.name, "stack-bytes"),
        TableColumn("stacked_rank", _FLORA_RANK.name, "stacked-rank", digits=0),
    ),
)

_H2TUNE_BANK = "h2tune"  # strategies/h2tune.py: BANK_PHASE
_H2TUNE_METRICS = MetricDeclarations(
    phases=(
        Phase(
            _H2TUNE_BANK,
            (
                "round",
                "bank-bytes",
                "bank-change",
                "bank-norm",
                "uploads",
                "update-cosine-same-model",
                "update-cosine-cross-model",
            ),
            "per round: the middle-matrix bank's size, change and norm, and how the uploads agree",
        ),
    ),
    report_columns=(TableColumn("bank_change", _H2TUNE_BANK, "bank-change"),),
)


_ALGORITHMS: dict[str, AlgorithmEntry] = {
    "fedavg": AlgorithmEntry(
        server="fedbrick_flower.strategies.fedavg:LayerwiseFedAvg",
        client="fedbrick_flower.clients.fedavg:FedAvgClient",
        description="layer-wise FedAvg over layer holders (FedIT); FedRA with resample_layers",
        robust_aggregation=True,
        linear_probe=True,
        secure_aggregation=True,
        central_dp=True,
    ),
    "fedbrick": AlgorithmEntry(
        server="fedbrick_flower.strategies.fedbrick:FedBRICK",
        client="fedbrick_flower.clients.fedbrick:FedBrickClient",
        description="FedRA allocation + per-group BRICK surrogates for missing layers, distilled on the server",
        robust_aggregation=True,
        linear_probe=True,
        secure_aggregation=True,
        central_dp=True,
        metrics=_FEDBRICK_METRICS,
    ),
    "fedbip": AlgorithmEntry(
        server="fedbrick_flower.strategies.fedbip:FedBip",
        client="fedbrick_flower.clients.fedbip:FedBipClient",
        description="per-client personalized adapters mixed by task-vector cosine similarity (FedBip)",
        scenario_checks="fedbrick_flower.strategies.fedbip:scenario_problems",
        metrics=_FEDBIP_METRICS,
    ),
    "fedbip-l": AlgorithmEntry(
        server="fedbrick_flower.strategies.fedbip:FedBipL",
        client="fedbrick_flower.clients.fedbip:FedBipClient",
        description="FedBip with one similarity weighting per layer (FedBip-L)",
        scenario_checks="fedbrick_flower.strategies.fedbip:scenario_problems",
        metrics=_FEDBIP_METRICS,
    ),
    "hetlora": AlgorithmEntry(
        server="fedbrick_flower.strategies.hetlora:HetLoRA",
        client="fedbrick_flower.clients.hetlora:HetLoRAClient",
        description="mixed LoRA ranks: zero-pad, norm-weighted mean of factors, truncate; rank self-pruning",
        mixes_ranks=True,
        wire_keys=(HETLORA_ALPHA_KEY,),
        metrics=_HETLORA_METRICS,
    ),
    "flexlora": AlgorithmEntry(
        server="fedbrick_flower.strategies.flexlora:FlexLoRA",
        client="fedbrick_flower.clients.flexlora:FlexLoRAClient",
        description="mixed LoRA ranks: weighted mean of the products, truncated SVD at each client's rank",
        mixes_ranks=True,
        metrics=_FLEXLORA_METRICS,
    ),
    "flora": AlgorithmEntry(
        server="fedbrick_flower.strategies.flora:FLoRA",
        client="fedbrick_flower.clients.flora:FLoRAClient",
        description="mixed LoRA ranks: stacked factors (exact sum of products) merged into on-device base weights",
        mixes_ranks=True,
        wire_keys=(FLORA_SEGMENTS_KEY,),
        metrics=_FLORA_METRICS,
    ),
    "fedmosaic": AlgorithmEntry(
        server="fedbrick_flower.strategies.fedmosaic:FedMosaic",
        client="fedbrick_flower.clients.fedmosaic:FedMosaicClient",
        description="RELA-weighted Co-LoRA P/Q shared across widths and families, dual LoRA within a model (FedMosaic)",
        one_rank=True,
        classification_only=True,
        scenario_checks="fedbrick_flower.strategies.fedmosaic:scenario_problems",
        metrics=_FEDMOSAIC_METRICS,
    ),
    "h2tune": AlgorithmEntry(
        server="fedbrick_flower.strategies.h2tune:H2Tune",
        client="fedbrick_flower.clients.h2tune:H2TuneClient",
        description="hybrid heterogeneity: triple-matrix LoRA whose middles share one layer-aligned bank (H2Tune)",
        mixes_ranks=True,
        classification_only=True,
        scenario_checks="fedbrick_flower.strategies.h2tune:scenario_problems",
        metrics=_H2TUNE_METRICS,
    ),
    "local": AlgorithmEntry(
        server="fedbrick_flower.strategies.local:LocalOnly",
        client="fedbrick_flower.clients.local:LocalClient",
        description="local training only, no aggregation",
    ),
    "fedsa": AlgorithmEntry(
        server="fedbrick_flower.strategies.fedsa:FedSALoRA",
        client="fedbrick_flower.clients.fedsa:FedSAClient",
        description="selective aggregation: LoRA A averaged layer-wise, B and the head stay on the device (FedSA-LoRA)",
    ),
}

# Keyword arguments of a strategy that the ServerApp fills from the scenario itself and its ``server`` section
# (``strategies.build.build_strategy``). Every other keyword of the strategy's ``__init__`` chain is an algorithm
# parameter, set in the scenario's ``algorithm_params``.
RUNTIME_ARGUMENTS = frozenset(
    {
        "scenario",
        "seed",
        "fraction_train",
        "min_train_clients",
        "min_clients",
        "expected_clients",
        "state_scope",
        "frozen_lora",
        "task_labels",
        "node_wait_timeout",
        "round_timeout",
        "wire_dtype",
        "max_update_bytes",
        "robustness",
        "secure_aggregation",
        "privacy",
        "seeded_start",
        "callbacks",
    }
)


def register(name: str, entry: AlgorithmEntry) -> None:
    """Add an algorithm (e.g. from a plug-in package); re-registering a name, or declaring a metric phase or plot
    under a name another declaration holds, is an error."""
    if name in _ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is already registered")
    for other, known in _ALGORITHMS.items():
        shared = sorted(set(entry.wire_keys) & set(known.wire_keys))
        if shared and entry.client != known.client:
            raise ValueError(f"algorithm {name!r}: wire keys {shared} are already those of {other!r}")
    declarations = [*_declarations(), entry.metrics]
    _unique((phase.name, phase) for d in declarations for phase in d.phases)
    _unique((plot.name, plot) for d in declarations for plot in (*d.report_plots, *d.compare_curves))
    _ALGORITHMS[name] = entry


def algorithm_names() -> list[str]:
    return sorted(_ALGORITHMS)


def algorithm_entry(name: str) -> AlgorithmEntry:
    """The registry entry of an algorithm; ``ValueError`` names the registered ones."""
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algorithm: {name!r} is not one of {algorithm_names()}") from None


def mixes_ranks(name: str) -> bool:
    return algorithm_entry(name).mixes_ranks


def one_rank(name: str) -> bool:
    return algorithm_entry(name).one_rank


def rank_mixing_algorithms() -> list[str]:
    """The algorithms whose clients of one model may use different LoRA ranks."""
    return [name for name in algorithm_names() if _ALGORITHMS[name].mixes_ranks]


def classification_only(name: str) -> bool:
    return algorithm_entry(name).classification_only


def linear_probe_algorithms() -> list[str]:
    """The algorithms that take ``train.freeze_lora`` (their strategies keep LoRA per layer, see ``linear_probe``)."""
    return [name for name in algorithm_names() if _ALGORITHMS[name].linear_probe]


def central_dp_algorithms() -> list[str]:
    """The algorithms that take ``privacy.mode: central`` (see ``AlgorithmEntry.central_dp``)."""
    return [name for name in algorithm_names() if _ALGORITHMS[name].central_dp]


def robust_aggregation_algorithms() -> list[str]:
    """The algorithms whose strategies take ``server.aggregation`` (median, trimmed mean) for every tensor."""
    return [name for name in algorithm_names() if _ALGORITHMS[name].robust_aggregation]


def secure_aggregation_algorithms() -> list[str]:
    """The algorithms whose server needs only sums, so they run under ``privacy.secure_aggregation``."""
    return [name for name in algorithm_names() if _ALGORITHMS[name].secure_aggregation]


def declared_phases() -> dict[str, Phase]:
    """Every metric phase by name: the generic ones and each registered algorithm's."""
    return _unique(
        [(phase.name, phase) for phase in GENERIC_PHASES]
        + [(phase.name, phase) for entry in _ALGORITHMS.values() for phase in entry.metrics.phases]
    )


def report_plots() -> list[MatrixPlot | CurvePlot]:
    """The plots ``report`` draws where a run has their rows, generic and every registered algorithm's, each once."""
    return list(_unique((p.name, p) for d in _declarations() for p in d.report_plots).values())


def report_columns() -> list[TableColumn]:
    """The columns ``report`` adds to its per-round table where a run has their rows, each once."""
    return list(_unique((c.name, c) for d in _declarations() for c in d.report_columns).values())


def compare_curves() -> list[CurvePlot]:
    """The plots ``compare`` adds to its page where the runs have their rows, each once."""
    return list(_unique((p.name, p) for d in _declarations() for p in d.compare_curves).values())


def _declarations() -> list[MetricDeclarations]:
    """The generic drawers (the privacy row's), then every registered algorithm's."""
    return [GENERIC_METRICS, *(entry.metrics for entry in _ALGORITHMS.values())]


def _unique(named: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``{name: declaration}``; one name given two different declarations is an error (the cause of a report
    that read one algorithm's rows with another's layout)."""
    found: dict[str, Any] = {}
    for name, declaration in named:
        if found.setdefault(name, declaration) != declaration:
            raise ValueError(
                f"metric declaration {name!r} is declared twice, differently: {found[name]} and {declaration}"
            )
    return found


def algorithm_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The ``algorithm_params`` an algorithm accepts: its strategy's keyword arguments, minus the runtime ones.

    Walks the ``__init__`` chain of the strategy class while each ``__init__`` passes ``**kwargs`` on, so a
    subclass's parameters come first and its defaults win. Imports the strategy module (it may import torch).
    """
    parameters: dict[str, inspect.Parameter] = {}
    for cls in server_class(name).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        signature = inspect.signature(init)
        for parameter in signature.parameters.values():
            keyword = parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
            if keyword and parameter.name != "self" and parameter.name not in RUNTIME_ARGUMENTS:
                parameters.setdefault(parameter.name, parameter)
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return parameters


def algorithm_arguments(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of :func:`algorithm_parameters` with its value: as ``given`` (``algorithm_params``), else
    its default (``inspect.Parameter.empty`` for a required one). Imports the strategy module."""
    return {key: given.get(key, parameter.default) for key, parameter in algorithm_parameters(name).items()}


def scenario_checks(name: str) -> Callable[[Any], list[str]] | None:
    """The algorithm's own scenario check (see ``AlgorithmEntry.scenario_checks``), imported; None if it has none."""
    path = algorithm_entry(name).scenario_checks
    return None if path is None else _resolve(path)


def _resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def server_class(name: str) -> type:
    """The strategy class of an algorithm."""
    return _resolve(algorithm_entry(name).server)


def client_class(name: str) -> type:
    """The client-half class of an algorithm."""
    return _resolve(algorithm_entry(name).client)
