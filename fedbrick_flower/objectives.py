"""Task objectives: everything that depends on a task's kind, chosen once from ``TaskSpec.kind``.

A :class:`TaskObjective` says how a task's examples are encoded, which network sits on the backbone, what the
training loss is and how the network is scored. Both halves and every algorithm go through it (assembly builds
networks and examples with it, the trainer minimises its ``loss``, clients and the server score with its
``score``), so no other module branches on the task kind.

- ``classification``: a pooled linear head over the label set, cross-entropy, accuracy.
- ``generative``: the backbone's own LM head (frozen), causal-LM cross-entropy on the response tokens only,
  perplexity, and exact match of greedy answers where answers are short.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from .adapters.lora import head_schema
from .cache import file_memo
from .data import EncodedExamples, TextDataset, encode_examples, encode_generative, task_files, task_labels
from .data.generative import end_token_id
from .models import ModelSpec, SequenceClassifier, load_tokenizer, stable_seed
from .models.causal_lm import causal_lm
from .scenario import Scenario
from .scoring import evaluate, evaluate_generative, response_logits

Batch = dict[str, torch.Tensor]
Shape = tuple[int, ...]


class TaskObjective:
    """The kind-specific half of a task, bound to a scenario, a task and the tokenizer of the model that runs it.

    Parameters
    ----------
    scenario : Scenario
        The run's scenario (data settings, seed).
    task : str
        The scenario's task key.
    tokenizer_source : str
        Tokenizer of the model (examples are encoded per tokenizer).
    """

    kind: ClassVar[str]

    def __init__(self, scenario: Scenario, task: str, tokenizer_source: str) -> None:
        self.scenario = scenario
        self.task = task
        self.tokenizer_source = tokenizer_source

    @functools.cached_property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.tokenizer_source)

    def encode(self, rows: TextDataset, what: str) -> EncodedExamples:
        """Tokenized ``rows``, cut or dropped at ``data.max_length`` as ``data.overlong`` says (``what`` names
        them in the log)."""
        raise NotImplementedError

    def network(self, backbone: nn.Module, model: ModelSpec) -> nn.Module:
        """Put the task's output on a (truncated, LoRA-injected) backbone."""
        raise NotImplementedError

    def head_schema(self, hidden_size: int) -> dict[str, Shape]:
        """Names and shapes of the trained task head that travels with the adapters (none for generation)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch, step: int = 0) -> torch.Tensor:
        """The training loss of one batch (``step`` is unused here; it is the trainer's ``LossFn`` signature)."""
        raise NotImplementedError

    def score(
        self, model: nn.Module, examples: EncodedExamples, batch_size: int, device: torch.device
    ) -> dict[str, float]:
        """Metrics of ``model`` on ``examples``: at least ``accuracy`` and ``loss``."""
        raise NotImplementedError


class ClassificationObjective(TaskObjective):
    """Pooled linear head, cross-entropy over the labels, accuracy."""

    kind = "classification"

    @property
    def num_labels(self) -> int:
        return len(task_labels(self.scenario.tasks[self.task]) or ())

    def encode(self, rows: TextDataset, what: str) -> EncodedExamples:
        settings = self.scenario.data
        return encode_examples(
            self.tokenizer,
            rows.texts,
            rows.strata,
            settings.max_length,
            text_pairs=rows.text_pairs,
            overlong=settings.overlong,
            origins=rows.origins,
            what=what,
        )

    def network(self, backbone: nn.Module, model: ModelSpec) -> SequenceClassifier:
        """A head seeded per (model, task), so every client of a task starts from the same head."""
        network = SequenceClassifier(backbone, self.num_labels)
        network.reset_head(stable_seed(self.scenario.seed, model.key, self.task, "head"))
        return network

    def head_schema(self, hidden_size: int) -> dict[str, Shape]:
        return head_schema(self.num_labels, hidden_size)

    def loss(self, model: nn.Module, batch: Batch, step: int = 0) -> torch.Tensor:
        return classification_loss(model, batch, step)

    def score(
        self, model: nn.Module, examples: EncodedExamples, batch_size: int, device: torch.device
    ) -> dict[str, float]:
        accuracy, loss = evaluate(model, examples, batch_size, device)
        return {"accuracy": accuracy, "loss": loss}


class GenerativeObjective(TaskObjective):
    """Causal-LM fine-tuning: loss on the response tokens only, perplexity, exact match of short answers."""

    kind = "generative"

    def encode(self, rows: TextDataset, what: str) -> EncodedExamples:
        settings = self.scenario.data
        return encode_generative(
            self.tokenizer,
            rows.texts,
            rows.responses or (),
            settings.max_length,
            overlong=settings.overlong,
            origins=rows.origins,
            what=what,
        )

    def network(self, backbone: nn.Module, model: ModelSpec) -> nn.Module:
        return causal_lm(backbone, model, self.scenario.seed)

    def head_schema(self, hidden_size: int) -> dict[str, Shape]:
        return {}  # the LM head is frozen and never sent

    def loss(self, model: nn.Module, batch: Batch, step: int = 0) -> torch.Tensor:
        return response_loss(model, batch, step)

    def score(
        self, model: nn.Module, examples: EncodedExamples, batch_size: int, device: torch.device
    ) -> dict[str, float]:
        return evaluate_generative(
            model,
            examples,
            batch_size,
            device,
            end_token=end_token_id(self.tokenizer),
            short_answer_tokens=self.scenario.data.short_answer_tokens,
            decode=functools.partial(self.tokenizer.decode, skip_special_tokens=True),
        )


def classification_loss(model: nn.Module, batch: Batch, step: int = 0) -> torch.Tensor:
    """Cross-entropy of the classifier's logits."""
    logits = model(batch["input_ids"], batch["attention_mask"])
    return F.cross_entropy(logits, batch["labels"])


def response_loss(model: nn.Module, batch: Batch, step: int = 0) -> torch.Tensor:
    """Mean next-token cross-entropy over the response tokens of the batch (prompt and padding carry -100)."""
    logits, targets = response_logits(model, batch)
    return F.cross_entropy(logits, targets)


OBJECTIVES: dict[str, type[TaskObjective]] = {cls.kind: cls for cls in (ClassificationObjective, GenerativeObjective)}


@file_memo(
    maxsize=32,
    files=lambda scenario, task, tokenizer_source: (*task_files(scenario.tasks[task]), tokenizer_source),
)
def task_objective(scenario: Scenario, task: str, tokenizer_source: str) -> TaskObjective:
    """The objective of ``task`` for a model with this tokenizer (derived from the scenario, memoised)."""
    return OBJECTIVES[scenario.tasks[task].kind](scenario, task, tokenizer_source)
