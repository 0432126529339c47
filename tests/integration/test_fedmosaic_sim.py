"""FedMosaic on Flower's Simulation Engine: three tiny random families of different widths, two rounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedbrick_flower import cli
from fedbrick_flower.run_dir import CHECKPOINT_DIR, CHECKPOINT_FILE
from fedbrick_flower.strategies.fedmosaic import RELEVANCE_PHASE
from tests.wire import ADAPTER_NAME, DECLARED_METRICS, array_names, audit_rows, metric_names

pytestmark = pytest.mark.integration


def _tiny(family: str, width: int, layers: int, **extra: object) -> dict:
    config = {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": 2, "intermediate_size": 64}
    return {"family": family, "tokenizer": "minilm", "config": {**config, **extra}}


SCENARIO = {
    "algorithm": "fedmosaic",
    "rounds": 2,
    "seed": 0,
    "models": {
        "tiny-bert": _tiny("bert", 32, 4),
        "tiny-llama": _tiny("llama", 48, 4, num_key_value_heads=1),
        "tiny-mpnet": _tiny("mpnet", 64, 6),
        "tiny-probe": _tiny("llama", 32, 2, num_key_value_heads=1, tie_word_embeddings=True),
    },
    "tasks": {
        "news": {"dataset": "bbc-news", "max_examples": 120},
        "chat": {"dataset": "chatterbot", "max_examples": 120},
    },
    "data": {"partition": "iid", "max_length": 16, "proxy_fraction": 0.2},
    "train": {"local_steps": 2, "batch_size": 8, "lr": 0.01, "head_lr": 0.01},
    "lora": {"rank": 4, "alpha": 8},
    "server": {"evaluate_global": False},
    "algorithm_params": {"probe": "tiny-probe", "gradient_every": 1, "n_blocks": 2, "align_steps": 50},
    "clients": [
        {"id": "bert-news", "model": "tiny-bert", "task": "news"},
        {"id": "bert-chat", "model": "tiny-bert", "task": "chat"},
        {"id": "llama-news", "model": "tiny-llama", "task": "news"},
        {"id": "llama-chat", "model": "tiny-llama", "task": "chat"},
        {"id": "mpnet-chat", "model": "tiny-mpnet", "task": "chat"},
    ],
}
FAMILY = {"bert-news": "bert", "bert-chat": "bert", "llama-news": "llama", "llama-chat": "llama", "mpnet-chat": "mpnet"}


@pytest.fixture(scope="module")
def fedmosaic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("fedmosaic")
    scenario = tmp_path / "fedmosaic-tiny.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    out = tmp_path / "run"
    assert cli.main(["run", str(scenario), "--out", str(out), "--audit-wire"]) == 0
    return out


def _uploads(rows: list[dict]) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for row in rows:
        if row["type"] == "train" and row["direction"] == "up":
            names.setdefault(row["client"], set()).update(row["records"]["adapters"]["arrays"])
    return names


def test_p_and_q_travel_under_the_same_names_from_all_three_families(fedmosaic_run: Path) -> None:
    # Prepare
    rows = audit_rows(fedmosaic_run)

    # Execute
    uploads = _uploads(rows)
    pq = {cid: {n for n in names if n.startswith("colora.")} for cid, names in uploads.items()}

    # Assert
    assert set(uploads) == set(FAMILY)
    assert len({frozenset(names) for names in pq.values()}) == 1 and "colora.1.v.P" in pq["mpnet-chat"]
    assert all(ADAPTER_NAME.match(n) for n in array_names(rows)), sorted(array_names(rows))
    assert metric_names(rows) <= DECLARED_METRICS
    assert all("rela.gradient" in names for names in uploads.values())


def test_ordinary_lora_is_mixed_within_a_family_only(fedmosaic_run: Path) -> None:
    # Prepare
    rows = [json.loads(line) for line in (fedmosaic_run / "metrics.jsonl").read_text().splitlines()]
    audit = audit_rows(fedmosaic_run)

    # Execute
    mix = [r for r in rows if r["phase"] == RELEVANCE_PHASE][-1]
    families = [FAMILY[cid] for cid in mix["clients"]]
    downs = [r for r in audit if r["type"] == "train" and r["direction"] == "down" and r["client"] == "mpnet-chat"]

    # Assert: LoRA weights only between clients of one family; P/Q weights span families
    lora, pq = np.array(mix["lora_weights"]), np.array(mix["weights"])
    for i, fi in enumerate(families):
        for j, fj in enumerate(families):
            if fi != fj:
                assert lora[i, j] == 0.0
    assert pq[families.index("mpnet")].sum() == pytest.approx(1.0, abs=1e-3)
    # the only MPNet client receives P/Q in round 2 but no ordinary LoRA (no other MPNet client)
    round_two = downs[-1]["records"]["adapters"]["arrays"]
    assert any(n.endswith(".P") for n in round_two) and not any("lora_" in n for n in round_two)


def test_alignment_is_reported_and_reduces_the_error_and_a_b_are_sent_once(fedmosaic_run: Path) -> None:
    # Prepare
    rows = [json.loads(line) for line in (fedmosaic_run / "metrics.jsonl").read_text().splitlines()]
    audit = audit_rows(fedmosaic_run)

    # Execute
    alignment = next(r for r in rows if r["phase"] == "alignment")
    sent = [r for r in rows if r["phase"] == "fedmosaic-bytes"]
    frozen_down = [
        r["round"] if "round" in r else None
        for r in audit
        if r["direction"] == "down"
        and any(n.endswith(".A") for n in r["records"].get("adapters", {}).get("arrays", {}))
    ]

    # Assert
    assert alignment["pivot"] == "tiny-bert" and alignment["seconds"] > 0
    for errors in alignment["models"].values():
        assert errors["error_after"] < errors["error_before"]
    assert sent[0]["align-down-train"] > 0 and "align-down-train" not in sent[1]
    assert len(frozen_down) == len(FAMILY)  # each client received its aligned A and B exactly once
    assert (fedmosaic_run / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file()
