"""Tensor <-> record conversion, validation and byte accounting."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.records import (
    UpdateRejected,
    array_bytes,
    decode_config,
    from_array_record,
    json_config,
    to_array_record,
    validate_update,
)

EXPECTED = {"layers.0.q.lora_A": (2, 4), "head.weight": (3, 4)}


def _update(**changes: np.ndarray) -> dict[str, np.ndarray]:
    update = {name: np.ones(shape, np.float32) for name, shape in EXPECTED.items()}
    update.update(changes)
    return update


@pytest.mark.parametrize("dtype, tolerance", [("float32", 0.0), ("float16", 1e-3)])
def test_round_trip_preserves_names_shapes_and_values(dtype: str, tolerance: float) -> None:
    # Prepare
    tensors = {"layers.3.q.lora_A": np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)}

    # Execute
    restored = from_array_record(to_array_record(tensors, dtype))

    # Assert
    assert list(restored) == list(tensors)
    assert restored["layers.3.q.lora_A"].dtype == np.float32
    np.testing.assert_allclose(
        restored["layers.3.q.lora_A"], tensors["layers.3.q.lora_A"], atol=tolerance, rtol=tolerance
    )


def test_fp16_wire_halves_the_bytes() -> None:
    # Prepare
    tensors = {"a": np.zeros((64, 64), np.float32)}

    # Execute
    record = to_array_record(tensors, "float16")

    # Assert
    assert sum(len(array.data) for array in record.values()) < array_bytes(tensors) * 0.6


def test_valid_update_passes() -> None:
    validate_update(_update(), EXPECTED, max_bytes=10_000)


@pytest.mark.parametrize(
    "update, reason",
    [
        (_update(**{"layers.0.q.lora_A": np.full((2, 4), np.nan, np.float32)}), "non-finite"),
        (_update(**{"head.weight": np.full((3, 4), np.inf, np.float32)}), "non-finite"),
        (_update(**{"head.weight": np.ones((4, 4), np.float32)}), "shape"),
        (_update(**{"layers.9.q.lora_A": np.ones((2, 4), np.float32)}), "unexpected"),
        ({"head.weight": np.ones((3, 4), np.float32)}, "missing"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(update: dict[str, np.ndarray], reason: str) -> None:
    with pytest.raises(UpdateRejected, match=reason):
        validate_update(update, EXPECTED, max_bytes=10_000)


def test_oversize_update_is_rejected() -> None:
    with pytest.raises(UpdateRejected, match="exceeds the cap"):
        validate_update(_update(), EXPECTED, max_bytes=16)


def test_config_lists_travel_as_json_and_come_back() -> None:
    # Execute
    decoded = decode_config(json_config(layers=[1, 4], mask={"a": 1}, lr=0.1, name="[not json"))

    # Assert
    assert decoded == {"layers": [1, 4], "mask": {"a": 1}, "lr": 0.1, "name": "[not json"}


def _described(client_id: str, kinds: tuple[str, ...], **overrides: str):
    """The client's session and its query reply (a ``ClientInfo``)."""
    from fedbrick_flower.clients.profile import ClientSession
    from fedbrick_flower.scenario import load_scenario

    scenario = load_scenario("smoke", overrides)
    session = ClientSession(scenario, scenario.client(client_id))
    return session, session.describe(kinds)


@pytest.mark.parametrize("client_id, targets", [("bert-edge", "[q, v]"), ("llama-edge", "all-linear")])
def test_declared_schema_is_what_the_client_model_holds(client_id: str, targets: str) -> None:
    # Prepare
    import yaml

    from fedbrick_flower.adapters.lora import adapter_tensors
    from fedbrick_flower.models import model_family
    from fedbrick_flower.records import declared_schema

    session, info = _described(client_id, ("lora",), **{"lora.targets": yaml.safe_load(targets)})
    model = session.build([1, 3])

    # Execute
    schema = declared_schema(info, [1, 3])

    # Assert
    held = {name: tuple(t.shape) for name, t in adapter_tensors(model, model_family(model.backbone)).items()}
    assert schema == held


def test_declared_schema_accepts_every_declared_kind_and_nothing_else() -> None:
    # Prepare
    from fedbrick_flower.adapters.brick import BrickConfig, brick_schema
    from fedbrick_flower.records import declared_schema

    _, info = _described("bert-edge", ("lora", "brick"))
    schema = declared_schema(info, [1, 3], {"brick": BrickConfig(rank=2)}, kind_layers={"brick": range(4)})
    update = {name: np.zeros(shape, np.float32) for name, shape in schema.items()}

    # Execute / Assert: LoRA on the held layers, all four BRICKs, the head; anything else is refused.
    assert set(brick_schema(range(4), 256, 2)) <= set(schema)
    assert "layers.3.attention.self.value.lora_B" in schema and "layers.0.attention.self.value.lora_B" not in schema
    validate_update(update, schema, max_bytes=10**8)
    for extra in ("layers.0.attention.self.query.lora_A", "bricks.4.A1", "colora.0.q.P"):
        with pytest.raises(UpdateRejected, match="unexpected tensors"):
            validate_update({**update, extra: np.zeros((2, 256), np.float32)}, schema, max_bytes=10**8)


def test_declared_schema_names_an_unregistered_kind() -> None:
    # Prepare
    from fedbrick_flower.records import declared_schema

    _, info = _described("bert-edge", ("lora",))
    info.adapter_kinds = ["lora", "unregistered"]

    # Execute / Assert
    with pytest.raises(ValueError, match="adapter kind 'unregistered' is not one of"):
        declared_schema(info, [1])
