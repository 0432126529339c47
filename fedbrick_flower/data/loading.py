"""A task spec -> its examples and label set; a device's own files -> its examples.

The spec is a ``scenario.TaskSpec`` (read by attribute, so this layer does not import the scenario). Loading
is memoized per process: the same files give the same examples in every process that reads them. The memos key on
each file's size and modification time as well as its path, so a file rewritten in place is read again.
"""

from __future__ import annotations

import functools
from typing import Any

from fedbrick_flower.data.instructions import load_packaged
from fedbrick_flower.data.sources import (
    Columns,
    DataError,
    FileStamp,
    RawExamples,
    file_stamp,
    label_set,
    read_file,
    read_hf_dataset,
    spec_stamps,
    to_dataset,
)
from fedbrick_flower.data.tasks import TextDataset


def task_labels(spec: Any) -> tuple[str, ...] | None:
    """The task's label names in class-id order: declared, the packaged set, or found in its data.

    Returns None for an unlabelled task (generative, without a label field).

    Raises
    ------
    DataError
        For a classification task with neither declared labels nor data of its own.
    """
    if spec.labels is not None:
        return tuple(spec.labels)
    if spec.dataset is not None:
        return load_packaged(spec.dataset).label_names or None
    if Columns.of(spec).label is None:
        return None
    if not spec.sources:
        raise DataError("the task names no data and declares no labels; declare its labels (tasks.<name>.labels)")
    return label_set([part for part in _raw_parts(spec, spec_stamps(spec)) if part is not None], None)


def task_dataset(name: str, spec: Any) -> tuple[TextDataset, tuple[int, ...] | None]:
    """All of a task's own examples, and which of them came from its test file or split.

    Parameters
    ----------
    name : str
        The task's key in the scenario.
    spec : TaskSpec
        Where its examples come from.

    Returns
    -------
    dataset : TextDataset
        The train examples followed by the test examples.
    test_indices : tuple of int or None
        Positions of the test examples; None when the task has no test file (the server holds its test split
        out of the examples).

    Raises
    ------
    DataError
        For a task without data of its own, and every file and row error.
    """
    return _task_dataset(name, spec, spec_stamps(spec))


@functools.lru_cache(maxsize=8)
def _task_dataset(name: str, spec: Any, stamps: tuple[FileStamp, ...]) -> tuple[TextDataset, tuple[int, ...] | None]:
    if spec.dataset is not None:
        return load_packaged(spec.dataset), None
    if not spec.sources:
        raise DataError(f"task {name!r} names no data of its own: its examples live on the devices")
    train, test = _raw_parts(spec, stamps)
    labels, field = task_labels(spec), Columns.of(spec).label
    dataset = to_dataset(name, train, labels, field or "label")
    if test is None:
        return dataset, None
    return dataset.concat(to_dataset(name, test, labels, field or "label")), tuple(
        range(len(train), len(train) + len(test))
    )


def task_files(spec: Any) -> tuple[str | None, ...]:
    """The local paths a task's examples may come from (its files, or a saved Hugging Face dataset folder)."""
    return (spec.train, spec.test, spec.hf_dataset)


@functools.lru_cache(maxsize=8)
def _raw_parts(spec: Any, stamps: tuple[FileStamp, ...]) -> tuple[RawExamples, RawExamples | None]:
    columns = Columns.of(spec)
    if spec.train is not None:
        return read_file(spec.train, columns), read_file(spec.test, columns) if spec.test is not None else None
    test_split = spec.hf_test_split
    return (
        read_hf_dataset(spec.hf_dataset, spec.hf_split, columns, spec.hf_config),
        read_hf_dataset(spec.hf_dataset, test_split, columns, spec.hf_config) if test_split is not None else None,
    )


def local_raw(spec: Any, train: str, test: str | None) -> tuple[RawExamples, RawExamples | None]:
    """A device's own files, read with its task's columns (labels as written, not yet checked)."""
    return _local_raw(spec, train, test, file_stamp(train), file_stamp(test))


@functools.lru_cache(maxsize=8)
def _local_raw(
    spec: Any, train: str, test: str | None, train_stamp: FileStamp, test_stamp: FileStamp
) -> tuple[RawExamples, RawExamples | None]:
    columns = Columns.of(spec)
    return read_file(train, columns), read_file(test, columns) if test is not None else None


def local_labels(spec: Any, train: str, test: str | None) -> tuple[str, ...] | None:
    """The distinct labels of a device's own files, sorted; None for an unlabelled task. Never the examples."""
    parts = [part for part in local_raw(spec, train, test) if part is not None]
    if parts[0].labels is None:
        return None
    return label_set(parts, None)


def local_dataset(name: str, spec: Any, train: str, test: str | None) -> tuple[TextDataset, int]:
    """A device's own examples with the task's class ids, and how many (the last ones) came from its test file.

    Raises
    ------
    DataError
        For a label outside the task's label set, naming the file and the row; and every file and row error.
    """
    raw_train, raw_test = local_raw(spec, train, test)
    labels, field = task_labels(spec), Columns.of(spec).label or "label"
    dataset = to_dataset(name, raw_train, labels, field)
    if raw_test is None:
        return dataset, 0
    return dataset.concat(to_dataset(name, raw_test, labels, field)), len(raw_test)
