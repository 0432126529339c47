"""Device profile -> this client's session: its scenario, profile, placement, model and data.

A session is derived from ``run_config`` and ``node_config`` alone, so every message (a fresh process in
deployment) rebuilds the same one. It holds no state that a message changes: what must last between messages
lives in the state handle (:mod:`fedbrick_flower.clients.state`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..adapters.base import AdapterKind, combined_schema, kind_class
from ..adapters.lora import LoraKind, LoraSettings, adapter_tensors
from ..adapters.naming import parse_layer_tensor_name
from ..assembly import (
    LayerFillerFactory,
    build_network,
    cached_config,
    scenario_lora,
    split_files,
    task_examples,
    task_split,
)
from ..cache import file_memo
from ..client_info import ClientInfo
from ..data import EncodedExamples, label_mismatch, local_labels, task_labels
from ..models import (
    ModelDims,
    ModelSpec,
    family_of,
    model_dims,
    model_family,
    resolve_device,
    resolve_dtype,
    resolve_roles,
)
from ..models.placement import cpu_autocast_dtype
from ..objectives import TaskObjective, task_objective
from ..runconfig import scenario_from_run_config
from ..scenario import ClientProfile, Scenario, ScenarioError, parse_profile


def resolve_profile(scenario: Scenario, node_config: dict[str, Any]) -> ClientProfile:
    """Find this node's profile: ``profile`` (a YAML path), ``client-id``, or ``partition-id`` (simulation)."""
    if "profile" in node_config:
        path = Path(str(node_config["profile"]))
        if not path.is_file():
            raise ScenarioError(f"node_config.profile: file {str(path)!r} does not exist")
        # Errors name the profile by its id, never by its path: they reach the server, the path is the device's.
        profile = _anchored(parse_profile(yaml.safe_load(path.read_text()), where="profile"), path.parent)
        scenario_models, scenario_tasks = scenario.models, scenario.tasks
        if profile.model not in scenario_models or profile.task not in scenario_tasks:
            raise ScenarioError(
                f"profile {profile.id}: model {profile.model!r} / task {profile.task!r} must be among the scenario's "
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


def _anchored(profile: ClientProfile, folder: Path) -> ClientProfile:
    """The profile with its data file paths read relative to the profile file's folder."""
    paths = {name: getattr(profile, name) for name in ("train", "test") if getattr(profile, name) is not None}
    return dataclasses.replace(profile, **{name: str(folder / path) for name, path in paths.items()})


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
        """The scenario's LoRA settings with this profile's own rank."""
        return scenario_lora(self.scenario, self.profile.rank)

    @property
    def dims(self) -> ModelDims:
        """The model's sizes, from its config alone (no weights are loaded)."""
        return model_dims(cached_config(self.spec))

    @property
    def batch_size(self) -> int:
        return self.profile.batch_size or self.scenario.train.batch_size

    @property
    def full_depth(self) -> int:
        return self.dims.num_layers

    @property
    def width(self) -> int:
        """The model's hidden size d."""
        return self.dims.hidden_size

    @property
    def budget(self) -> int:
        """How many layers this device holds (its whole depth when the profile gives none)."""
        layers, depth = self.profile.layers, self.full_depth
        held = len(layers) if isinstance(layers, tuple) else (layers or depth)
        if held > depth or (isinstance(layers, tuple) and max(layers) >= depth):
            raise ScenarioError(f"profile {self.profile.id}.layers: {layers} exceeds the {depth} layers of its model")
        return held

    @property
    def objective(self) -> TaskObjective:
        """The task's encoding, network, loss and scoring (classification or generative)."""
        return task_objective(self.scenario, self.profile.task, self.spec.tokenizer_source)

    def examples(self, part: str) -> EncodedExamples:
        """This client's ``train`` or ``test`` examples."""
        return task_examples(self.scenario, self.profile.task, part, self.profile, self.spec.tokenizer_source)

    def data_report(self) -> dict[str, Any]:
        """Counts and the label set of this client's data, never its examples (part of :meth:`describe`).

        ``labels`` are the distinct labels of the device's own files as written, so that the server can refuse
        a device whose labels do not fit the task (:func:`fedbrick_flower.data.label_mismatch`); a client that
        trains on a share of the task's data reports the labels of its share. None for an unlabelled task. A
        device whose labels do not fit reports no counts: its examples cannot be encoded with the task's ids.
        """
        profile, spec = self.profile, self.scenario.tasks[self.profile.task]
        expected = task_labels(spec)
        labels = local_labels(spec, profile.train, profile.test) if profile.train is not None else self._share_labels()
        report: dict[str, Any] = {
            "labels": list(labels) if labels is not None else None,
            "own_data": bool(profile.train),
        }
        if label_mismatch(expected, labels) is not None:
            return {**report, "num_train_examples": 0, "num_test_examples": 0, "num_truncated": 0, "num_dropped": 0}
        train, test = self.examples("train"), self.examples("test")
        return {
            **report,
            "num_train_examples": len(train),
            "num_test_examples": len(test),
            "num_truncated": train.truncated + test.truncated,
            "num_dropped": train.dropped + test.dropped,
        }

    def _share_labels(self) -> tuple[str, ...] | None:
        """The task's label names present in this client's share (train and test), in class-id order."""
        parts = [task_split(self.scenario, self.profile.task, part, self.profile) for part in ("train", "test")]
        if parts[0].labels is None:
            return None
        present = {label for part in parts for label in part.labels or ()}
        return tuple(name for index, name in enumerate(parts[0].label_names) if index in present)

    def build(
        self, layers: list[int], filler: LayerFillerFactory | None = None, kind: AdapterKind | None = None
    ) -> nn.Module:
        """The client's network for this round, placed on its device (adapters and head stay fp32).

        ``kind`` replaces LoRA by another adapter kind (see :func:`~fedbrick_flower.assembly.build_network`).
        """
        model = build_network(self.scenario, self.profile.model, self.profile.task, layers, self.lora, filler, kind)
        # bf16 on a CPU: fp32 weights under bf16 autocast; elsewhere the frozen weights take the dtype itself.
        model.autocast_dtype = cpu_autocast_dtype(self.dtype, self.device)
        model.backbone.to(device=self.device, dtype=self.dtype if model.autocast_dtype is None else torch.float32)
        adapters = adapter_tensors(model, model_family(model.backbone))
        if kind is not None:
            adapters.update(kind.tensors(model.backbone))
        for name, tensor in adapters.items():
            tensor.data = tensor.data.float()
            if self.scenario.train.freeze_lora and not name.startswith("head."):
                tensor.requires_grad_(False)  # linear probe: the optimizer sees the head only
        return model.to(self.device)

    def kinds(self, names: Sequence[str]) -> list[AdapterKind]:
        """The adapter kinds ``names`` with this client's settings (LoRA: its rank, alpha and roles; any other
        kind: its settings' defaults, since an algorithm sends those per round)."""
        return [LoraKind(self.lora) if name == "lora" else kind_class(name)() for name in names]

    def describe(self, adapter_kinds: Sequence[str] = ("lora",)) -> ClientInfo:
        """This client's ``query`` reply (:class:`~fedbrick_flower.client_info.ClientInfo`; it travels as JSON).

        Shapes come from the model config and the kinds' schemas, without building a model: ``layer_schema`` is
        one layer's per-layer adapter tensors (names ``layers.{g}.*`` with ``layers.{g}.`` dropped; LoRA's for
        the default kind), ``head_schema`` the task head's. The sizes, rank, alpha, roles and kinds let a server
        compute any registered kind's schema for this client (``records.declared_schema``).

        Parameters
        ----------
        adapter_kinds : Sequence[str] (default: ("lora",))
            The registered adapter kinds this client's algorithm trains.
        """
        layers = self.profile.layers
        dims, lora = self.dims, self.lora
        roles = resolve_roles(lora.roles, family_of(dims.model_type))
        one_layer = combined_schema(self.kinds(adapter_kinds), dims, [0], roles)
        layer_schema: dict[str, list[int]] = {}
        for name, shape in one_layer.items():
            parsed = parse_layer_tensor_name(name)
            if parsed is not None:
                layer_schema[f"{parsed[1]}.{parsed[2]}"] = list(shape)
        data = self.data_report()
        return ClientInfo(
            client_id=self.profile.id,
            model=self.profile.model,
            task=self.profile.task,
            group=self.profile.domain,
            model_type=dims.model_type,
            num_layers=dims.num_layers,
            hidden_size=dims.hidden_size,
            intermediate_size=dims.intermediate_size,
            num_heads=dims.num_heads,
            num_kv_heads=dims.num_kv_heads,
            head_dim=dims.head_dim,
            rank=lora.rank,
            alpha=lora.alpha,
            roles=list(roles),
            adapter_kinds=list(adapter_kinds),
            budget=self.budget,
            fixed_layers=list(layers) if isinstance(layers, tuple) else None,
            layer_schema=layer_schema,
            head_schema={name: list(shape) for name, shape in self.objective.head_schema(dims.hidden_size).items()},
            num_train_examples=data.pop("num_train_examples"),
            extra=data,
        )


def session_files(scenario: Scenario, profile: ClientProfile) -> tuple[str | None, ...]:
    """The local files a session reads: its task's data, the profile's own files, its model's folders."""
    return (*split_files(scenario, profile.task, profile), *scenario.models[profile.model].files)


@file_memo(maxsize=32, files=session_files)
def client_session(scenario: Scenario, profile: ClientProfile) -> ClientSession:
    """One session per (scenario, profile) and process (and version of the files it reads)."""
    return ClientSession(scenario, profile)


def session_for(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> ClientSession:
    """This node's session: the scenario from Flower's ``run_config``, the profile from its ``node_config``."""
    scenario = scenario_from_run_config(run_config)
    return client_session(scenario, resolve_profile(scenario, dict(node_config)))
