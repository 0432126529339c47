"""The vector a client masks under secure aggregation: its update padded to the union of the round's tensors.

Clients of a heterogeneous federation hold different tensors (depths, models, tasks), but SecAgg+ sums vectors
of one shape. So the server sends every client the same ordered list of slots, the union of the tensors the
round's clients return, each with its size, and for each slot the name of the client's own tensor that fills
it ("" for a slot the client does not hold). The client packs two vectors:

- ``values``: its tensors, flattened in slot order, zeros in the slots it does not hold;
- ``holders``: one entry per slot, 1.0 where it holds the slot.

SecAgg+ scales both by the client's weight (its training-set size over the round's largest) before masking, so
the sums the server unmasks are ``sum_i w_i x_i`` and ``sum_i w_i h_i`` and their ratio, slot by slot, is the
weighted mean over each tensor's holders: the layer-wise FedAvg of :func:`~.strategies.aggregation.layerwise_average`.

Pure NumPy, no Flower and no torch: the client's mod and the server's strategy both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LAYOUT_KEY = "secure-layout"  # config record of a masked training message: the slots and this client's names
SLOT_NAMES = "names"
SLOT_SIZES = "sizes"
CLIPPING_RANGE = "clipping-range"


class OutOfRange(ValueError):
    """A value the client would mask is non-finite or beyond the quantisation's clipping range."""


@dataclass(frozen=True)
class Layout:
    """The round's slots: the union of the tensors its clients return, each under its aggregation key.

    Attributes
    ----------
    keys : tuple[str, ...]
        The aggregation keys (server-state names), sorted.
    shapes : Mapping[str, tuple[int, ...]]
        Each key's shape.
    """

    keys: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]

    @classmethod
    def union(cls, schemas: Sequence[Mapping[str, tuple[int, ...]]]) -> Layout:
        """The slots of every schema (``key -> shape``); one key with two shapes is an error."""
        shapes: dict[str, tuple[int, ...]] = {}
        for schema in schemas:
            for key, shape in schema.items():
                if shapes.setdefault(key, tuple(shape)) != tuple(shape):
                    raise ValueError(f"{key}: clients hold it with shapes {shapes[key]} and {tuple(shape)}")
        return cls(tuple(sorted(shapes)), shapes)

    def sizes(self) -> list[int]:
        return [int(np.prod(self.shapes[key], dtype=np.int64)) for key in self.keys]

    def for_client(self, names: Mapping[str, str], clipping_range: float) -> dict[str, list[str] | list[int] | float]:
        """The ``LAYOUT_KEY`` config of one client: ``names`` maps each of its tensor names to its key."""
        by_key = {key: name for name, key in names.items()}
        return {
            SLOT_NAMES: [by_key.get(key, "") for key in self.keys],
            SLOT_SIZES: self.sizes(),
            CLIPPING_RANGE: float(clipping_range),
        }

    def means(self, values: np.ndarray, holders: np.ndarray) -> dict[str, np.ndarray]:
        """Per key, the unmasked weighted sum over the weighted holder count; keys nobody held are left out."""
        result = {}
        offsets = np.cumsum([0, *self.sizes()])
        for index, key in enumerate(self.keys):
            if holders[index] <= HOLDER_FLOOR:
                continue
            flat = values[offsets[index] : offsets[index + 1]] / holders[index]
            result[key] = flat.reshape(self.shapes[key]).astype(np.float32)
        return result


HOLDER_FLOOR = 1e-9
"""A slot's weighted holder count at or below this is nobody's slot. A slot nobody held sums exact zeros (a zero
quantises exactly to the middle of the range, so no rounding noise); a holder adds its weight, a multiple of
1 / quantization_range."""


def pack(tensors: Mapping[str, np.ndarray], layout: Mapping[str, object]) -> list[np.ndarray]:
    """``[values, holders]`` of one client (see the module docstring).

    Raises
    ------
    KeyError
        If the layout names a tensor the client did not produce.
    OutOfRange
        If a value is non-finite or beyond the clipping range: SecAgg+ would clip it silently, corrupting the sum.
    """
    names = list(layout[SLOT_NAMES])  # type: ignore[call-overload]
    sizes = [int(size) for size in layout[SLOT_SIZES]]  # type: ignore[attr-defined]
    bound = float(layout[CLIPPING_RANGE])  # type: ignore[arg-type]
    parts = []
    for name, size in zip(names, sizes, strict=True):
        if not name:
            parts.append(np.zeros(size))
            continue
        flat = np.asarray(tensors[name], dtype=np.float64).ravel()
        if flat.size != size:
            raise ValueError(f"{name}: {flat.size} values, the layout's slot holds {size}")
        if not np.all(np.isfinite(flat)) or np.max(np.abs(flat), initial=0.0) > bound:
            raise OutOfRange(f"{name}: values must be finite and within ±{bound} to be masked")
        parts.append(flat)
    holders = np.array([1.0 if name else 0.0 for name in names])
    return [np.concatenate(parts) if parts else np.zeros(0), holders]
