"""FedBip-L on Flower's Simulation Engine: tiny random-init BERT, two tasks, mixed depth, two rounds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedbrick_flower import cli
from fedbrick_flower.run_dir import CHECKPOINT_DIR, CHECKPOINT_FILE

pytestmark = pytest.mark.integration

SCENARIO = {
    "algorithm": "fedbip-l",
    "rounds": 2,
    "seed": 0,
    "models": {
        "tiny-bert": {
            "family": "bert",
            "tokenizer": "minilm",
            "config": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64},
        }
    },
    "tasks": {
        "news": {"dataset": "bbc-news", "max_examples": 200},
        "chat": {"dataset": "chatterbot", "max_examples": 200},
    },
    "data": {"partition": "iid", "max_length": 16, "proxy_fraction": 0.0},
    "train": {"local_steps": 2, "batch_size": 8, "lr": 0.01, "head_lr": 0.01},
    "lora": {"rank": 4, "alpha": 8},
    "server": {"evaluate_global": False},
    "clients": [
        {"id": "news-deep", "model": "tiny-bert", "task": "news", "layers": 4},
        {"id": "news-edge", "model": "tiny-bert", "task": "news", "layers": [1, 3]},
        {"id": "chat-1", "model": "tiny-bert", "task": "chat", "layers": 4},
        {"id": "chat-2", "model": "tiny-bert", "task": "chat", "layers": 4},
    ],
}


@pytest.fixture(scope="module")
def fedbip_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("fedbip")
    scenario = tmp_path / "fedbip-tiny.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    out = tmp_path / "run"
    assert cli.main(["run", str(scenario), "--out", str(out)]) == 0
    return out


def test_every_round_logs_a_similarity_matrix_and_row_stochastic_weights(fedbip_run: Path) -> None:
    # Prepare
    rows = [json.loads(line) for line in (fedbip_run / "metrics.jsonl").read_text().splitlines()]

    # Execute
    similarity = [r for r in rows if r["phase"] == "similarity"]

    # Assert
    assert [r["round"] for r in similarity] == [1, 2]
    for row in similarity:
        assert sorted(row["clients"]) == ["chat-1", "chat-2", "news-deep", "news-edge"] and row["layerwise"]
        np.testing.assert_allclose(np.sum(row["weights"], axis=1), 1.0, atol=1e-3)
        np.testing.assert_allclose(np.diag(row["similarity"]), 1.0)


def test_personalized_adapters_are_saved_per_client_and_differ(fedbip_run: Path) -> None:
    # Prepare
    from peft import LoraConfig
    from safetensors.numpy import load_file

    folders = {cid: fedbip_run / "adapters" / "clients" / cid for cid in ("news-deep", "news-edge", "chat-1")}

    # Execute
    configs = {cid: LoraConfig.from_pretrained(str(folder)) for cid, folder in folders.items()}
    tensors = {cid: load_file(str(folder / "adapter_model.safetensors")) for cid, folder in folders.items()}

    # Assert: the edge client's adapter covers its two layers; two clients of one task hold different θ̄.
    def targeted(cid: str) -> list[int]:
        pattern = configs[cid].target_modules
        return [g for g in range(4) if re.fullmatch(pattern, f"encoder.layer.{g}.attention.self.query")]

    assert targeted("news-edge") == [1, 3]
    assert targeted("news-deep") == [0, 1, 2, 3]
    shared = sorted(set(tensors["news-deep"]) & set(tensors["news-edge"]))
    assert shared and any(not np.allclose(tensors["news-deep"][k], tensors["news-edge"][k]) for k in shared)
    assert not (fedbip_run / "adapters" / "global").exists()


def test_summary_holds_personalized_accuracy_and_checkpoint_every_client(fedbip_run: Path) -> None:
    # Prepare
    from safetensors.numpy import load_file

    summary = json.loads((fedbip_run / "summary.json").read_text())

    # Execute
    arrays = load_file(str(fedbip_run / CHECKPOINT_DIR / CHECKPOINT_FILE))

    # Assert
    assert summary["rounds_completed"] == 2 and summary["fedbip"]["variant"] == "FedBip-L"
    assert all(summary["clients"][cid]["accuracy"] is not None for cid in summary["clients"])
    assert set(summary["fedbip"]["same_task_weight_share"]) == {"1", "2"}
    assert {key.split("/")[1] for key in arrays if key.startswith("personal/")} == {
        "news-deep",
        "news-edge",
        "chat-1",
        "chat-2",
    }


def test_fedbip_runs_on_the_deployment_engine(tmp_path: Path) -> None:
    """The same FedBip-L scenario with two clients as SuperNodes over TLS with node authentication (`launch`)."""
    # Prepare
    news_clients = [client for client in SCENARIO["clients"] if client["task"] == "news"]
    raw = {**SCENARIO, "clients": news_clients}
    raw["tasks"] = {"news": SCENARIO["tasks"]["news"]}
    scenario = tmp_path / "fedbip-deploy.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"

    # Execute
    code = cli.main(["launch", str(scenario), "--out", str(out)])

    # Assert: both rounds mixed the two clients' task vectors, and each got its own personalized adapter
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    similarity = [r for r in rows if r["phase"] == "similarity"]
    assert [r["round"] for r in similarity] == [1, 2]
    assert all(sorted(r["clients"]) == ["news-deep", "news-edge"] for r in similarity)
    assert {r["client"] for r in rows if r["phase"] == "train"} == {"news-deep", "news-edge"}
    assert (out / "adapters" / "clients" / "news-edge" / "adapter_model.safetensors").exists()
