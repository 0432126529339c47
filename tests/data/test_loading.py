"""Tests for task specs -> examples: label sets declared or found, test files, devices' own files."""

import json
from pathlib import Path

import pytest

from fedbrick_flower.data import DataError, local_dataset, local_labels, task_dataset, task_labels
from fedbrick_flower.scenario import TaskSpec


def write_jsonl(path: Path, rows: list[tuple[str, object]]) -> str:
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", [("a", "pos"), ("b", "neg"), ("c", "pos")]),
        "test": write_jsonl(tmp_path / "test.jsonl", [("d", "neu")]),
        "device": write_jsonl(tmp_path / "device.jsonl", [("e", "neg"), ("f", "neg")]),
        "stray": write_jsonl(tmp_path / "stray.jsonl", [("g", "neg"), ("h", "spam")]),
    }


def test_labels_are_found_in_train_and_test_files_when_not_declared(files: dict[str, str]) -> None:
    # Prepare
    spec = TaskSpec(train=files["train"], test=files["test"])

    # Execute
    dataset, test_indices = task_dataset("reviews", spec)

    # Assert
    assert task_labels(spec) == ("neg", "neu", "pos")
    assert dataset.texts == ("a", "b", "c", "d") and dataset.labels == (2, 0, 2, 1)
    assert test_indices == (3,)


def test_declared_labels_set_the_ids_and_an_undeclared_label_names_file_and_row(files: dict[str, str]) -> None:
    # Prepare
    declared = TaskSpec(train=files["train"], labels=("pos", "neg"))
    with_test = TaskSpec(train=files["train"], test=files["test"], labels=("pos", "neg"))

    # Execute
    dataset, _ = task_dataset("reviews", declared)
    with pytest.raises(DataError) as error:
        task_dataset("reviews", with_test)

    # Assert
    assert dataset.labels == (0, 1, 0) and dataset.label_names == ("pos", "neg")
    assert str(error.value).startswith(f"{files['test']} row 1: field 'label': 'neu' is not among the task's labels")


def test_numeric_declared_labels_match_numeric_file_labels(tmp_path: Path) -> None:
    # Prepare: the file's labels are JSON integers, the declared ones YAML integers
    path = write_jsonl(tmp_path / "t.jsonl", [("a", 1), ("b", 0)])
    spec = TaskSpec(train=path, labels=(0, 1))

    # Execute
    dataset, _ = task_dataset("t", spec)

    # Assert
    assert dataset.label_names == ("0", "1") and dataset.labels == (1, 0)


def test_a_device_reports_its_own_labels_and_maps_them_with_the_tasks(files: dict[str, str]) -> None:
    # Prepare
    spec = TaskSpec(train=files["train"])

    # Execute
    labels = local_labels(spec, files["device"], None)
    dataset, num_test = local_dataset("reviews", spec, files["device"], files["device"])

    # Assert: ids follow the task's set ("neg" is 0 of neg/pos), the test file's rows come last
    assert labels == ("neg",)
    assert dataset.labels == (0, 0, 0, 0) and num_test == 2
    assert local_labels(spec, files["stray"], None) == ("neg", "spam")
    with pytest.raises(DataError, match="stray.jsonl row 2: field 'label': 'spam' is not among"):
        local_dataset("reviews", spec, files["stray"], None)


def test_a_task_without_data_needs_declared_labels(files: dict[str, str]) -> None:
    # Execute / Assert
    assert task_labels(TaskSpec(labels=("a", "b"))) == ("a", "b")
    assert task_labels(TaskSpec(kind="generative")) is None
    with pytest.raises(DataError, match="declare its labels"):
        task_labels(TaskSpec())
    with pytest.raises(DataError, match="names no data of its own"):
        task_dataset("bare", TaskSpec(labels=("a",)))


def test_a_file_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    # Prepare: the same path, read once (memoized), then rewritten with other rows and a different size.
    path = write_jsonl(tmp_path / "t.jsonl", [("a", "pos"), ("b", "neg")])
    spec = TaskSpec(train=path)
    first, _ = task_dataset("t", spec)
    device_first, _ = local_dataset("t", spec, path, None)
    write_jsonl(tmp_path / "t.jsonl", [("a", "pos"), ("b", "neg"), ("c", "neg")])

    # Execute
    second, _ = task_dataset("t", spec)
    device_second, _ = local_dataset("t", spec, path, None)
    again, _ = task_dataset("t", spec)

    # Assert: the new rows are read, and an unchanged file is served from the memo (the very same object).
    assert first.texts == ("a", "b") and second.texts == ("a", "b", "c")
    assert device_first.texts == ("a", "b") and device_second.texts == ("a", "b", "c")
    assert again is second
