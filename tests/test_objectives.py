"""Tests for the task-kind dispatch: one objective per kind encodes, builds the network, the loss and the scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fedbrick_flower.adapters.lora import LoraSettings, adapter_tensors
from fedbrick_flower.assembly import build_network, task_examples
from fedbrick_flower.data import IGNORE_INDEX
from fedbrick_flower.models import CausalLM, SequenceClassifier, model_family
from fedbrick_flower.objectives import (
    ClassificationObjective,
    GenerativeObjective,
    classification_loss,
    response_loss,
    task_objective,
)
from fedbrick_flower.scenario import ScenarioError, load_scenario


def _scenario(**overrides):
    # The smoke scenario with a second, generative task on the same tiny Llama.
    return load_scenario(
        "smoke",
        {
            "tasks.gen": {"dataset": "drug-sentiment-gen", "kind": "generative", "max_examples": 60},
            "clients.2.task": "gen",
            "data.max_length": 64,
            **overrides,
        },
    )


def test_the_task_kind_picks_the_objective_and_the_network() -> None:
    # Prepare
    scenario = _scenario()

    # Execute
    classifier = build_network(scenario, "tiny-llama", "bbc", [0, 1], LoraSettings(rank=2))
    generator = build_network(scenario, "tiny-llama", "gen", [0, 1], LoraSettings(rank=2))

    # Assert: each kind has its own objective; the classifier sends a head, the causal LM sends LoRA only.
    bbc, gen = task_objective(scenario, "bbc", "minilm"), task_objective(scenario, "gen", "minilm")
    assert isinstance(bbc, ClassificationObjective) and isinstance(gen, GenerativeObjective)
    assert bbc.loss.__func__ is ClassificationObjective.loss and gen.head_schema(256) == {}
    assert isinstance(classifier, SequenceClassifier) and isinstance(generator, CausalLM)
    assert any(name.startswith("head.") for name in adapter_tensors(classifier, model_family(classifier.backbone)))
    assert all(name.startswith("layers.") for name in adapter_tensors(generator, model_family(generator.backbone)))


def test_each_objective_loss_is_its_kinds_loss() -> None:
    # Prepare
    scenario = _scenario()
    generator = build_network(scenario, "tiny-llama", "gen", [0, 1], LoraSettings(rank=2))
    examples = task_examples(scenario, "gen", "train", scenario.client("llama-edge"), "minilm").subset([0, 1])
    batch = {"input_ids": examples.input_ids, "attention_mask": examples.attention_mask, "labels": examples.labels}

    # Execute
    loss = task_objective(scenario, "gen", "minilm").loss(generator, batch)

    # Assert: the generative objective's loss is the response loss; the classification loss would reject (N, T)
    # token labels.
    torch.testing.assert_close(loss, response_loss(generator, batch))
    with pytest.raises((RuntimeError, ValueError)):
        classification_loss(generator, batch)


def test_generative_examples_and_scores_go_through_the_objective() -> None:
    # Prepare
    scenario = _scenario()
    objective = task_objective(scenario, "gen", "minilm")
    edge = scenario.client("llama-edge")
    examples = task_examples(scenario, "gen", "test", edge, "minilm")
    network = build_network(scenario, "tiny-llama", "gen", [0, 1], LoraSettings(rank=2))

    # Execute
    scores = objective.score(network, examples, 8, torch.device("cpu"))

    # Assert: labels are per token; answers (one word + [SEP]) are short, so accuracy is generated exact match.
    assert examples.labels.shape == examples.input_ids.shape
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))
    assert scores["accuracy"] == scores["exact-match"]


def test_a_generative_task_reads_prompt_and_response_columns_of_the_users_file(tmp_path: Path) -> None:
    # Prepare: the user's own JSONL with its own column names.
    path = tmp_path / "pairs.jsonl"
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(40)]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    task = {"train": str(path), "kind": "generative", "prompt": "q", "response": "a"}
    scenario = _scenario(**{"tasks.gen": task})

    # Execute
    examples = task_examples(scenario, "gen", "train", scenario.client("llama-edge"), "minilm")

    # Assert: every row is "question i\n" then the labelled "answer i [SEP]".
    assert len(examples) > 0
    for ids, labels in zip(examples.input_ids, examples.labels, strict=True):
        answer = ids[labels != IGNORE_INDEX]
        text = task_objective(scenario, "gen", "minilm").tokenizer.decode(answer, skip_special_tokens=True)
        assert text.startswith("answer ")


def test_a_packaged_dataset_of_the_other_kind_is_refused_naming_the_field() -> None:
    with pytest.raises(ScenarioError, match=r"tasks\.gen\.kind: dataset 'chat-pairs' is a generative task"):
        _scenario(**{"tasks.gen": {"dataset": "chat-pairs"}})
