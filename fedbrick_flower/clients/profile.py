"""Device profile -> this client's model, data and placement.

In deployment every Flower message starts a fresh ClientApp process, and in simulation Ray reuses actor
processes across partitions, so everything loaded here is cached per process and keyed by the client.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..adapters.lora import LoraSettings, adapter_tensors, attach_lora, load_adapter_tensors, rank_of
from ..data import EncodedExamples, encode_examples, load_task, select, split_federated
from ..models import (
    ModelSpec,
    SequenceClassifier,
    hidden_size,
    keep_layers,
    load_backbone,
    load_tokenizer,
    model_family,
    num_layers,
    resolve_device,
    resolve_dtype,
    stable_seed,
)
from ..runconfig import scenario_from_run_config
from ..scenario import ClientProfile, Scenario, ScenarioError, parse_profile

LayerFillerFactory = Callable[[int], nn.Module]


def resolve_profile(scenario: Scenario, node_config: dict[str, Any]) -> ClientProfile:
    """Find this node's profile: ``profile`` (a YAML path), ``client-id``, or ``partition-id`` (simulation)."""
    if "profile" in node_config:
        path = Path(str(node_config["profile"]))
        if not path.is_file():
            raise ScenarioError(f"node_config.profile: file {str(path)!r} does not exist")
        profile = parse_profile(yaml.safe_load(path.read_text()), where=f"profile {path}")
        scenario_models, scenario_tasks = scenario.models, scenario.tasks
        if profile.model not in scenario_models or profile.task not in scenario_tasks:
            raise ScenarioError(
                f"profile {path}: model {profile.model!r} / task {profile.task!r} must be among the scenario's "
                f"models {sorted(scenario_models)} and tasks {sorted(scenario_tasks)}"
            )
        return profile
    if "client-id" in node_config:
        return scenario.client(str(node_config["client-id"]))
    if "partition-id" in node_config:
        index = int(node_config["partition-id"])
        if not 0 <= index < len(scenario.clients):
            raise ScenarioError(f"node_config.partition-id: {index} is outside 0..{len(scenario.clients) - 1}")
        return scenario.clients[index]
    raise ScenarioError("node_config: give one of 'profile', 'client-id' or 'partition-id'")


@functools.lru_cache(maxsize=4)
def _cached_backbone(spec: ModelSpec, seed: int) -> nn.Module:
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
    backbone = copy.deepcopy(_cached_backbone(spec, scenario.seed))
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


@dataclass(frozen=True)
class ClientSession:
    """Everything one client needs across messages: scenario, profile, placement, data."""

    scenario: Scenario
    profile: ClientProfile

    @property
    def spec(self) -> ModelSpec:
        return self.scenario.models[self.profile.model]

    @functools.cached_property
    def device(self):  # noqa: ANN201 - torch.device
        return resolve_device(self.profile.device)

    @functools.cached_property
    def dtype(self):  # noqa: ANN201 - torch.dtype
        return resolve_dtype(self.profile.dtype, self.device)

    @property
    def lora(self) -> LoraSettings:
        defaults = self.scenario.lora
        return LoraSettings(rank=self.profile.rank or defaults.rank, alpha=defaults.alpha, dropout=defaults.dropout)

    @property
    def batch_size(self) -> int:
        return self.profile.batch_size or self.scenario.train.batch_size

    @property
    def full_depth(self) -> int:
        return num_layers(_cached_backbone(self.spec, self.scenario.seed))

    @property
    def width(self) -> int:
        """The model's hidden size d."""
        return hidden_size(_cached_backbone(self.spec, self.scenario.seed))

    @property
    def budget(self) -> int:
        """How many layers this device holds (its whole depth when the profile gives none)."""
        layers, depth = self.profile.layers, self.full_depth
        held = len(layers) if isinstance(layers, tuple) else (layers or depth)
        if held > depth or (isinstance(layers, tuple) and max(layers) >= depth):
            raise ScenarioError(f"profile {self.profile.id}.layers: {layers} exceeds the {depth} layers of its model")
        return held

    def examples(self, part: str) -> EncodedExamples:
        """This client's ``train`` or ``test`` examples."""
        return task_examples(self.scenario, self.profile.task, part, self.profile.id, self.spec.tokenizer_source)

    def build(self, layers: list[int], filler: LayerFillerFactory | None = None) -> SequenceClassifier:
        """The client's network for this round, placed on its device (LoRA and head stay fp32)."""
        model = build_classifier(self.scenario, self.profile.model, self.profile.task, layers, self.lora, filler)
        model.backbone.to(device=self.device, dtype=self.dtype)
        for tensor in adapter_tensors(model, model_family(model.backbone)).values():
            tensor.data = tensor.data.float()
        return model.to(self.device)

    def describe(self) -> dict[str, Any]:
        """The profile fields of the ``query`` reply (see ``strategies.base.ClientInfo``)."""
        layers = self.profile.layers
        depth = self.full_depth
        probe = self.build([0])
        family = model_family(probe.backbone)
        tensors = adapter_tensors(probe, family)
        layer_schema = {
            name.split(".", 2)[2]: list(value.shape) for name, value in tensors.items() if name.startswith("layers.0.")
        }
        head_schema = {name: list(value.shape) for name, value in tensors.items() if name.startswith("head.")}
        return {
            "client_id": self.profile.id,
            "model": self.profile.model,
            "task": self.profile.task,
            "group": self.profile.domain,
            "model_type": family.name,
            "num_layers": depth,
            "budget": self.budget,
            "fixed_layers": list(layers) if isinstance(layers, tuple) else None,
            "layer_schema": layer_schema,
            "head_schema": head_schema,
            "num_train_examples": len(self.examples("train")),
        }


@functools.lru_cache(maxsize=32)
def client_session(scenario: Scenario, profile: ClientProfile) -> ClientSession:
    """One session per (scenario, profile) and process."""
    return ClientSession(scenario, profile)


def session_for(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> ClientSession:
    """This node's session: the scenario from Flower's ``run_config``, the profile from its ``node_config``."""
    scenario = scenario_from_run_config(run_config)
    return client_session(scenario, resolve_profile(scenario, dict(node_config)))
