"""FedMosaic client half: train the local Co-LoRA / dual LoRA and the gates beside the frozen global adapter.

Seo et al., "Co-LoRA: Collaborative Model Personalization on Heterogeneous Multi-Modal Clients" (FedMosaic),
ICLR-26, https://arxiv.org/abs/2506.11024 (as implemented: ``docs/algorithms/fedmosaic.md#client-per-round``). Per
message the client loads the global
adapter G it receives (frozen), restores its local adapter L, gates, head, optimizer state and gradient EMA from
its state handle, trains L, gates and head (P, Q at their own learning rate), then samples the probe gradient,
sanitises it and updates its EMA. It uploads L (P, Q; the ordinary LoRA too where it is shared) and the EMA.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..adapters.base import load_named
from ..adapters.colora import (
    ColoraKind,
    ColoraSettings,
    frozen_tensors,
    gate_tensors,
    global_tensors,
    local_tensors,
    parse_block_tensor_name,
)
from ..assembly import build_network, cached_backbone, label_names, task_examples
from ..data import iterate_batches
from ..models import SequenceClassifier, load_tokenizer, model_family
from ..models.probe import (
    append_answers,
    check_probe,
    down_projection_gradient,
    ema,
    probe_rows,
    probe_spec,
    sanitize,
)
from .base import ClientAlgorithm
from .trainer import TrainResult, train_steps

GRADIENT_NAME = "rela.gradient"
LOCAL, FROZEN, OPTIMIZER, EMA = "fedmosaic-local", "fedmosaic-frozen", "fedmosaic-optimizer", "fedmosaic-ema"


class FedMosaicClient(ClientAlgorithm):
    """Dual-adapter local training plus RELA's sanitised probe gradient (see :class:`ClientAlgorithm`)."""

    adapter_kinds = ("colora",)

    def build_model(self, layers: list[int], config: dict[str, Any]) -> SequenceClassifier:
        """The full-depth model with Co-LoRA at the block ends and dual LoRA elsewhere (no peft LoRA)."""
        scenario, profile = self.session.scenario, self.session.profile
        model = build_network(scenario, profile.model, profile.task, None, lora=None)
        kind = ColoraKind(ColoraSettings(**config["colora"]))
        kind.inject(model.backbone, model_family(model.backbone), None, self.session.lora.roles, scenario.seed)
        return model.to(self.session.device)

    def receive(self, model: SequenceClassifier, arrays: dict[str, np.ndarray]) -> None:
        """Aligned A, B (first payload only: kept in state), the global G, then this client's own L from state."""
        frozen_names = {n for n in arrays if (p := parse_block_tensor_name(n)) is not None and p[2] in ("A", "B")}
        if frozen_names:
            self.state.set_arrays(FROZEN, {n: arrays[n] for n in frozen_names})
        load_named(frozen_tensors(model.backbone), self.state.arrays(FROZEN), "Co-LoRA frozen")
        load_named(global_tensors(model.backbone), {n: v for n, v in arrays.items() if n not in frozen_names}, "global")
        load_named(self._local_tensors(model), self.state.arrays(LOCAL), "local")

    def local_training(self, model: SequenceClassifier, config: dict[str, Any]) -> TrainResult:
        settings, options = self.session.scenario.train, config["fedmosaic"]
        steps = int(config.get("local-steps", settings.local_steps))
        named = self._local_tensors(model)
        groups = {"pq": [], "lora": [], "head": []}
        for name, tensor in named.items():
            part = "head" if name.startswith("head.") else "pq" if parse_block_tensor_name(name) else "lora"
            groups[part].append(tensor)
        rates = {"pq": float(options["pq-lr"]), "lora": settings.lr, "head": settings.head_lr}
        optimizer = torch.optim.AdamW(
            [{"params": groups[part], "lr": rates[part]} for part in groups if groups[part]],
            weight_decay=settings.weight_decay,
        )
        _restore_optimizer(optimizer, named, self.state.arrays(OPTIMIZER))
        result = train_steps(
            model,
            self.session.examples("train"),
            steps=steps,
            batch_size=self.session.batch_size,
            optimizer=optimizer,
            device=self.session.device,
            seed=self.round_seed(config, "batches"),
            label=f"{self.session.profile.id} train",
        )
        self.state.set_arrays(OPTIMIZER, _optimizer_arrays(optimizer, named))
        self.state.set_arrays(LOCAL, {n: t.detach() for n, t in named.items()})
        samples = max(1, steps // int(options["every"]))
        round_gradient = np.mean([self._probe_sample(config, s) for s in range(samples)], axis=0)
        previous = self.state.arrays(EMA).get(GRADIENT_NAME)
        self.state.set_arrays(EMA, {GRADIENT_NAME: ema(previous, round_gradient, float(options["alpha"]))})
        return result

    def update(self, model: SequenceClassifier, config: dict[str, Any]) -> dict[str, Any]:
        """Local P, Q (and local LoRA where shared) plus the gradient EMA; gates and head stay on the device."""
        local = local_tensors(model.backbone)
        if not config["fedmosaic"]["share-lora"]:
            local = {n: t for n, t in local.items() if parse_block_tensor_name(n) is not None}
        return {**{n: t.detach() for n, t in local.items()}, GRADIENT_NAME: self.state.arrays(EMA)[GRADIENT_NAME]}

    def _local_tensors(self, model: SequenceClassifier) -> dict[str, torch.Tensor]:
        """Everything this client trains and keeps: local adapters, gates and the task head."""
        backbone = model.backbone
        return {
            **local_tensors(backbone),
            **gate_tensors(backbone),
            "head.weight": model.head.weight,
            "head.bias": model.head.bias,
        }

    def _probe_sample(self, config: dict[str, Any], sample: int) -> np.ndarray:
        """One sanitised probe gradient on a batch of this client's own training texts."""
        options, scenario = config["fedmosaic"], self.session.scenario
        spec = probe_spec(scenario.models, str(options["probe"]))
        probe = cached_backbone(spec, scenario.seed)  # read-only memo: frozen, never trained
        check_probe(probe)
        examples = task_examples(
            scenario, self.session.profile.task, "train", self.session.profile, spec.tokenizer_source
        )
        seed = self.round_seed(config, f"probe-{sample}")
        batch = next(iterate_batches(examples, self.session.batch_size, shuffle=True, seed=seed))
        ids, mask, target = batch["input_ids"], batch["attention_mask"], None
        if options["loss"] == "answer":  # the paper's answer tokens: prompt = text, answer = the label's word
            tokenizer = load_tokenizer(spec.tokenizer_source)
            words = label_names(scenario, self.session.profile.task)
            answers = [verbalised_label(tokenizer, words[int(label)]) for label in batch["labels"]]
            ids, mask, target = append_answers(ids, mask, answers, int(tokenizer.pad_token_id))
        gradient = down_projection_gradient(probe, ids, mask, target).numpy()
        rows = probe_rows(int(options["seed"]), gradient.shape[0], float(options["fraction"]))
        return sanitize(gradient, rows, float(options["sigma"]), np.random.default_rng(seed))


def verbalised_label(tokenizer: Any, label: str) -> list[int]:
    """The answer tokens of a class label: its name as a word after the text (``sci_tech`` -> " sci tech")."""
    return list(tokenizer(" " + label.replace("_", " "), add_special_tokens=False)["input_ids"])


def _optimizer_arrays(optimizer: torch.optim.Optimizer, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AdamW's per-tensor state (``step``, ``exp_avg``, ``exp_avg_sq``) under ``{tensor name}/{key}``."""
    arrays = {}
    for name, tensor in named.items():
        for key, value in optimizer.state.get(tensor, {}).items():
            arrays[f"{name}/{key}"] = (
                torch.as_tensor(value).detach().float().reshape(-1 if key == "step" else value.shape)
            )
    return arrays


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, named: dict[str, torch.Tensor], arrays: dict[str, np.ndarray]
) -> None:
    """Adam's moments and step count from the last round (the code keeps the optimizer state across rounds)."""
    for name, tensor in named.items():
        keys = ("step", "exp_avg", "exp_avg_sq")
        if all(f"{name}/{key}" in arrays for key in keys):
            state = {key: torch.as_tensor(arrays[f"{name}/{key}"]) for key in keys}
            if state["exp_avg"].shape == tensor.shape:
                state["step"] = state["step"].reshape(())
                optimizer.state[tensor] = state
