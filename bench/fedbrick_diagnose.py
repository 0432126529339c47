"""Why do FedBRICK and FedRA score the same server-side accuracy? A diagnosis of two finished runs.

Runs ``fedbrick`` and the FedRA baseline (the same scenario, seed and allocation; only the algorithm differs),
then compares their global models example by example on the server test split:

- how many predictions differ, and the number correct of each;
- the global model with and without its aggregated LoRA (LoRA B set back to zero: "head only"), which shows
  how much of the logits the LoRA deltas move compared with the head;
- how far the two runs' global LoRA factors and heads are apart (relative Frobenius distance), i.e. whether
  what the BRICKs change on the clients ever reaches the tensors the server evaluates;
- the per-layer distillation MSE before and after, per round (how much the server half moves the BRICKs).

Writes ``bench/results/fedbrick-diagnosis.json``. Usage::

    python bench/fedbrick_diagnose.py --rounds 3 [--set data.proxy_fraction=0.1 ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedbrick_flower import cli
from fedbrick_flower.assembly import build_global_model, task_examples
from fedbrick_flower.models import resolve_device
from fedbrick_flower.run_dir import CHECKPOINT_DIR, CHECKPOINT_FILE, read_metrics
from fedbrick_flower.scenario import load_scenario

RESULTS = Path(__file__).parent / "results" / "fedbrick-diagnosis.json"


def run(name: str, out: Path, overrides: list[str]) -> Path:
    """One ``fedbrick-flower run`` of the ``fedbrick`` scenario with extra overrides (skipped if finished)."""
    if not (out / "summary.json").exists():
        args = ["run", "fedbrick", "--out", str(out)]
        for item in overrides:
            args += ["--set", item]
        assert cli.main(args) == 0, f"{name} failed"
    return out


def global_tensors(run_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE))


def split(state: dict[str, np.ndarray], model: str, task: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(LoRA factors, head) of one model and task, under canonical names."""
    lora = {k[len(model) + 1 :]: v for k, v in state.items() if k.startswith(f"{model}/layers.")}
    head = {k[len(model) + len(task) + 2 :]: v for k, v in state.items() if k.startswith(f"{model}/{task}/head.")}
    return lora, head


@torch.no_grad()
def logits_of(scenario: Any, model: str, task: str, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    device = resolve_device("cpu")
    network = build_global_model(scenario, model, task, tensors, device).eval()
    examples = task_examples(scenario, task, "server_test", None, scenario.models[model].tokenizer_source)
    outputs = [
        network(examples.input_ids[i : i + 64], examples.attention_mask[i : i + 64]).float()
        for i in range(0, len(examples), 64)
    ]
    return torch.cat(outputs).numpy(), examples.labels.numpy()


def relative_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    keys = sorted(set(a) & set(b))
    num = sum(float(np.sum((a[k] - b[k]) ** 2)) for k in keys)
    den = sum(float(np.sum(a[k] ** 2)) for k in keys)
    return float(np.sqrt(num / den)) if den > 0 else float("nan")


def head_only(lora: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same LoRA with every B at zero: the adapters contribute nothing, the head stays."""
    return {k: (np.zeros_like(v) if k.endswith("lora_B") else v) for k, v in lora.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/fedbrick-diagnosis"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(2)
    common = [f"rounds={args.rounds}", *args.set]
    started = time.time()
    runs = {
        "fedbrick": run("fedbrick", args.out / "fedbrick", common),
        "fedra": run(
            "fedra", args.out / "fedra", [*common, "algorithm=fedavg", "algorithm_params={resample_layers: true}"]
        ),
    }
    scenario = load_scenario(str(runs["fedbrick"] / "scenario.input.yaml"))
    model, task = next(iter(scenario.models)), next(iter(scenario.tasks))
    report: dict[str, Any] = {"scenario": scenario.raw, "rounds": args.rounds, "model": model, "task": task}
    logits, heads, loras = {}, {}, {}
    for name, run_dir in runs.items():
        lora, head = split(global_tensors(run_dir), model, task)
        loras[name], heads[name] = lora, head
        full, labels = logits_of(scenario, model, task, {**lora, **head})
        bare, _ = logits_of(scenario, model, task, {**head_only(lora), **head})
        logits[name] = full
        report[name] = {
            "correct": int((full.argmax(1) == labels).sum()),
            "correct_head_only": int((bare.argmax(1) == labels).sum()),
            "examples": len(labels),
            # How much the aggregated LoRA moves the logits, relative to the logits themselves.
            "lora_logit_share": float(np.linalg.norm(full - bare) / np.linalg.norm(full)),
            "predictions_changed_by_lora": int((full.argmax(1) != bare.argmax(1)).sum()),
            "server_accuracy_per_round": [r["accuracy"] for r in read_metrics(run_dir) if r["phase"] == "server-eval"],
        }
    predictions = {name: value.argmax(1) for name, value in logits.items()}
    report["predictions_differing"] = int((predictions["fedbrick"] != predictions["fedra"]).sum())
    report["lora_relative_distance"] = relative_distance(loras["fedra"], loras["fedbrick"])
    report["head_relative_distance"] = relative_distance(heads["fedra"], heads["fedbrick"])
    distill = [r for r in read_metrics(runs["fedbrick"]) if r["phase"] == "distill"]
    report["distill_mse"] = [{k: r[k] for k in ("round", "layer", "mse_before", "mse_after", "steps")} for r in distill]
    report["wall_seconds"] = time.time() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("scenario", "distill_mse")}, indent=2))


if __name__ == "__main__":
    main()
