"""Fault injection: the transforms each fault applies to a training reply, and the mod on a real Message."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedbrick_flower.mods import apply_faults, fault_injection_mod, local_dp_mod
from fedbrick_flower.records import ADAPTERS_KEY, from_array_record, to_array_record
from fedbrick_flower.scenario import FaultSettings, scenario_path


def _tensors() -> dict[str, np.ndarray]:
    return {"layers.0.q.lora_A": np.array([[1.0, -2.0]], np.float32), "head.bias": np.array([0.5], np.float32)}


def test_scaled_update_multiplies_every_tensor_by_the_factor() -> None:
    # Prepare
    faults = FaultSettings(scaled_update=("bad",), scale_factor=1000.0)

    # Execute
    result = apply_faults(_tensors(), faults, "bad")

    # Assert
    np.testing.assert_array_equal(result["layers.0.q.lora_A"], [[1000.0, -2000.0]])
    np.testing.assert_array_equal(result["head.bias"], [500.0])
    assert result["head.bias"].dtype == np.float32


def test_sign_flip_negates_every_tensor_and_other_clients_are_untouched() -> None:
    # Prepare
    faults = FaultSettings(sign_flip=("bad",))
    tensors = _tensors()

    # Execute
    flipped = apply_faults(tensors, faults, "bad")
    honest = apply_faults(tensors, faults, "good")

    # Assert
    np.testing.assert_array_equal(flipped["layers.0.q.lora_A"], [[-1.0, 2.0]])
    np.testing.assert_array_equal(flipped["head.bias"], [-0.5])
    assert all(honest[name] is tensors[name] for name in tensors)


def test_nan_update_poisons_only_the_first_value_of_the_first_tensor() -> None:
    # Execute
    result = apply_faults(_tensors(), FaultSettings(nan_update=("bad",)), "bad")

    # Assert
    assert np.isnan(result["layers.0.q.lora_A"][0, 0]) and result["layers.0.q.lora_A"][0, 1] == -2.0
    np.testing.assert_array_equal(result["head.bias"], [0.5])


def test_the_mod_scales_the_training_reply_of_a_listed_client(tmp_path) -> None:
    # Prepare: the smoke scenario with its first client scaling by 10
    raw = yaml.safe_load(scenario_path("smoke").read_text())
    raw["faults"] = {"scaled_update": [raw["clients"][0]["id"]], "scale_factor": 10.0}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    node_config = {"partition-id": 0, "num-partitions": 3}
    context = Context(1, 1, node_config, RecordDict(), {"scenario": str(tmp_path / "s.yaml")})
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # what a Flower process sets
    message = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=1, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = "m0"

    def train(msg: Message, ctx: Context) -> Message:
        return Message(RecordDict({ADAPTERS_KEY: to_array_record(_tensors())}), reply_to=msg)

    # Execute
    reply = fault_injection_mod(message, context, train)

    # Assert
    sent = from_array_record(reply.content[ADAPTERS_KEY])
    np.testing.assert_array_equal(sent["layers.0.q.lora_A"], [[10.0, -20.0]])
    np.testing.assert_array_equal(sent["head.bias"], [5.0])


def test_local_dp_noises_the_training_reply_by_noise_multiplier_times_clip_norm(tmp_path, monkeypatch) -> None:
    # Prepare: the smoke scenario under local DP; the client was sent a zero tensor and trained it to 0.001
    raw = yaml.safe_load(scenario_path("smoke").read_text())
    raw["privacy"] = {"mode": "local", "noise_multiplier": 0.5, "clip_norm": 2.0}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    context = Context(
        1, 1, {"partition-id": 0, "num-partitions": 3}, RecordDict(), {"scenario": str(tmp_path / "s.yaml")}
    )
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    sent = {"w": np.zeros((200, 200), np.float32)}
    content = RecordDict({"config": ConfigRecord(), ADAPTERS_KEY: to_array_record(sent)})
    message = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = "m0"
    monkeypatch.setattr("fedbrick_flower.assembly.seeded_start", lambda *args: {})  # every tensor was sent
    np.random.seed(0)

    def train(msg: Message, ctx: Context) -> Message:
        return Message(RecordDict({ADAPTERS_KEY: to_array_record({"w": sent["w"] + 0.001})}), reply_to=msg)

    # Execute
    reply = local_dp_mod(message, context, train)

    # Assert: the server receives the update (delta norm 0.2, within the bound) plus noise of std 0.5 * 2
    difference = from_array_record(reply.content[ADAPTERS_KEY])["w"] - 0.001
    assert np.std(difference) == pytest.approx(1.0, rel=0.02)
    assert abs(np.mean(difference)) < 0.02
