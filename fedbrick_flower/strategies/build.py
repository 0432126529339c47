"""A scenario's strategy: its registered class, the runtime arguments the server fills in, its algorithm params.

The ServerApp builds it to run; the pre-flight builds it once, before any Flower process starts, to find what
the strategy's ``__init__`` chain refuses.
"""

from __future__ import annotations

import functools
from logging import INFO
from typing import TYPE_CHECKING, Any

from flwr.supercore import log

from ..data import task_labels
from ..registry import server_class
from .aggregation import Robustness
from .secure_aggregation import SecAggParameters

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

    from ..scenario import Scenario
    from .base import HeterogeneousStrategy, RoundCallback


def runtime_arguments(scenario: Scenario, callbacks: list[RoundCallback], state_scope: str = "") -> dict[str, Any]:
    """The strategy arguments the ServerApp fills in from the scenario's server settings (not algorithm params).

    The server waits for ``server.min_clients`` connected clients (all of the scenario's by default) and then
    samples ``server.fraction_train`` of them for each round, at least ``server.min_train_clients``. Under
    ``privacy.secure_aggregation`` the server sees no individual update, so the norm screening
    (``server.outlier_norm_multiple``) is off, with a logged line; a scenario that sets it explicitly is refused
    at load (``scenario.checks.secure_aggregation_problems``). Under ``privacy.mode: central`` the norm screening
    is off too: its decision reads every raw update against the others and is not accounted, while the clip to
    ``privacy.clip_norm`` bounds every update (docs/privacy.md).
    """
    server = scenario.server
    secure = scenario.privacy.secure_aggregation
    central = scenario.privacy.mode == "central"
    if secure and server.outlier_norm_multiple is not None:
        log(INFO, "privacy.secure_aggregation: norm screening (server.outlier_norm_multiple) is off: "
            "the server sees no individual update")  # fmt: skip
    return {
        "seed": scenario.seed,
        "fraction_train": server.fraction_train,
        "min_train_clients": server.min_train_clients,
        "min_clients": server.min_clients or len(scenario.clients),
        "expected_clients": len(scenario.clients),
        "state_scope": state_scope,
        "frozen_lora": scenario.train.freeze_lora,
        "task_labels": {key: task_labels(spec) for key, spec in scenario.tasks.items()},
        "node_wait_timeout": server.node_wait_timeout,
        "round_timeout": server.round_timeout,
        "wire_dtype": server.wire_dtype,
        "max_update_bytes": int(server.max_update_mb * 2**20),
        "robustness": Robustness(
            aggregation=server.aggregation,
            trim_fraction=server.trim_fraction,
            outlier_norm_multiple=None if secure or central else server.outlier_norm_multiple,
            norm_scope=server.norm_scope,
            clip_norm=server.clip_norm,
            clip_norm_multiple=server.clip_norm_multiple,
        ),
        "secure_aggregation": SecAggParameters() if secure else None,
        "privacy": scenario.privacy,
        "seeded_start": functools.partial(_seeded_start, scenario),
        "callbacks": callbacks,
    }


def _seeded_start(scenario: Scenario, model: str, task: str, rank: int | None) -> Mapping[str, np.ndarray]:
    from ..assembly import seeded_start  # torch and the models load only when a private run asks for the start

    return seeded_start(scenario, model, task, rank)


def build_strategy(scenario: Scenario, callbacks: list[RoundCallback], state_scope: str = "") -> HeterogeneousStrategy:
    """The scenario's strategy: its registered class, the runtime arguments and the algorithm parameters."""
    return server_class(scenario.algorithm).from_scenario(
        scenario, **runtime_arguments(scenario, callbacks, state_scope), **scenario.algorithm_params
    )
