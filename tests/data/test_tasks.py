"""Tests for the offline text-classification tasks."""

import importlib.util
import re
from collections import Counter

import pytest

from fedbrick_flower.data import (
    SENTIMENT_LABELS,
    TASK_NAMES,
    TextDataset,
    load_task,
    sentiment_label,
)


def _counts(dataset: TextDataset) -> list[int]:
    counts = Counter(dataset.labels)
    return [counts[label] for label in range(dataset.num_labels)]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_is_well_formed(name: str) -> None:
    # Execute
    dataset = load_task(name)

    # Assert
    assert dataset.name == name
    assert len(dataset.texts) == len(dataset.labels) > 0
    assert all(isinstance(text, str) and text for text in dataset.texts)
    assert set(dataset.labels) == set(range(dataset.num_labels))
    # Whitespace is collapsed: no newlines, tabs or double spaces survive.
    assert not any(re.search(r"\s\s|[\n\r\t]", text) for text in dataset.texts)


def test_bbc_news_has_five_sorted_classes_and_all_articles() -> None:
    # Execute
    dataset = load_task("bbc-news")

    # Assert
    assert dataset.label_names == (
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    )
    assert len(dataset) == 2225
    assert _counts(dataset) == [510, 386, 417, 511, 401]
    # Class folders and files are read in name order: labels are grouped and the
    # first text is business/001.txt.
    assert list(dataset.labels) == sorted(dataset.labels)
    assert dataset.texts[0].startswith("Ad sales boost Time Warner profit")


def test_drug_sentiment_reads_both_files_with_expected_balance() -> None:
    # Execute
    dataset = load_task("drug-sentiment")

    # Assert
    assert dataset.label_names == SENTIMENT_LABELS
    assert len(dataset) == 600 + 379
    assert _counts(dataset) == [256, 90, 633]
    assert 0.6 < _counts(dataset)[2] / len(dataset) < 0.7


def test_drug_reviews_are_unquoted_and_unescaped() -> None:
    # Execute
    texts = load_task("drug-sentiment").texts

    # Assert
    assert not any(re.search(r"&(#\d+|[a-z]+);", text) for text in texts)
    assert not any(text.startswith('"') and text.endswith('"') for text in texts)
    assert any("didn't" in text for text in texts)


@pytest.mark.parametrize(
    ("rating", "expected"),
    [("1", 0), ("4", 0), ("5", 1), ("6", 1), ("7", 2), ("10", 2), ("neutral", 1)],
)
def test_sentiment_label_thresholds(rating: str, expected: int) -> None:
    # Execute
    label = sentiment_label(rating)

    # Assert
    assert label == expected


def test_drug_condition_keeps_the_eight_most_frequent_conditions() -> None:
    # Execute
    dataset = load_task("drug-condition")

    # Assert
    counts = _counts(dataset)
    assert dataset.num_labels == 8
    assert dataset.label_names[0] == "Birth Control"
    assert counts == sorted(counts, reverse=True)
    assert sum(counts) == len(dataset) == 437


def test_chatterbot_keeps_eight_largest_topics_without_shared_lines() -> None:
    # Prepare
    greetings = "Hello"  # said in several topics, so it must be dropped everywhere

    # Execute
    dataset = load_task("chatterbot")

    # Assert
    counts = _counts(dataset)
    assert dataset.num_labels == 8
    assert dataset.label_names[:2] == ("trivia", "emotion")
    assert counts == sorted(counts, reverse=True)
    # No duplicates at all, hence also no text labelled with two topics.
    assert len(set(dataset.texts)) == len(dataset.texts) == 1464
    assert greetings not in dataset.texts


def test_load_task_is_cached() -> None:
    # Execute
    first, second = load_task("drug-sentiment"), load_task("drug-sentiment")

    # Assert
    assert first is second


def test_unknown_task_names_the_value_and_the_choices() -> None:
    # Execute
    with pytest.raises(ValueError) as error:
        load_task("imdb")

    # Assert
    assert "'imdb'" in str(error.value)
    assert all(name in str(error.value) for name in TASK_NAMES)


def test_missing_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "chatterbot_corpus" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    load_task.cache_clear()

    # Execute
    with pytest.raises(ModuleNotFoundError) as error:
        load_task("chatterbot")

    # Assert
    assert "pip install --no-deps chatterbot-corpus" in str(error.value)


@pytest.mark.parametrize(
    ("texts", "labels"),
    [(("a", "b"), (0,)), (("a", "b"), (0, 2))],
    ids=["length-mismatch", "label-out-of-range"],
)
def test_text_dataset_rejects_inconsistent_fields(texts: tuple[str, ...], labels: tuple[int, ...]) -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        TextDataset(name="toy", texts=texts, labels=labels, label_names=("x", "y"))
