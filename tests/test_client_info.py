"""The ``query`` reply contract both halves share: JSON round trip, tolerance of newer clients, schemas."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from fedbrick_flower.client_info import ClientInfo


def _info(**overrides) -> ClientInfo:
    fields = {
        "client_id": "phone",
        "model": "m",
        "task": "t",
        "group": "g",
        "model_type": "bert",
        "num_layers": 4,
        "budget": 2,
        "fixed_layers": [1, 3],
        "layer_schema": {"q.lora_A": [2, 8], "q.lora_B": [8, 2]},
        "head_schema": {"head.weight": [3, 8], "head.bias": [3]},
        "num_train_examples": 12,
        "rank": 2,
        "alpha": 4.0,
        "roles": ["q"],
        "extra": {"labels": ["a", "b"]},
        "node_id": 77,
    }
    return ClientInfo(**(fields | overrides))


def test_the_reply_round_trips_through_json_and_the_server_assigns_the_node_id() -> None:
    # Prepare
    info = _info()

    # Execute
    text = info.to_json()
    read = ClientInfo.from_json(text, node_id=5)

    # Assert
    assert "node_id" not in json.loads(text)
    assert read == dataclasses.replace(info, node_id=5)


def test_fields_a_newer_client_adds_go_to_extra_instead_of_failing() -> None:
    # Prepare
    data = json.loads(_info().to_json()) | {"battery": 0.8}

    # Execute
    read = ClientInfo.from_json(json.dumps(data), node_id=1)

    # Assert
    assert read.extra == {"labels": ["a", "b"], "battery": 0.8}


def test_the_schema_names_the_given_global_layers_and_the_head() -> None:
    # Prepare
    info = _info()

    # Execute
    schema = info.schema([1, 3])

    # Assert
    assert schema == {
        "layers.1.q.lora_A": (2, 8),
        "layers.1.q.lora_B": (8, 2),
        "layers.3.q.lora_A": (2, 8),
        "layers.3.q.lora_B": (8, 2),
        "head.weight": (3, 8),
        "head.bias": (3,),
    }


def test_the_contract_imports_neither_torch_nor_flower() -> None:
    # Execute: a fresh interpreter, so that no other test has loaded them already
    code = "import sys, fedbrick_flower.client_info; print(sorted({'torch', 'flwr'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    # Assert
    assert loaded.strip() == "[]"
