"""Device-local data in a deployment: two SuperNodes, each training on its own JSONL file.

The task declares its labels and names no data, so the server holds none of it; each client reads only the file
its profile names. The run is started with ``python -m fedbrick_flower.cli launch`` from the source checkout and
stopped by PID (see ``tests/integration/test_deployment.py`` for the same pattern).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from fedbrick_flower import runtime
from fedbrick_flower.run_dir import read_metrics

pytestmark = pytest.mark.integration

# Client id -> (positive rows, negative rows) of its own file.
FILES = {"phone": (8, 4), "laptop": (3, 3)}
# A stratified quarter of each class is the client's test split: (8, 4) -> 2 + 1, (3, 3) -> 1 + 1.
EXPECTED = {"phone": (9, 3), "laptop": (4, 2)}


def write_device_files(folder: Path) -> dict[str, Path]:
    paths = {}
    for client_id, (positive, negative) in FILES.items():
        rows = [{"text": f"{client_id} liked it {i}", "label": "pos"} for i in range(positive)]
        rows += [{"text": f"{client_id} hated it {i}", "label": "neg"} for i in range(negative)]
        paths[client_id] = folder / f"{client_id}.jsonl"
        paths[client_id].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


def device_scenario(folder: Path, files: dict[str, Path]) -> Path:
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    raw = {
        "name": "device-data",
        "algorithm": "fedavg",
        "rounds": 2,
        "models": {"tiny-bert": {"family": "bert", "tokenizer": "minilm", "config": tiny}},
        "tasks": {"reviews": {"labels": ["neg", "pos"]}},
        "data": {"max_length": 16, "client_test_fraction": 0.25},
        "train": {"local_steps": 2, "batch_size": 4},
        "server": {"evaluate_global": False},
        "clients": [
            {"id": client_id, "model": "tiny-bert", "task": "reviews", "train": str(path)}
            for client_id, path in files.items()
        ],
    }
    path = folder / "device-data.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_each_supernode_trains_on_its_own_file(tmp_path: Path) -> None:
    # Prepare
    scenario = device_scenario(tmp_path, write_device_files(tmp_path))
    run_dir = tmp_path / "run"
    log_file = tmp_path / "launch.out"
    command = [sys.executable, "-m", "fedbrick_flower.cli", "launch", str(scenario), "--out", str(run_dir)]

    # Execute
    process = runtime.start(command, log_file, runtime.flower_env(tmp_path / ".flwr-home"))
    try:
        code = process.wait(timeout=900)
    finally:
        runtime.stop(process, grace=30)

    # Assert: both rounds ran, and each client's counts are those of its own file
    output = log_file.read_text()
    assert code == 0, output[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 2
    deployment = json.loads((run_dir / "deployment.json").read_text())
    assert sorted(deployment["supernode_pids"]) == sorted(FILES)
    rows = read_metrics(run_dir)
    train = [row for row in rows if row["phase"] == "train"]
    assert sorted((row["round"], row["client"]) for row in train) == [(r, c) for r in (1, 2) for c in sorted(FILES)]
    # The evaluation inside each train message reports the size of the client's own test split.
    tested = {(row["round"], row["client"]): row["num-examples"] for row in rows if row["phase"] == "evaluate"}
    for row in train:
        assert (row["num-examples"], tested[(row["round"], row["client"])]) == EXPECTED[row["client"]]
