"""Packaged generative (prompt -> response) tasks, built offline from the packaged corpora. No torch.

- ``chat-pairs``: consecutive turns of the English chatterbot conversations as instruction -> response pairs;
- ``bbc-news-gen``, ``drug-sentiment-gen``, ``drug-condition-gen``, ``chatterbot-gen``: the packaged label sets as
  generation, each with its own instruction that lists the options; the answer is the label word, so accuracy is
  measured by generating it. Several of them on one model make a FLAN-style multi-task mix (FedBip's NLP protocol).

Each is a :class:`~fedbrick_flower.data.tasks.TextDataset` with ``texts`` (the prompts) and ``responses``. Its
``labels`` are a stratum per example (the label of a classification-as-generation task, the topic file of a chat
pair), so stratified holdouts and label-based partitioners split it like a classification task.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedbrick_flower.data.tasks import TASK_NAMES, TextDataset, _normalize_whitespace, _package_dir, load_task

# The text of a classification-as-generation example is cut to this many words: a BBC article runs to ~400
# words and its topic is readable from its start. Keeps prompts inside a short max_length.
MAX_INPUT_WORDS = 24


@dataclass(frozen=True)
class Instruction:
    """How one packaged label set becomes a generative task: the instruction shown before each text."""

    source: str
    instruction: str


# Task name -> its label set and instruction (FLAN-style: one phrasing per task, the options spelled out).
CLASSIFICATION_AS_GENERATION: dict[str, Instruction] = {
    "bbc-news-gen": Instruction("bbc-news", "What is the topic of this news article? Answer with one of: {options}."),
    "drug-sentiment-gen": Instruction(
        "drug-sentiment", "Is this drug review negative, neutral or positive? Answer with one of: {options}."
    ),
    "drug-condition-gen": Instruction(
        "drug-condition", "Which condition is this drug review about? Answer with one of: {options}."
    ),
    "chatterbot-gen": Instruction(
        "chatterbot", "Which conversation topic does this message belong to? Answer with one of: {options}."
    ),
}
CHAT_PAIRS = "chat-pairs"
GENERATIVE_TASK_NAMES: tuple[str, ...] = (CHAT_PAIRS, *CLASSIFICATION_AS_GENERATION)
# Every packaged dataset a task may name (``tasks.*.dataset``).
DATASET_NAMES: tuple[str, ...] = (*TASK_NAMES, *GENERATIVE_TASK_NAMES)


def packaged_kind(name: str) -> str | None:
    """The kind of a packaged dataset (``classification`` or ``generative``); None for an unknown name."""
    if name in TASK_NAMES:
        return "classification"
    return "generative" if name in GENERATIVE_TASK_NAMES else None


def load_packaged(name: str) -> TextDataset:
    """Any packaged dataset by name: a classification task or a generative one.

    Raises
    ------
    ValueError
        If ``name`` is neither one of :data:`~fedbrick_flower.data.tasks.TASK_NAMES` nor of
        :data:`GENERATIVE_TASK_NAMES`.
    """
    if name in TASK_NAMES:
        return load_task(name)
    return load_instruction_task(name)


@functools.cache
def load_instruction_task(name: str) -> TextDataset:
    """Load a packaged generative task (cached).

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`GENERATIVE_TASK_NAMES`.
    """
    if name == CHAT_PAIRS:
        return _load_chat_pairs()
    if name in CLASSIFICATION_AS_GENERATION:
        return classification_as_generation(name, load_task(CLASSIFICATION_AS_GENERATION[name].source))
    raise ValueError(f"unknown dataset name {name!r}; expected one of {DATASET_NAMES}")


def classification_as_generation(name: str, dataset: TextDataset) -> TextDataset:
    """Turn a labelled dataset into instruction -> label-word pairs (the stratum is the label)."""
    options = ", ".join(dataset.label_names)
    instruction = CLASSIFICATION_AS_GENERATION[name].instruction.format(options=options)
    labels = dataset.strata
    return TextDataset(
        name=name,
        texts=tuple(f"{instruction}\n\n{_first_words(text, MAX_INPUT_WORDS)}" for text in dataset.texts),
        labels=labels,
        label_names=dataset.label_names,
        responses=tuple(dataset.label_names[label] for label in labels),
    )


def _first_words(text: str, count: int) -> str:
    words = text.split()
    return " ".join(words[:count]) + (" ..." if len(words) > count else "")


def _load_chat_pairs() -> TextDataset:
    """Consecutive turns of every English chatterbot conversation, distinct pairs, stratified by topic."""
    root = _package_dir("chatterbot_corpus") / "data" / "english"
    pairs: dict[tuple[str, str], int] = {}
    topics: list[str] = []
    for path in sorted(root.glob("*.yml")):
        topics.append(path.stem)
        for prompt, response in _turn_pairs(path):
            # The first topic a pair occurs in keeps it (tech_support repeats its lines ~50 times).
            pairs.setdefault((prompt, response), len(topics) - 1)
    return TextDataset(
        name=CHAT_PAIRS,
        texts=tuple(prompt for prompt, _ in pairs),
        labels=tuple(pairs.values()),
        label_names=tuple(topics),
        responses=tuple(response for _, response in pairs),
    )


def _turn_pairs(path: Path) -> list[tuple[str, str]]:
    """(turn, next turn) of every conversation of one topic file, whitespace normalised, empty turns left out."""
    found = []
    for conversation in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
        # A conversation that is not a list of strings is a YAML slip of the corpus (see tasks.py): skipped.
        if not isinstance(conversation, list) or not all(isinstance(turn, str) for turn in conversation):
            continue
        turns = [_normalize_whitespace(turn) for turn in conversation]
        found += [(prompt, response) for prompt, response in zip(turns, turns[1:], strict=False) if prompt and response]
    return found
