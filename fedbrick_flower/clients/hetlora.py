"""HetLoRA client half: train the leading r_k components at the server's alpha, prune the last ones, report the rank.

Rank self-pruning (Cho et al., EMNLP 2024, https://arxiv.org/abs/2401.06432): while the server asks for it, the
local loss adds ``prune_weight * sum_modules ||A_tail||_F ||B_tail||_F`` over the components a pruned rank would
drop (index >= floor(gamma r)). After training, if those components carry less than ``prune_threshold`` of the
update's energy, they are zeroed (the network that is evaluated and sent is the pruned one) and the client
reports the lower rank; the update still has this round's shape, the server uses the new rank from the next
round on. The device's current rank is kept in its client state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..adapters.lora import ADAPTER_NAME, lora_modules
from ..models import SequenceClassifier, model_family
from ..records import LORA_RANK_KEY
from ..registry import HETLORA_ALPHA_KEY
from .rank_methods import RankClient
from .trainer import Batch, TrainResult, make_optimizer, train_steps

RANK_STATE = "lora-rank"
Pair = tuple[torch.Tensor, torch.Tensor]


class HetLoRAClient(RankClient):
    """Local LoRA training at the server's rank and alpha, with HetLoRA's rank self-pruning."""

    def build_model(self, layers: list[int], config: dict[str, Any]) -> SequenceClassifier:
        """The network at the server's rank and the LoRA alpha it sends (the paper's scale 1: alpha = rank)."""
        scenario = self.session.scenario
        alpha = float(config.get(HETLORA_ALPHA_KEY, scenario.lora.alpha))
        lora = dataclasses.replace(scenario.lora, alpha=alpha)
        profile = dataclasses.replace(self.session.profile, rank=self.rank(config))
        session = dataclasses.replace(self.session, scenario=dataclasses.replace(scenario, lora=lora), profile=profile)
        return session.build(layers)

    def local_training(self, model: SequenceClassifier, config: dict[str, Any]) -> TrainResult:
        weight = float(config.get("prune-weight", 0.0))
        if weight <= 0:
            return super().local_training(model, config)
        pairs = lora_pairs(model)
        keep = pruned_rank(self.rank(config), float(config["prune-gamma"]))
        task_loss = self.session.objective.loss

        def loss_fn(net: torch.nn.Module, batch: Batch, step: int) -> torch.Tensor:
            return task_loss(net, batch, step) + weight * tail_penalty(pairs, keep)

        settings = self.session.scenario.train
        return train_steps(
            model,
            self.session.examples("train"),
            steps=int(config.get("local-steps", settings.local_steps)),
            batch_size=self.session.batch_size,
            optimizer=make_optimizer(model, settings.lr, settings.head_lr, settings.weight_decay),
            device=self.session.device,
            seed=self.round_seed(config, "batches"),
            loss_fn=loss_fn,
            label=f"{self.session.profile.id} train (HetLoRA pruning)",
        )

    def update(self, model: SequenceClassifier, config: dict[str, Any]) -> dict[str, Any]:
        rank = self.rank(config)
        if "prune-threshold" in config:
            keep = pruned_rank(rank, float(config["prune-gamma"]))
            pairs = lora_pairs(model)
            if keep < rank and tail_share(pairs, keep) < float(config["prune-threshold"]):
                zero_tail(pairs, keep)
                rank = keep
        self.state.set(RANK_STATE, rank)
        return super().update(model, config)

    def train(self, arrays: dict[str, Any], config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        update, metrics = super().train(arrays, config)
        metrics[LORA_RANK_KEY] = float(self.state.get(RANK_STATE, self.rank(config)))
        return update, metrics


def lora_pairs(model: SequenceClassifier) -> list[Pair]:
    """The ``(A, B)`` weights of every LoRA module of the model (live parameters, not copies)."""
    modules = lora_modules(model.backbone, model_family(model.backbone)).values()
    return [(m.lora_A[ADAPTER_NAME].weight, m.lora_B[ADAPTER_NAME].weight) for m in modules]


def pruned_rank(rank: int, gamma: float) -> int:
    """HetLoRA's pruning step r <- floor(gamma r), never below 1."""
    return max(1, math.floor(gamma * rank))


def tail_penalty(pairs: list[Pair], keep: int) -> torch.Tensor:
    """``sum ||A[keep:]||_F ||B[:, keep:]||_F``: pushes the components a pruned rank would drop towards zero."""
    return sum((a[keep:].norm() * b[:, keep:].norm() for a, b in pairs), torch.zeros(()))


def tail_share(pairs: list[Pair], keep: int) -> float:
    """Share of the update's energy ``sum ||B A||_F^2`` carried by the components from ``keep`` on."""
    with torch.no_grad():
        tail = sum(float((b[:, keep:] @ a[keep:]).square().sum()) for a, b in pairs)
        total = sum(float((b @ a).square().sum()) for a, b in pairs)
    return tail / total if total > 0 else 0.0


def zero_tail(pairs: list[Pair], keep: int) -> None:
    """Drop the components from ``keep`` on (the factors keep their shape for this round's update)."""
    with torch.no_grad():
        for a, b in pairs:
            a[keep:] = 0.0
            b[:, keep:] = 0.0
