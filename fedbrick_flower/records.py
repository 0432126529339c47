"""The ONE place where adapter tensors become Flower records and back.

It fixes the wire dtype (fp32, or fp16 to halve the traffic; bf16 cannot pass through NumPy), validates what
arrives (only expected names, expected shapes, finite values, under a size cap) and counts the bytes of the
records that actually travel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

WIRE_DTYPES: dict[str, type[np.floating]] = {"float32": np.float32, "float16": np.float16}
ADAPTERS_KEY = "adapters"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
JSON_KEYS = "json-keys"
PROFILE_KEY = "profile"  # the query reply's JSON profile (see ``client_info.ClientInfo``)
REFUSED_TYPE = "query.refused"  # message type that tells a device why the server turned it down
REASON_KEY = "reason"  # config of a ``query.refused`` message: the reason the server console shows
STATE_SCOPE_KEY = "state-scope"  # the run a client's durable state belongs to
# Metric names of the evaluation a client runs inside its train message (one ClientApp start per round).
EVAL_PREFIX = "eval-"
# Inside the train message the client first scores the model it received, before training, under these names
# after ``EVAL_PREFIX`` (``eval-received-accuracy``): what the server sent, apart from the local fine-tune.
RECEIVED_PREFIX = "received-"
LORA_RANK_KEY = "lora-rank"  # config: the LoRA rank a client trains at; metric: the rank it reports (pruning)
# An algorithm's own keys are declared by its registry entry (``registry.AlgorithmEntry.wire_keys``).
# Framing of one record entry that protobuf adds around the values (tags and length prefixes), counted flat.
_ENTRY_OVERHEAD = 8


class UpdateRejected(ValueError):
    """A client update that must not reach the server state; the message says why."""


def wire_dtype(name: str) -> type[np.floating]:
    """NumPy dtype for a ``wire_dtype`` setting."""
    try:
        return WIRE_DTYPES[name]
    except KeyError:
        raise ValueError(f"wire_dtype={name!r} is not one of {', '.join(WIRE_DTYPES)}") from None


def to_array_record(tensors: Mapping[str, Any], dtype: str = "float32") -> ArrayRecord:
    """Pack canonical-named tensors (torch or NumPy) into an ArrayRecord in the wire dtype."""
    target = wire_dtype(dtype)
    arrays = {name: Array(_as_numpy(value).astype(target, copy=False)) for name, value in tensors.items()}
    return ArrayRecord(arrays)


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Unpack an ArrayRecord into float32 NumPy arrays, whatever the wire dtype was."""
    return {name: np.asarray(array.numpy(), dtype=np.float32) for name, array in record.items()}


def array_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    """Raw bytes of the tensors themselves (no names, no framing)."""
    return int(sum(np.asarray(value).nbytes for value in tensors.values()))


def content_bytes(content: RecordDict) -> int:
    """Bytes a message's content puts on the wire, computed from the records as they are.

    Flower serializes each message once, when it sends it; counting must not serialize it a second time. The
    array buffers are already bytes (``Array.data``), so the count is their length plus names, shapes and the
    config and metric values, with a flat allowance per entry for protobuf's framing. It matches
    ``recorddict_to_proto(content).ByteSize()`` within a fraction of a percent for adapter-sized messages.
    """
    total = 0
    for key, record in content.items():
        total += len(key) + _ENTRY_OVERHEAD
        if isinstance(record, ArrayRecord):
            total += sum(
                len(name) + len(array.data) + 8 * len(array.shape) + len(array.dtype) + len(array.stype)
                for name, array in record.items()
            )
        else:
            total += sum(len(name) + _value_bytes(value) for name, value in record.items())
        total += _ENTRY_OVERHEAD * len(record)
    return int(total)


def _value_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, list):
        return sum(_value_bytes(item) for item in value)
    return 8


def validate_update(
    arrays: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    max_bytes: int,
) -> None:
    """Check a client update before it may touch server state.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        The update, as unpacked by :func:`from_array_record`.
    expected : Mapping[str, tuple[int, ...]]
        Exactly the names (and their shapes) this client was asked to return.
    max_bytes : int
        Size cap for the raw tensor bytes.

    Raises
    ------
    UpdateRejected
        With the first reason found: oversize, unknown names, missing names, wrong shapes, non-finite values.
    """
    size = array_bytes(arrays)
    if size > max_bytes:
        raise UpdateRejected(f"update of {size} bytes exceeds the cap of {max_bytes} bytes")
    unknown = sorted(set(arrays) - set(expected))
    if unknown:
        raise UpdateRejected(f"unexpected tensors {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise UpdateRejected(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, value in arrays.items():
        if tuple(value.shape) != tuple(expected[name]):
            raise UpdateRejected(f"tensor {name!r} has shape {tuple(value.shape)}, expected {tuple(expected[name])}")
        if not np.all(np.isfinite(value)):
            raise UpdateRejected(f"tensor {name!r} holds non-finite values")


def declared_schema(
    client: Any,
    layers: Iterable[int],
    settings: Mapping[str, Any] | None = None,
    kind_layers: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, tuple[int, ...]]:
    """What a client may send: the schemas of the adapter kinds it declared, on its layers, plus its head.

    The names are built by the registered kinds themselves (``adapters.base``), not by a fixed name pattern, so a
    new kind needs no change here; whatever no declared kind names is refused by :func:`validate_update`.

    Parameters
    ----------
    client : ClientInfo
        The client's ``query`` reply: ``adapter_kinds``, ``roles``, ``rank``, ``alpha``, its model's sizes
        (``model_type``, ``hidden_size``, ``intermediate_size``, ``num_layers``, ``num_heads``,
        ``num_kv_heads``, ``head_dim``) and ``head_schema``.
    layers : Iterable[int]
        The GLOBAL layers the client holds this round.
    settings : Mapping[str, Any], optional
        A kind's settings where the server fixes them (e.g. ``{"brick": BrickConfig(rank=4)}``). LoRA defaults
        to the client's own rank and alpha, any other kind to its settings' defaults.
    kind_layers : Mapping[str, Iterable[int]], optional
        Layers of a kind that covers other layers than the held ones (e.g. surrogate modules that span the full depth).

    Raises
    ------
    ValueError
        If a kind is not registered, or two kinds declare the same name.
    """
    from .adapters.base import combined_schema, kind_class
    from .models.families import ModelDims

    settings = dict(settings or {})
    roles = tuple(client.roles)
    kinds = []
    for name in client.adapter_kinds:
        cls = kind_class(name)
        if name == "lora" and name not in settings:
            settings[name] = cls.settings_class(rank=int(client.rank), alpha=float(client.alpha), roles=roles)
        kinds.append(cls(settings.get(name)))
    schema = combined_schema(kinds, ModelDims.from_mapping(client), layers, roles, kind_layers)
    schema.update({name: tuple(shape) for name, shape in client.head_schema.items()})
    return schema


def json_config(**values: Any) -> ConfigRecord:
    """A ConfigRecord in which list and dict values travel as JSON strings (records hold scalars and flat
    lists only); their keys are listed under ``json-keys`` so that :func:`decode_config` is unambiguous."""
    json_keys = sorted(key for key, value in values.items() if isinstance(value, list | tuple | dict))
    record = {key: json.dumps(value) if key in json_keys else value for key, value in values.items()}
    record[JSON_KEYS] = json.dumps(json_keys)
    return ConfigRecord(record)


def decode_config(config: ConfigRecord) -> dict[str, Any]:
    """Read a ConfigRecord written by :func:`json_config` back into plain Python values."""
    json_keys = set(json.loads(str(config.get(JSON_KEYS, "[]"))))
    return {
        key: json.loads(str(value)) if key in json_keys else value for key, value in config.items() if key != JSON_KEYS
    }


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    return value.detach().float().cpu().numpy()
