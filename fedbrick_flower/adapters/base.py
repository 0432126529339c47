"""Adapter kinds: one small interface that every kind implements, shaped like a PEFT tuner, and their registry.

A kind (LoRA, BRICK, and later Co-LoRA, the triple-matrix LoRA...) is a settings dataclass plus four verbs:

- :meth:`AdapterKind.inject` puts the kind's modules into a backbone, for given GLOBAL layers and module roles;
- :meth:`AdapterKind.tensors` returns its trainable tensors under canonical names (the names alone say where a
  tensor belongs, the way PEFT's parameter prefixes do), and :meth:`AdapterKind.load` copies values back;
- :meth:`AdapterKind.schema` gives those names and shapes from the model config alone, without building a model,
  so a client can declare what it will send and a server can check it.

Kinds are found by name through import paths (like the algorithm registry), so a process imports only the kinds
it uses. No Flower imports.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..models.families import FamilySpec, ModelDims, model_dims

if TYPE_CHECKING:
    import torch
    from torch import nn

Shape = tuple[int, ...]


class AdapterKind(ABC):
    """One adapter kind with its settings; subclasses set ``name`` and ``settings_class``.

    Parameters
    ----------
    settings : object, optional
        An instance of ``settings_class`` (its defaults when omitted).

    Raises
    ------
    TypeError
        If ``settings`` is not an instance of ``settings_class``.
    """

    name: ClassVar[str]
    settings_class: ClassVar[type]

    def __init__(self, settings: Any = None) -> None:
        settings = self.settings_class() if settings is None else settings
        if not isinstance(settings, self.settings_class):
            raise TypeError(
                f"adapter kind {self.name!r} takes {self.settings_class.__name__}, got {type(settings).__name__}"
            )
        self.settings = settings

    @abstractmethod
    def inject(
        self, backbone: nn.Module, family: FamilySpec, layers: Iterable[int] | None, roles: Sequence[str], seed: int
    ) -> nn.Module:
        """Add this kind's modules to ``backbone`` in place, on the GLOBAL ``layers`` (None: every layer the
        backbone holds) and the projections of ``roles``; initialise them from ``seed`` (per global layer, so
        clients holding different layer subsets agree on the layers they share). Returns ``backbone``."""

    @abstractmethod
    def tensors(self, backbone: nn.Module) -> dict[str, torch.Tensor]:
        """This kind's trainable tensors in ``backbone`` under canonical names (views, not copies)."""

    def load(self, backbone: nn.Module, values: Mapping[str, Any]) -> None:
        """Copy canonical-named values into ``backbone``; an unknown name or a wrong shape raises ``KeyError``."""
        load_named(self.tensors(backbone), values, self.name)

    @abstractmethod
    def schema(self, model_config: Any, layers: Iterable[int], roles: Sequence[str]) -> dict[str, Shape]:
        """Canonical names and shapes this kind has on ``layers`` and ``roles``, from the config alone.

        ``model_config`` is a Hugging Face config or a :class:`~fedbrick_flower.models.families.ModelDims`.
        """

    @staticmethod
    def dims(model_config: Any) -> ModelDims:
        return model_dims(model_config)


def load_named(targets: Mapping[str, torch.Tensor], values: Mapping[str, Any], what: str = "adapter") -> None:
    """Copy ``values`` into the same-named ``targets`` (any dtype and device), checking names and shapes first.

    Raises
    ------
    KeyError
        Naming the first tensor that ``targets`` lacks or whose shape differs; nothing is copied then.
    """
    import torch

    prepared = []
    for name, value in values.items():
        if name not in targets:
            raise KeyError(f"{what} tensor {name!r} does not exist in this model")
        tensor = torch.as_tensor(np.asarray(value))
        target = targets[name]
        if tuple(tensor.shape) != tuple(target.shape):
            raise KeyError(f"{what} tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
        prepared.append((target, tensor))
    with torch.no_grad():
        for target, tensor in prepared:
            target.copy_(tensor.to(dtype=target.dtype, device=target.device))


def combined_schema(
    kinds: Sequence[AdapterKind],
    model_config: Any,
    layers: Iterable[int],
    roles: Sequence[str],
    kind_layers: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, Shape]:
    """The union of the kinds' schemas on ``layers`` (or a kind's own ``kind_layers[name]``).

    Raises
    ------
    ValueError
        Naming the tensor and both kinds when two kinds declare the same name.
    """
    layers, kind_layers = list(layers), dict(kind_layers or {})
    combined: dict[str, Shape] = {}
    owner: dict[str, str] = {}
    for kind in kinds:
        for name, shape in kind.schema(model_config, list(kind_layers.get(kind.name, layers)), roles).items():
            if name in combined:
                raise ValueError(f"adapter kinds {owner[name]!r} and {kind.name!r} both declare tensor {name!r}")
            combined[name], owner[name] = tuple(shape), kind.name
    return combined


# ---------------------------------------------------------------------------------------------------- registry
_KINDS: dict[str, str] = {
    "lora": "fedbrick_flower.adapters.lora:LoraKind",
    "brick": "fedbrick_flower.adapters.brick:BrickKind",
    "colora": "fedbrick_flower.adapters.colora:ColoraKind",
    "triple": "fedbrick_flower.adapters.triple:TripleKind",
}


def register_kind(name: str, path: str) -> None:
    """Add an adapter kind (``module:Class``, e.g. from a plug-in package); re-registering a name is an error."""
    if name in _KINDS:
        raise ValueError(f"adapter kind {name!r} is already registered")
    if ":" not in path:
        raise ValueError(f"adapter kind {name!r}: {path!r} is not a 'module:Class' import path")
    _KINDS[name] = path


def kind_names() -> list[str]:
    return sorted(_KINDS)


def kind_class(name: str) -> type[AdapterKind]:
    """The class of a registered adapter kind.

    Raises
    ------
    ValueError
        If no kind of that name is registered; the message lists the known kinds.
    """
    try:
        path = _KINDS[name]
    except KeyError:
        raise ValueError(f"adapter kind {name!r} is not one of {kind_names()}") from None
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def make_kind(name: str, **settings: Any) -> AdapterKind:
    """An instance of kind ``name`` with its settings dataclass built from ``settings``."""
    cls = kind_class(name)
    return cls(cls.settings_class(**settings))
