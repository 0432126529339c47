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

from .adapters.base import AdapterKind
from .adapters.lora import LoraSettings, adapter_tensors, attach_lora, load_adapter_tensors, with_ranks_of
from .cache import file_memo
from .data import (
    EncodedExamples,
    FileStamp,
    TextDataset,
    local_dataset,
    split_federated,
    split_local,
    task_dataset,
    task_files,
    task_labels,
)
from .data.sources import file_stamp, spec_stamps
from .models import ModelSpec, keep_layers, load_backbone, load_config, model_family, num_layers, stable_seed
from .objectives import task_objective
from .scenario import ClientProfile, Scenario, ScenarioError

LayerFillerFactory = Callable[[int], nn.Module]


@file_memo(maxsize=4, files=lambda spec, seed: spec.files)
def cached_backbone(spec: ModelSpec, seed: int) -> nn.Module:
    """The full-depth base model, loaded once per process and never modified (callers deep-copy it).

    A read-only memo of deterministic weights, not state: a fresh process rebuilds exactly the same model.
    """
    return load_backbone(spec, seed)


@file_memo(maxsize=8, files=lambda spec: spec.files)
def cached_config(spec: ModelSpec) -> Any:
    """The model's Hugging Face config, read once per process without loading weights (never modified)."""
    return load_config(spec)


def split_files(scenario: Scenario, task: str, client: ClientProfile | None) -> tuple[str | None, ...]:
    """The local files a split of ``task`` may read: the task's own, and the client's when it names its own."""
    own = (client.train, client.test) if client is not None else ()
    return (*task_files(scenario.tasks[task]), *own)


def data_stamps(scenario: Scenario, task: str, client: ClientProfile | None) -> tuple[FileStamp, ...]:
    """Stamps of the files a split of ``task`` reads: the task's own and, for a client, its device files."""
    own = (file_stamp(client.train), file_stamp(client.test)) if client is not None else ()
    return (*spec_stamps(scenario.tasks[task]), *own)


def task_split(scenario: Scenario, task: str, part: str, client: ClientProfile | None) -> TextDataset:
    """The examples of one split of a task: ``proxy`` / ``server_test`` / ``server_validation`` (``client`` None)
    or a client's ``train`` / ``test`` / ``validation`` (``data.validation_fraction`` of its training data).

    Every process computes the same deterministic split from the scenario, so no data ever travels. A client
    whose profile names its own files (``train``, ``test``) reads only those; the task's data is partitioned
    over its other clients.
    """
    return _task_split(scenario, task, part, client, data_stamps(scenario, task, client))


# Sized for every split a Ray worker may serve in one run: each client's train and test, the server's parts.
@functools.lru_cache(maxsize=64)
def _task_split(
    scenario: Scenario, task: str, part: str, client: ClientProfile | None, stamps: tuple[FileStamp, ...]
) -> TextDataset:
    spec = scenario.tasks[task]
    settings = scenario.data
    if client is not None and client.train is not None:
        dataset, num_test = local_dataset(task, spec, client.train, client.test)
        split = split_local(
            dataset,
            client.id,
            seed=scenario.seed,
            test_fraction=settings.client_test_fraction,
            num_test=num_test,
            validation_fraction=settings.validation_fraction,
        )
        return dataset.subset(getattr(split, part))
    if not spec.sources:
        # The task's data lives on the devices only: the server holds no proxy or test examples of it.
        return TextDataset(task, (), () if spec.kind == "classification" else None, task_labels(spec) or ())
    dataset, test_indices = task_dataset(task, spec)
    sharing = [cid for cid in scenario.clients_of_task(task) if scenario.client(cid).train is None]
    split = split_federated(
        dataset,
        sharing or ["server-only"],
        seed=scenario.seed,
        proxy_fraction=settings.proxy_fraction,
        server_test_fraction=settings.server_test_fraction,
        client_test_fraction=settings.client_test_fraction,
        partition=settings.partition,
        partition_params=settings.partitioner_params(),
        max_examples=spec.max_examples,
        test_indices=test_indices,
        validation_fraction=settings.validation_fraction,
    )
    indices = getattr(split.clients[client.id], part) if client is not None else getattr(split, part)
    return dataset.subset(indices)


def task_examples(
    scenario: Scenario, task: str, part: str, client: ClientProfile | None, tokenizer_source: str
) -> EncodedExamples:
    """Encoded examples of :func:`task_split`, cut or dropped at ``data.max_length`` as ``data.overlong`` says.

    Encoded by the task's objective: class labels, or response-masked prompt -> response pairs.
    """
    return _task_examples(scenario, task, part, client, tokenizer_source, data_stamps(scenario, task, client))


@functools.lru_cache(maxsize=64)
def _task_examples(
    scenario: Scenario,
    task: str,
    part: str,
    client: ClientProfile | None,
    tokenizer_source: str,
    stamps: tuple[FileStamp, ...],
) -> EncodedExamples:
    rows = _task_split(scenario, task, part, client, stamps)
    what = f"task {task}, {client.id if client is not None else 'server'}, {part}"
    return task_objective(scenario, task, tokenizer_source).encode(rows, what)


def label_names(scenario: Scenario, task: str) -> tuple[str, ...]:
    """The task's class names in class-id order (declared, packaged, or found in the task's data)."""
    return task_labels(scenario.tasks[task]) or ()


def scenario_lora(scenario: Scenario, rank: int | None = None) -> LoraSettings:
    """The scenario's LoRA settings (``lora.*``), with a client's own ``rank`` where its profile gives one."""
    defaults = scenario.lora
    return LoraSettings(
        rank=rank or defaults.rank, alpha=defaults.alpha, dropout=defaults.dropout, roles=defaults.roles
    )


def build_network(
    scenario: Scenario,
    model_key: str,
    task: str,
    layers: list[int] | None,
    lora: LoraSettings | None,
    filler: LayerFillerFactory | None = None,
    kind: AdapterKind | None = None,
) -> nn.Module:
    """A fresh network: the cached base, truncated to ``layers`` (None: full depth), its adapters and the task's output.

    The output follows the task's kind (:mod:`~fedbrick_flower.objectives`): a seeded classification head, or the
    frozen LM head of a generative task. LoRA factors and heads are initialised from seeds shared by every
    process, so clients that never received a tensor still agree on its starting value. ``kind`` injects another
    adapter kind instead of LoRA (on ``lora.roles``, with the same seed: H2Tune's triple matrices); ``lora=None``
    and no ``kind`` leave the backbone bare for an algorithm that injects its adapters itself (FedMosaic's Co-LoRA).
    """
    spec = scenario.models[model_key]
    backbone = copy.deepcopy(cached_backbone(spec, scenario.seed))
    family = model_family(backbone)
    depth = num_layers(backbone)
    if layers is not None:
        if max(layers) >= depth:
            raise ScenarioError(f"layers: {layers} exceed the {depth} layers of model {model_key!r}")
        keep_layers(backbone, family, layers, filler)
    seed = stable_seed(scenario.seed, model_key, "lora")
    if kind is not None:
        kind.inject(backbone, family, None, lora.roles, seed)
    elif lora is not None:
        attach_lora(backbone, family, lora, seed)
    return task_objective(scenario, task, spec.tokenizer_source).network(backbone, spec)


def build_global_model(
    scenario: Scenario, model_key: str, task: str, tensors: Mapping[str, Any], device: Any
) -> nn.Module:
    """The full-depth model of ``model_key`` with global adapters loaded, for server-side evaluation and teachers.

    Each layer's LoRA rank is the rank of the tensors held for it (clients of ranks 2 and 8 may hold different
    layers). Layers the federation never trained are absent from ``tensors`` and keep their seeded initial LoRA
    (B = 0) at the scenario's rank.
    """
    lora = with_ranks_of(scenario_lora(scenario), tensors)
    model = build_network(scenario, model_key, task, None, lora).to(device)
    load_adapter_tensors(model, model_family(model.backbone), tensors)
    return model


def initial_adapters(scenario: Scenario, model_key: str, task: str, lora: LoraSettings) -> dict[str, np.ndarray]:
    """The adapters every client of ``(model_key, task)`` with these LoRA settings starts from, at full depth.

    The same seeds as :func:`build_network` (LoRA A per layer and module, B = 0, head per task), so a server
    that keeps per-client adapters (FedBip's personalized sets) starts them where the clients would.
    """
    model = build_network(scenario, model_key, task, None, lora)
    tensors = adapter_tensors(model, model_family(model.backbone))
    return {name: tensor.detach().cpu().float().numpy().copy() for name, tensor in tensors.items()}


@functools.lru_cache(maxsize=16)
def seeded_start(scenario: Scenario, model_key: str, task: str, rank: int | None = None) -> Mapping[str, np.ndarray]:
    """:func:`initial_adapters` at the scenario's LoRA settings and a client's ``rank``: what a client of
    ``(model_key, task)`` starts every tensor from before anything is sent to it (the reference of its first
    update under differential privacy). A memo of a pure function: its arrays are read-only."""
    tensors = initial_adapters(scenario, model_key, task, scenario_lora(scenario, rank))
    for value in tensors.values():
        value.setflags(write=False)
    return tensors
