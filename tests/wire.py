"""What may cross the link, for the tests that read a run's ``wire-audit.jsonl``: the one statement of it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# Canonical adapter names: LoRA factors by global layer, the task head, FedBRICK's BRICKs, FedMosaic's Co-LoRA
# tensors by block and role and its sanitised probe gradient, H2Tune's middle bank.
ADAPTER_NAME = re.compile(
    r"^(layers\.\d+\.[\w.]+\.lora_[AB]|head\.(weight|bias)|bricks\.\d+\.(A1|B1|A2|B2)"
    r"|colora\.\d+\.\w+\.(P|Q|A|B)|rela\.gradient|bank\.\w+|bank-mass)$"
)
# The metric names the ClientApp declares in its replies (clients/base.py, fedbrick.py, hetlora.py, h2tune.py).
DECLARED_METRICS = {
    "num-examples",
    "examples-seen",
    "local-rounds",
    "eval-accuracy",
    "eval-loss",
    "eval-num-examples",
    "eval-seconds",
    "train-loss",
    "train-loss-first",
    "train-loss-last",
    "train-seconds",
    "optimizer-steps",
    "forward-passes",
    "peak-memory-mb",
    "process-peak-rss-mb",
    "model-parameters",
    "brick-parameters",
    "lora-rank",
    "h2tune-t-moved",
    "accuracy",
    "loss",
    "data-truncated",
    "data-dropped",
    # generative tasks (scoring.evaluate_generative), as sent by a client evaluating its own test split
    "eval-perplexity",
    "eval-token-accuracy",
    "eval-exact-match",
    "perplexity",
    "token-accuracy",
    "exact-match",
    # the received model's scores, taken in the train message before local training (clients/base.py)
    "eval-received-accuracy",
    "eval-received-loss",
    "eval-received-perplexity",
    "eval-received-token-accuracy",
    "eval-received-exact-match",
}


# Record names a message may carry: adapter tensors, metrics and the per-round config (never client state).
RECORD_NAMES = {"adapters", "metrics", "config"}


def audit_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every row of a run's wire audit."""
    return [json.loads(line) for line in (run_dir / "wire-audit.jsonl").read_text().splitlines()]


def array_names(rows: list[dict[str, Any]]) -> set[str]:
    return {name for row in rows for record in row["records"].values() for name in record.get("arrays", {})}


def metric_names(rows: list[dict[str, Any]]) -> set[str]:
    return {name for row in rows for record in row["records"].values() for name in record.get("metrics", [])}
