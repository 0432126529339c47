"""H2Tune client half: train the triple-matrix adapters, alternating shared and task-specific parameters.

Shared parameters (sent, through the bank): the selected entries of each layer's full middle (its correction D),
the selection scores M (``straight-through``) and the relation matrix Π. Task-specific (never sent): A, B and the
task head. Per ``docs/algorithms/h2tune.md#client-training``:

- a client's first round trains everything jointly on ``CE + norm_weight * mean ||p||_2^2`` over the active
  middles, the scores and Π (``norm_form: norm``: the public code's un-squared ``mean ||p||_2``);
- from its second round on, every batch runs phase (a), shared parameters on
  ``CE + norm penalty + kl_weight * mean_m KL(softmax(vec T_m^prev) || softmax(vec T_m))``, then phase (b), A, B
  and head on ``CE + distill_weight * KL(softmax(z_a) || softmax(z_b))`` with ``z_a`` phase (a)'s logits on the
  same batch. ``sequential`` takes an optimizer step per phase; ``joint_step`` takes one step on both phases'
  gradients (the public code; phase (b)'s KL is zero then, with zero gradient, since both phases see the same
  logits); ``off`` trains jointly every round (an ablation).

Everything that lasts lives in the state handle: A, B, M, Π and the head (``h2tune-local``) and the previous
active middles (``h2tune-previous-t``). The upload is the bank projected through Π (``adapters/triple.py``).
Paper: https://arxiv.org/abs/2507.22633.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..adapters.base import load_named
from ..adapters.naming import bank_tensor_name, head_tensor_name
from ..adapters.triple import (
    RELATION_NAME,
    TripleKind,
    TripleSettings,
    project_bank,
    relation_mass,
    triple_bank,
    triple_modules,
    triple_tensors,
)
from ..models import SequenceClassifier, model_family
from .base import ClientAlgorithm
from .trainer import Batch, TrainResult, make_optimizer, train_steps

LOCAL_STATE = "h2tune-local"
PREVIOUS_STATE = "h2tune-previous-t"
T_MOVED_STATE = "h2tune-t-moved"
# Train metric: how far this round's training moved the active middles T, mean over modules of
# ||T_end - T_start||_F / ||T_start||_F (T_start: the middles the received bank gives through Π).
T_MOVED_METRIC = "h2tune-t-moved"
BANK_MASS_NAME = "bank-mass"
# What a device keeps between rounds (never sent): its factors, scores, relation matrix and task head.
_LOCAL_PARAMS = ("triple_A", "triple_B", "triple_M")
_LOCAL_NAMES = (RELATION_NAME, head_tensor_name("weight"), head_tensor_name("bias"))


class H2TuneClient(ClientAlgorithm):
    """Triple-matrix adapters on every targeted projection, trained with H2Tune's alternating objective."""

    adapter_kinds = ("triple",)

    def settings(self, config: dict[str, Any]) -> TripleSettings:
        """This client's triple settings: its rank and the scenario's LoRA roles, R and L_max from the server."""
        lora = self.session.lora
        return TripleSettings(
            rank=lora.rank,
            max_rank=int(config["h2tune-max-rank"]),
            slots=int(config["h2tune-slots"]),
            alpha=lora.alpha,
            dropout=lora.dropout,
            roles=lora.roles,
            selection=str(config.get("h2tune-selection", "fixed")),
            selection_seed=self.session.scenario.seed,
        )

    def build_model(self, layers: list[int], config: dict[str, Any]) -> SequenceClassifier:
        return self.session.build(layers, kind=TripleKind(self.settings(config)))

    def receive(self, model: SequenceClassifier, arrays: dict[str, np.ndarray]) -> None:
        """Load the bank G, then this device's own A, B, M, Π and head from its state (if it has trained)."""
        tensors = local_tensors(model)
        load_named(tensors, arrays, "h2tune payload")
        load_named(tensors, self.state.arrays(LOCAL_STATE), "h2tune client state")

    def local_training(self, model: SequenceClassifier, config: dict[str, Any]) -> TrainResult:
        settings = self.session.scenario.train
        alternation = str(config.get("h2tune-alternation", "sequential"))
        previous = self.state.arrays(PREVIOUS_STATE)
        if not bool(config.get("h2tune-learn-relation", True)):
            triple_bank(model.backbone).relation.requires_grad = False
        objective = Objective(model, config, previous if alternation != "off" else {})
        shared, specific = objective.shared, objective.specific
        if objective.previous and alternation == "sequential":
            phase_a = _optimizer(model, shared, settings.lr, settings.head_lr, settings.weight_decay)
            optimizer = _optimizer(model, specific, settings.lr, settings.head_lr, settings.weight_decay)
            loss_fn = objective.alternating(phase_a)
        else:
            optimizer = _optimizer(model, shared + specific, settings.lr, settings.head_lr, settings.weight_decay)
            loss_fn = objective.joint
        received = {key: m.middle().detach().clone() for key, m in objective.modules.items()}
        try:
            result = train_steps(
                model,
                self.session.examples("train"),
                steps=int(config.get("local-steps", settings.local_steps)),
                batch_size=self.session.batch_size,
                optimizer=optimizer,
                device=self.session.device,
                seed=self.round_seed(config, "batches"),
                loss_fn=loss_fn,
                label=f"{self.session.profile.id} train (H2Tune)",
            )
        finally:
            _set_trainable(shared + specific, True)
        self.state.set(T_MOVED_STATE, relative_move(received, objective.modules))
        return result

    def train(self, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        update, metrics = super().train(arrays, config)
        metrics[T_MOVED_METRIC] = float(self.state.get(T_MOVED_STATE, 0.0))
        return update, metrics

    def update(self, model: SequenceClassifier, config: dict[str, Any]) -> dict[str, Any]:
        """Ĝ_k per role (the bank projected through Π); A, B, M, Π, head and the active T stay in state."""
        bank = triple_bank(model.backbone)
        modules = triple_modules(model.backbone, model_family(model.backbone))
        update: dict[str, Any] = {}
        with torch.no_grad():
            for role in bank.roles:
                fulls = torch.stack([m.full_middle() for m in modules.values() if m.role == role])
                update[bank_tensor_name(role)] = project_bank(bank.relation, fulls, bank.bank(role))
            if bool(config.get("h2tune-send-mass", False)):
                update[BANK_MASS_NAME] = relation_mass(bank.relation)
            tensors = local_tensors(model)
            kept = {n: t for n, t in tensors.items() if n.endswith(_LOCAL_PARAMS) or n in _LOCAL_NAMES}
            self.state.set_arrays(LOCAL_STATE, kept)
            self.state.set_arrays(PREVIOUS_STATE, {f"{g}.{path}": m.middle() for (g, path), m in modules.items()})
        return update


class Objective:
    """The losses of one local round, over the model's triple modules.

    Parameters
    ----------
    model : SequenceClassifier
        The client's network with triple adapters.
    config : dict
        The round's instructions (loss weights).
    previous : dict[str, np.ndarray]
        The client's active middles at the end of its previous round (empty: a first, joint round).
    """

    def __init__(self, model: SequenceClassifier, config: dict[str, Any], previous: dict[str, np.ndarray]) -> None:
        self.modules = triple_modules(model.backbone, model_family(model.backbone))
        self.relation = triple_bank(model.backbone).relation
        self.norm_form = str(config.get("h2tune-norm-form", "squared"))
        self.norm_weight = float(config.get("h2tune-norm-weight", 1e-4))
        self.kl_weight = float(config.get("h2tune-kl-weight", 1.0))
        self.distill_weight = float(config.get("h2tune-distill-weight", 1.0))
        self.previous = {(g, path): torch.as_tensor(previous[f"{g}.{path}"]) for g, path in self.modules if previous}
        self.shared = [p for p in self._parameters("triple_D", "triple_M") if p.requires_grad]
        if self.relation.requires_grad:
            self.shared.append(self.relation)
        self.specific = [*self._parameters("triple_A", "triple_B"), *model.head.parameters()]

    def _parameters(self, *names: str) -> list[nn.Parameter]:
        return [getattr(m, n) for m in self.modules.values() for n in names if hasattr(m, n)]

    def penalty(self) -> torch.Tensor:
        """Mean squared L2 norm over the active middles, the scores and Π; ``norm``: un-squared (the code's)."""
        tensors = [m.middle() for m in self.modules.values()] + self._parameters("triple_M")
        if self.relation.requires_grad:
            tensors.append(self.relation)
        norms = torch.stack([t.norm() for t in tensors])
        return (norms if self.norm_form == "norm" else norms.square()).mean()

    def drift(self) -> torch.Tensor:
        """Mean over modules of KL(softmax(vec T_prev) || softmax(vec T))."""
        terms = [
            F.kl_div(
                F.log_softmax(m.middle().reshape(-1), dim=0),
                F.softmax(self.previous[key].reshape(-1).to(m.triple_A.device), dim=0),
                reduction="sum",
            )
            for key, m in self.modules.items()
        ]
        return torch.stack(terms).mean()

    def shared_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels) + self.norm_weight * self.penalty()
        if self.previous:
            loss = loss + self.kl_weight * self.drift()
        return loss

    def joint(self, net: nn.Module, batch: Batch, step: int) -> torch.Tensor:
        """One loss for every parameter: CE + norm penalty (+ the drift KL once a previous T exists)."""
        return self.shared_loss(net(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def alternating(self, phase_a: torch.optim.Optimizer):  # noqa: ANN201 - a trainer LossFn
        """Phase (a) steps ``phase_a`` inside; the returned loss is phase (b)'s, for the trainer's optimizer."""

        def loss_fn(net: nn.Module, batch: Batch, step: int) -> torch.Tensor:
            _set_trainable(self.specific, False)
            _set_trainable(self.shared, True)
            logits_a = net(batch["input_ids"], batch["attention_mask"])
            phase_a.zero_grad(set_to_none=True)
            self.shared_loss(logits_a, batch["labels"]).backward()
            phase_a.step()
            _set_trainable(self.shared, False)
            _set_trainable(self.specific, True)
            logits_b = net(batch["input_ids"], batch["attention_mask"])
            distill = F.kl_div(
                F.log_softmax(logits_b, dim=-1), F.softmax(logits_a.detach(), dim=-1), reduction="batchmean"
            )
            return F.cross_entropy(logits_b, batch["labels"]) + self.distill_weight * distill

        return loss_fn


def relative_move(received: dict[Any, torch.Tensor], modules: dict[Any, nn.Module]) -> float:
    """Mean over modules of ``||T_now - T_received||_F / ||T_received||_F`` (0 for a module received at T = 0)."""
    with torch.no_grad():
        moves = [
            float((m.middle() - received[key]).norm() / received[key].norm()) if received[key].norm() > 0 else 0.0
            for key, m in modules.items()
        ]
    return sum(moves) / max(1, len(moves))


def local_tensors(model: SequenceClassifier) -> dict[str, torch.Tensor]:
    """The triple tensors of the backbone plus the task head, under canonical names."""
    tensors = triple_tensors(model.backbone)
    tensors[head_tensor_name("weight")] = model.head.weight
    tensors[head_tensor_name("bias")] = model.head.bias
    return tensors


def _set_trainable(parameters: Iterable[nn.Parameter], trainable: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad = trainable


def _optimizer(
    model: nn.Module, parameters: list[nn.Parameter], lr: float, head_lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The trainer's AdamW (head at its own lr) over ``parameters`` only."""
    states = {p: p.requires_grad for p in model.parameters()}
    _set_trainable(states, False)
    _set_trainable(parameters, True)
    try:
        return make_optimizer(model, lr, head_lr, weight_decay)
    finally:
        for parameter, trainable in states.items():
            parameter.requires_grad = trainable
