"""The run directory: resolved scenario, versions, per-round metrics, checkpoints, adapters and summary.

Layout::

    RUN_DIR/scenario.yaml        the resolved scenario (overrides applied)
    RUN_DIR/versions.json        Python and library versions
    RUN_DIR/metrics.jsonl        one JSON row per client and round (train, evaluate, rejected), per task
                                 (server-eval) and per round (wall time)
    RUN_DIR/checkpoint/          the strategy's state after the last completed round (resume from here)
    RUN_DIR/adapters/global/     full-depth global adapters per model and task (peft folders)
    RUN_DIR/adapters/clients/    each client's personalized adapter (peft folders)
    RUN_DIR/summary.json         the headline numbers
"""

from __future__ import annotations

import json
import logging
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .adapters.lora import save_peft_adapter
from .assembly import scenario_lora
from .metrics import (
    EVALUATE,
    REJECTED,
    SERVER_EVAL,
    TRAIN,
    by_phase,
    group,
    last_by_client,
    last_round,
    mean_of,
    read_metrics,
)
from .models import family_of
from .run_files import CHECKPOINT_DIR, METRICS_FILE, SCENARIO_FILE, SUMMARY_FILE, VERSIONS_FILE
from .scenario import Scenario
from .strategies.base import HeterogeneousStrategy, RoundCallback

logger = logging.getLogger(__name__)
_PACKAGES = ("flwr", "torch", "transformers", "peft", "numpy", "fedbrick-flower")


class RunRecorder(RoundCallback):
    """Writes the run directory as rounds complete (a Lightning-style callback on the strategy)."""

    def __init__(self, run_dir: Path, scenario: Scenario) -> None:
        self.run_dir = run_dir
        self.scenario = scenario
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SCENARIO_FILE).write_text(yaml.safe_dump(scenario.raw, sort_keys=False))
        (run_dir / VERSIONS_FILE).write_text(json.dumps(library_versions(), indent=2))
        self.rows: list[dict] = read_metrics(run_dir)

    def drop_rows_after(self, completed_round: int) -> None:
        """On resume: forget rows of rounds past the checkpoint (they will run again), in memory and on disk."""
        self.rows = [row for row in self.rows if row.get("round", 0) <= completed_round]
        path = self.run_dir / METRICS_FILE
        staging = path.with_suffix(".jsonl.tmp")
        staging.write_text("".join(json.dumps(row) + "\n" for row in self.rows))
        os.replace(staging, path)

    def resume(self, strategy: HeterogeneousStrategy) -> int:
        """Restore ``strategy`` from the run's checkpoint and forget the rows past it; the round it holds (0: none).

        A round's rows are written before its checkpoint, so a crash between the two leaves the rows of a round
        that runs again: they go, whether the checkpoint is an older one or missing.
        """
        folder = self.run_dir / CHECKPOINT_DIR
        completed = load_checkpoint(folder, strategy) if has_checkpoint(folder) else 0
        self.drop_rows_after(completed)
        return completed

    def on_round_end(self, strategy: HeterogeneousStrategy, server_round: int, log_rows: list[dict]) -> None:
        with (self.run_dir / METRICS_FILE).open("a") as sink:
            for row in log_rows:
                sink.write(json.dumps(row) + "\n")
        self.rows.extend(log_rows)
        save_checkpoint(self.run_dir / CHECKPOINT_DIR, strategy, server_round)

    def on_run_end(self, strategy: HeterogeneousStrategy, rounds_completed: int) -> None:
        self._save_adapters(strategy)
        summary = summarize(self.rows, rounds_completed, strategy.summary_fields())
        (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        logger.info("run directory: %s", self.run_dir)

    def _save_adapters(self, strategy: HeterogeneousStrategy) -> None:
        for (model_key, task), tensors in strategy.global_adapters().items():
            self._save(self.run_dir / "adapters" / "global" / f"{model_key}-{task}", model_key, tensors, strategy)
        for client_id, client in strategy.clients.items():
            tensors = strategy.personalized_adapters(client)
            if tensors:
                self._save(self.run_dir / "adapters" / "clients" / client_id, client.model, tensors, strategy)

    def _save(
        self, folder: Path, model_key: str, tensors: dict[str, np.ndarray], strategy: HeterogeneousStrategy
    ) -> None:
        model_type = next(c.model_type for c in strategy.clients.values() if c.model == model_key)
        spec = self.scenario.models[model_key]
        # Each layer's rank comes from its tensors (peft rank_pattern); the scenario gives alpha and dropout.
        settings = scenario_lora(self.scenario)
        lora_only = {k: v for k, v in tensors.items() if k.startswith(("layers.", "head."))}
        save_peft_adapter(
            folder, lora_only, family_of(model_type), settings, spec.source or f"random-init {spec.family}"
        )


CHECKPOINT_FILE = "state.safetensors"


def save_checkpoint(folder: Path, strategy: HeterogeneousStrategy, server_round: int) -> None:
    """Write the strategy state as ONE file, replaced atomically.

    Arrays and metadata (round, registry, algorithm state) share a safetensors file, written beside the old one
    and renamed over it: at every moment either the old or the new checkpoint exists, whole.
    """
    from safetensors.numpy import save_file

    arrays, meta = strategy.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / (CHECKPOINT_FILE + ".tmp")
    metadata = {"round": str(server_round), "meta": json.dumps(meta)}
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(staging), metadata=metadata)
    with staging.open("rb") as written:
        os.fsync(written.fileno())
    os.replace(staging, folder / CHECKPOINT_FILE)


def has_checkpoint(folder: Path) -> bool:
    return (folder / CHECKPOINT_FILE).is_file()


def _checkpoint_metadata(folder: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(folder / CHECKPOINT_FILE), framework="numpy") as stored:
        return stored.metadata()


def checkpoint_round(folder: Path) -> int:
    """The last round a checkpoint folder holds, 0 when it holds none (reads the metadata, not the arrays)."""
    return int(_checkpoint_metadata(folder)["round"]) if has_checkpoint(folder) else 0


def load_checkpoint(folder: Path, strategy: HeterogeneousStrategy) -> int:
    """Restore a strategy from :func:`save_checkpoint` output; returns the last completed round."""
    from safetensors.numpy import load_file

    metadata = _checkpoint_metadata(folder)
    completed = int(metadata["round"])
    strategy.load_state_dict(load_file(str(folder / CHECKPOINT_FILE)), json.loads(metadata["meta"]), completed)
    return completed


def summarize(rows: list[dict], rounds_completed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The headline numbers of a run from its metric rows."""
    phases = by_phase(rows)
    train, server = phases[TRAIN], phases[SERVER_EVAL]
    last_accuracy = {client: row["accuracy"] for client, row in last_by_client(phases[EVALUATE]).items()}
    per_client_train = group(train, "client")
    last_server_round = last_round(server)
    return {
        "rounds_completed": rounds_completed,
        "final_accuracy": mean_of(last_accuracy.values()),
        "global_accuracy": mean_of(r["accuracy"] for r in server if r["round"] == last_server_round),
        "adapter_bytes": mean_of(mean_of(r["adapter_bytes"] for r in rs) for rs in per_client_train.values()),
        "bytes_up_per_client_round": mean_of(r["bytes_up"] for r in train),
        "bytes_down_per_client_round": mean_of(r["bytes_down"] for r in train if r.get("bytes_down") is not None),
        "full_model_bytes": mean_of(mean_of(4 * r["model-parameters"] for r in rs) for rs in per_client_train.values()),
        "rejected_updates": len(phases[REJECTED]),
        "clients": {
            cid: {
                "accuracy": last_accuracy.get(cid),
                "train_loss_last_round": rs[-1]["train-loss"],
                "train_seconds_mean": mean_of(r["train-seconds"] for r in rs),
                "peak_memory_mb": max(r["peak-memory-mb"] for r in rs),
                "layers_last_round": rs[-1].get("layers"),
            }
            for cid, rs in sorted(per_client_train.items())
        },
        **(extra or {}),
    }


def library_versions() -> dict[str, str]:
    """Python and the libraries a run depends on, by version (a run's `versions.json`)."""
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
