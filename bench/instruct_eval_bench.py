"""``instruct``'s server evaluation with and without the KV cache: seconds and identical answers.

A reduced run: no federation and no training. The server's evaluation of the ``instruct`` scenario (SmolLM2-135M,
30 layers, full depth) is timed per task exactly as :class:`~fedbrick_flower.evaluation.GlobalModelEvaluator` runs
it, on the global model with the seeded initial adapters (LoRA B = 0: the pretrained model), twice: with the KV
cache (the code as it is: one pass per batch gives the loss and the prompts' cache, then one token per step) and with
it switched off (a loss pass, then every decoding step recomputes the sequences, as before issue 24). The scores and
every greedy answer must be the same.

Usage::

    python bench/instruct_eval_bench.py            # every task of instruct
    python bench/instruct_eval_bench.py --tasks topic

Writes ``bench/results/instruct-eval.json`` (``throughput_bench.py --targets`` reads it). The machine is shared:
seconds are upper bounds; the speed-up is measured back to back in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fedbrick_flower import scoring
from fedbrick_flower.assembly import initial_adapters, scenario_lora
from fedbrick_flower.evaluation import GlobalModelEvaluator
from fedbrick_flower.models import CausalLM
from fedbrick_flower.scenario import load_scenario

RESULTS = Path(__file__).resolve().parent / "results" / "instruct-eval.json"


@contextlib.contextmanager
def without_cache() -> Iterator[None]:
    """Every :class:`CausalLM` decodes without a KV cache inside the block (the decoding before issue 24)."""
    original = CausalLM.kv_cache

    @contextlib.contextmanager
    def none(self: CausalLM, length: int) -> Iterator[None]:
        yield None

    CausalLM.kv_cache = none  # type: ignore[method-assign]
    try:
        yield
    finally:
        CausalLM.kv_cache = original  # type: ignore[method-assign]


@contextlib.contextmanager
def recorded_answers(store: list[list[int]]) -> Iterator[None]:
    """Keep every greedy answer the scoring produces inside the block."""
    original = scoring.losses_and_answers

    def recording(*args: Any, **kwargs: Any) -> tuple[float, int, int, list[list[int]]]:
        result = original(*args, **kwargs)
        store.extend(result[3])
        return result

    scoring.losses_and_answers = recording
    try:
        yield
    finally:
        scoring.losses_and_answers = original


def timed(evaluator: GlobalModelEvaluator, task: str, tensors: dict, cached: bool) -> dict[str, Any]:
    answers: list[list[int]] = []
    context = contextlib.nullcontext() if cached else without_cache()
    with context, recorded_answers(answers):
        started = time.perf_counter()
        scores = evaluator.evaluate("smollm2", task, tensors)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "scores": scores, "answers": answers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", help="tasks of instruct (default: all)")
    args = parser.parse_args(argv)
    scenario = load_scenario("instruct")
    evaluator = GlobalModelEvaluator(scenario, "cpu")
    load_before = list(os.getloadavg())
    tasks = {}
    for task in args.tasks or list(scenario.tasks):
        tensors = initial_adapters(scenario, "smollm2", task, scenario_lora(scenario))
        evaluator.evaluate("smollm2", task, tensors)  # warm: model load and tokenisation are not what is compared
        cached = timed(evaluator, task, tensors, cached=True)
        uncached = timed(evaluator, task, tensors, cached=False)
        tasks[task] = {
            "seconds_with_cache": cached["seconds"],
            "seconds_without_cache": uncached["seconds"],
            "speedup": uncached["seconds"] / cached["seconds"],
            "greedy_answers": len(cached["answers"]),
            "identical_answers": cached["answers"] == uncached["answers"],
            "identical_scores": cached["scores"] == uncached["scores"],
            "scores": cached["scores"],
        }
        print(task, json.dumps({k: v for k, v in tasks[task].items() if k != "scores"}), flush=True)
    generated = [t for t in tasks.values() if t["greedy_answers"]]
    record = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "what": "GlobalModelEvaluator.evaluate per task, full-depth SmolLM2-135M with its seeded initial adapters, "
        "CPU, eval_batch_size of the scenario; reduced run (no federation, no training)",
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "tasks": tasks,
        "total_seconds_with_cache": sum(t["seconds_with_cache"] for t in tasks.values()),
        "total_seconds_without_cache": sum(t["seconds_without_cache"] for t in tasks.values()),
        "speedup_where_answers_are_generated": (
            sum(t["seconds_without_cache"] for t in generated) / sum(t["seconds_with_cache"] for t in generated)
            if generated
            else None
        ),
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
