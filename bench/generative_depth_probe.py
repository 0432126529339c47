"""Which layers should a partial-depth SmolLM2 client hold, so that its LoRA helps the full-depth global model?

Centralized, one seed, no Flower: SmolLM2-135M-Instruct on ``bbc-news-gen`` (the ``instruct`` scenario's news task,
200 examples; the server's 12 % test split). For each layer set, a client network (those layers + final norm +
the tied LM head) trains LoRA r=8 on q/v for ``--steps`` steps of batch 8 at lr ``--lr``; then the same LoRA is
loaded into the full 30-layer model. Reported per set: the client network's response-token perplexity before and
after, and the full model's perplexity with that LoRA, against the full model with none (``zero-shot``).

Why: with ``layers: 8`` a client holds layers 0-7, an early exit through the final norm and LM head. Its LoRA
learns to make those layers act as the last ones, and the global model it is averaged into gets worse. Results go
to ``bench/results/generative-depth-probe.json``.

Usage (from the repository root; ``PYTHONPATH=.`` imports this checkout's package)::

    PYTHONPATH=. python bench/generative_depth_probe.py                 # prefix / spread / top / ends, 8 layers
    PYTHONPATH=. python bench/generative_depth_probe.py --steps 8 --sets prefix8 top8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedbrick_flower.adapters.lora import adapter_tensors, load_adapter_tensors
from fedbrick_flower.assembly import build_network, scenario_lora, task_examples
from fedbrick_flower.clients.trainer import make_optimizer, train_steps
from fedbrick_flower.models import model_family
from fedbrick_flower.objectives import task_objective
from fedbrick_flower.scenario import parse_scenario

LAYER_SETS: dict[str, list[int]] = {
    "prefix8": list(range(8)),
    "spread8": [0, 4, 8, 12, 16, 20, 24, 29],
    "top8": list(range(22, 30)),
    "ends8": [0, 1, 2, 3, 26, 27, 28, 29],
}
RESULTS = Path(__file__).parent / "results" / "generative-depth-probe.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sets", nargs="+", default=list(LAYER_SETS), choices=list(LAYER_SETS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenario = parse_scenario(
        {
            "algorithm": "fedavg",
            "rounds": 1,
            "seed": 0,
            "models": {"s": {"source": "smollm2-135m"}},
            "tasks": {"news": {"dataset": "bbc-news-gen", "kind": "generative", "max_examples": 200}},
            "data": {"max_length": 112, "server_test_fraction": 0.12, "short_answer_tokens": 0},
            "train": {"lr": args.lr},
            "lora": {"rank": 8, "alpha": 16},
            "clients": [{"id": "c", "model": "s", "task": "news"}],
        }
    )
    tokenizer, device = "smollm2-135m", torch.device("cpu")
    objective = task_objective(scenario, "news", tokenizer)
    test = task_examples(scenario, "news", "server_test", None, tokenizer)
    train = task_examples(scenario, "news", "train", scenario.clients[0], tokenizer)

    def perplexity(layers: list[int] | None, tensors: dict | None = None, network=None) -> float:  # noqa: ANN001
        model = network or build_network(scenario, "s", "news", layers, scenario_lora(scenario))
        if tensors:
            load_adapter_tensors(model, model_family(model.backbone), tensors)
        return objective.score(model, test, 16, device)["perplexity"]

    results = {"steps": args.steps, "lr": args.lr, "test_examples": len(test), "zero_shot": perplexity(None)}
    for name in args.sets:
        layers = LAYER_SETS[name]
        network = build_network(scenario, "s", "news", layers, scenario_lora(scenario))
        before = perplexity(layers, network=network)
        optimizer = make_optimizer(network, args.lr, args.lr, 0.0)
        result = train_steps(
            network,
            train,
            steps=args.steps,
            batch_size=8,
            optimizer=optimizer,
            device=device,
            seed=1,
            loss_fn=objective.loss,
        )
        tensors = {k: v.detach().clone() for k, v in adapter_tensors(network, model_family(network.backbone)).items()}
        results[name] = {
            "layers": layers,
            "client_perplexity_before": before,
            "client_perplexity_after": perplexity(layers, network=network),
            "full_model_perplexity_with_its_lora": perplexity(None, tensors),
            "seconds_per_step": result.seconds / args.steps,
        }
        print(name, json.dumps(results[name]), flush=True)
        RESULTS.write_text(json.dumps({**results, "measured": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
