"""Flower Simulation Engine runs of the built-in scenarios, through the real ``fedbrick-flower run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedbrick_flower import cli
from fedbrick_flower.scenario import scenario_path
from tests.wire import ADAPTER_NAME, DECLARED_METRICS, audit_rows, metric_names

pytestmark = pytest.mark.integration


def _scenario_with(tmp_path: Path, name: str, **changes) -> Path:
    raw = yaml.safe_load(scenario_path(name).read_text())
    raw.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two rounds of ``smoke`` in which one client sends a NaN update, with the wire audit on."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    scenario = _scenario_with(tmp_path, "smoke", faults={"nan_update": ["bert-edge"]})
    out = tmp_path / "run"
    assert cli.main(["run", str(scenario), "--out", str(out), "--audit-wire"]) == 0
    return out


def test_smoke_run_completes_with_only_adapter_bytes_on_the_wire(smoke_run: Path) -> None:
    # Execute
    summary = json.loads((smoke_run / "summary.json").read_text())

    # Assert
    assert summary["rounds_completed"] == 2
    assert summary["bytes_up_per_client_round"] / summary["adapter_bytes"] <= 1.05
    assert summary["full_model_bytes"] > 10 * summary["bytes_up_per_client_round"]
    # The headline numbers are the last round's rows: each client's own-split accuracy, the server's per task.
    rows = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    last_eval = {r["client"]: r["accuracy"] for r in rows if r["phase"] == "evaluate"}
    server_eval = [r["accuracy"] for r in rows if r["phase"] == "server-eval" and r["round"] == 2]
    assert summary["final_accuracy"] == pytest.approx(sum(last_eval.values()) / len(last_eval))
    assert len(server_eval) == 2  # one global model per model family on the one task
    assert summary["global_accuracy"] == pytest.approx(sum(server_eval) / 2)
    assert (smoke_run / "checkpoint" / "state.safetensors").exists()


def test_nan_update_is_rejected_and_the_rounds_go_on(smoke_run: Path) -> None:
    # Prepare
    rows = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]

    # Execute
    rejected = [r for r in rows if r["phase"] == "rejected"]
    accepted = {(r["round"], r["client"]) for r in rows if r["phase"] == "train"}

    # Assert
    assert [(r["round"], r["client"]) for r in rejected] == [(1, "bert-edge"), (2, "bert-edge")]
    assert all("non-finite" in r["reason"] for r in rejected)
    assert accepted == {(rnd, cid) for rnd in (1, 2) for cid in ("bert-full", "llama-edge")}


def test_messages_carry_only_adapter_tensors_and_declared_metrics(smoke_run: Path) -> None:
    # Prepare
    rows = audit_rows(smoke_run)

    # Execute
    arrays = [(n, a) for row in rows for rec in row["records"].values() for n, a in rec.get("arrays", {}).items()]
    metrics = metric_names(rows)
    longest_string = max(rec.get("longest_string", 0) for row in rows for rec in row["records"].values())

    # Assert
    assert {row["direction"] for row in rows} == {"up", "down"}
    assert arrays, "the audit saw no tensors"
    assert all(ADAPTER_NAME.match(name) for name, _ in arrays), [n for n, _ in arrays if not ADAPTER_NAME.match(n)]
    assert max(a["shape"][0] * (a["shape"][1] if len(a["shape"]) > 1 else 1) for _, a in arrays) < 30522 * 8
    assert metrics <= DECLARED_METRICS
    assert longest_string < 4096  # profiles and layer lists travel; no text does


def test_saved_client_adapter_loads_with_peft(smoke_run: Path) -> None:
    # Prepare
    from peft import LoraConfig

    folder = smoke_run / "adapters" / "clients" / "bert-edge"

    # Execute
    config = LoraConfig.from_pretrained(str(folder))

    # Assert: addressed to the full-depth model, LoRA on exactly the client's global layers 1 and 3
    import json
    import re

    assert (folder / "adapter_model.safetensors").exists()
    assert json.loads((folder / "layers.json").read_text()) == [1, 3]
    targeted = [g for g in range(4) if re.fullmatch(config.target_modules, f"encoder.layer.{g}.attention.self.query")]
    assert targeted == [1, 3]


def _metric_rows(run_dir: Path) -> list[dict]:
    """Metric rows without the fields that measure time or memory (they differ between identical runs)."""
    volatile = ("seconds", "memory", "wall", "rss")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not any(word in k for word in volatile)} for row in rows]


def test_half_the_clients_train_each_round_and_a_rerun_gives_equal_rows(tmp_path: Path) -> None:
    # Prepare
    raw = yaml.safe_load(scenario_path("smoke").read_text())
    raw["clients"].append({"id": "llama-full", "model": "tiny-llama", "task": "bbc", "layers": 4})
    raw["server"] = {"fraction_train": 0.5}
    scenario = tmp_path / "half.yaml"
    scenario.write_text(yaml.safe_dump(raw))

    # Execute
    for out in ("first", "second"):
        assert cli.main(["run", str(scenario), "--out", str(tmp_path / out)]) == 0
    first, second = _metric_rows(tmp_path / "first"), _metric_rows(tmp_path / "second")

    # Assert
    trained = [sorted(r["client"] for r in first if r["phase"] == "train" and r["round"] == n) for n in (1, 2)]
    assert [len(clients) for clients in trained] == [2, 2]
    evaluated = [{r["client"] for r in first if r["phase"] == "evaluate" and r["round"] == n} for n in (1, 2)]
    assert evaluated == [{"bert-full", "bert-edge", "llama-edge", "llama-full"}] * 2
    assert first == second


def test_pretrained_clients_at_two_depths_learn_in_two_short_rounds_and_send_only_adapters(tmp_path: Path) -> None:
    """Pretrained MiniLM clients at 2 and 3 layers on 400 BBC articles (5 topics, majority class about 23 %)."""
    # Prepare
    overrides = ["rounds=2", "train.local_steps=10", "tasks.bbc.max_examples=400"]
    raw = yaml.safe_load(scenario_path("hetero-depth").read_text())
    raw["clients"] = [c for c in raw["clients"] if c["layers"] in (2, 3)]
    scenario = tmp_path / "two-clients.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    args = ["run", str(scenario), "--out", str(tmp_path / "run")]
    for item in overrides:
        args += ["--set", item]

    # Execute
    assert cli.main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]

    # Assert: the loss falls from round 1 to round 2, and both the clients and the global model beat chance
    loss = {n: [r["train-loss"] for r in rows if r["phase"] == "train" and r["round"] == n] for n in (1, 2)}
    assert sum(loss[2]) < sum(loss[1])
    assert all(r["accuracy"] >= 0.5 for r in rows if r["phase"] == "evaluate" and r["round"] == 2)
    assert all(r["accuracy"] >= 0.5 for r in rows if r["phase"] == "server-eval" and r["round"] == 2)
    # Only adapter tensors travel: an upload is the adapters' size, and a fraction of the model's
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["bytes_up_per_client_round"] / summary["adapter_bytes"] <= 1.05
    assert summary["full_model_bytes"] / summary["bytes_up_per_client_round"] >= 50
