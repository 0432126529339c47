"""Model and data assembly shared by both halves: scenario + task -> examples, scenario + layers -> network.

The server (global evaluation, FedBRICK's teacher and proxy data) and the clients build their networks and
read their splits through these functions, so ``strategies/`` never imports ``clients/``. The memos below hold
read-only values that every process derives identically from the scenario (pretrained weights, tokenized
splits); they are caches of pure functions, never state that a message could change.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from torch import nn

from .adapters.lora import LoraSettings, adapter_tensors, attach_lora, load_adapter_tensors, rank_of
from .data import EncodedExamples, encode_examples, load_task, select, split_federated
from .models import (
    ModelSpec,
    SequenceClassifier,
    keep_layers,
    load_backbone,
    load_tokenizer,
    model_family,
    num_layers,
    stable_seed,
)
from .scenario import Scenario, ScenarioError

LayerFillerFactory = Callable[[int], nn.Module]


@functools.lru_cache(maxsize=4)
def cached_backbone(spec: ModelSpec, seed: int) -> nn.Module:
    """The full-depth base model, loaded once per process and never modified (callers deep-copy it).

    A read-only memo of deterministic weights, not state: a fresh process rebuilds exactly the same model.
    """
    return load_backbone(spec, seed)


@functools.lru_cache(maxsize=16)
def task_examples(
    scenario: Scenario, task: str, part: str, client_id: str | None, tokenizer_source: str
) -> EncodedExamples:
    """Encoded examples of one split of a task: ``proxy`` / ``server_test`` or a client's ``train`` / ``test``.

    Every process computes the same deterministic split from the scenario, so no data ever travels.
    """
    spec = scenario.tasks[task]
    dataset = load_task(spec.dataset)
    settings = scenario.data
    split = split_federated(
        dataset,
        scenario.clients_of_task(task) or ["server-only"],
        seed=scenario.seed,
        proxy_fraction=settings.proxy_fraction,
        server_test_fraction=settings.server_test_fraction,
        client_test_fraction=settings.client_test_fraction,
        partition=settings.partition,
        dirichlet_alpha=settings.dirichlet_alpha,
        max_examples=spec.max_examples,
    )
    indices = getattr(split.clients[client_id], part) if client_id is not None else getattr(split, part)
    texts, labels = select(dataset, indices)
    return encode_examples(load_tokenizer(tokenizer_source), texts, labels, settings.max_length)


def num_labels(scenario: Scenario, task: str) -> int:
    return load_task(scenario.tasks[task].dataset).num_labels


def build_classifier(
    scenario: Scenario,
    model_key: str,
    task: str,
    layers: list[int] | None,
    lora: LoraSettings,
    filler: LayerFillerFactory | None = None,
) -> SequenceClassifier:
    """A fresh classifier: the cached base, truncated to ``layers`` (None: full depth), LoRA and a seeded head.

    LoRA factors and head are initialised from seeds shared by every process, so clients that never received
    a tensor still agree on its starting value.
    """
    spec = scenario.models[model_key]
    backbone = copy.deepcopy(cached_backbone(spec, scenario.seed))
    family = model_family(backbone)
    depth = num_layers(backbone)
    if layers is not None:
        if max(layers) >= depth:
            raise ScenarioError(f"layers: {layers} exceed the {depth} layers of model {model_key!r}")
        keep_layers(backbone, family, layers, filler)
    attach_lora(backbone, family, lora, stable_seed(scenario.seed, model_key, "lora"))
    model = SequenceClassifier(backbone, num_labels(scenario, task))
    model.reset_head(stable_seed(scenario.seed, model_key, task, "head"))
    return model


def build_global_model(
    scenario: Scenario, model_key: str, task: str, tensors: Mapping[str, Any], device: Any
) -> SequenceClassifier:
    """The full-depth model of ``model_key`` with global adapters loaded, for server-side evaluation and teachers.

    Layers the federation never trained are absent from ``tensors`` and keep their seeded initial LoRA (B = 0).
    """
    defaults = scenario.lora
    lora = LoraSettings(rank=rank_of(tensors, defaults.rank), alpha=defaults.alpha, dropout=defaults.dropout)
    model = build_classifier(scenario, model_key, task, None, lora).to(device)
    load_adapter_tensors(model, model_family(model.backbone), tensors)
    return model


def initial_adapters(scenario: Scenario, model_key: str, task: str, lora: LoraSettings) -> dict[str, np.ndarray]:
    """The adapters every client of ``(model_key, task)`` with these LoRA settings starts from, at full depth.

    The same seeds as :func:`build_classifier` (LoRA A per layer and module, B = 0, head per task), so a server
    that keeps per-client adapters (FedBip's personalized sets) starts them where the clients would.
    """
    model = build_classifier(scenario, model_key, task, None, lora)
    tensors = adapter_tensors(model, model_family(model.backbone))
    return {name: tensor.detach().cpu().float().numpy().copy() for name, tensor in tensors.items()}
