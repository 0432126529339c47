"""The user's own examples: JSONL, CSV or Parquet files, or a Hugging Face dataset (hub id or local folder).

Reading is in two steps. :func:`read_examples` turns rows into strings (texts, a second text, prompt and
response, the label as written) and checks every field it needs, so an error names the file, the row and the
field. :func:`to_dataset` then maps label strings to class ids with the task's label set, declared or found
(:func:`label_set`). A device reports its label set from the first step alone (it never sends examples).

``datasets`` and ``pyarrow`` are heavy imports; they are imported only where a Parquet file or a Hugging Face
dataset is read.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbrick_flower.data.tasks import TextDataset

TASK_KINDS: tuple[str, ...] = ("classification", "generative")
FILE_FORMATS: dict[str, str] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# Bytes that are not UTF-8 are decoded with "surrogateescape" into these code points, so the row and the field
# that hold them can be named instead of failing on the whole file.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class DataError(ValueError):
    """A data file or row is unusable; the message names the file, the row and the field."""


@dataclass(frozen=True)
class Columns:
    """Which fields of a row make an example.

    Attributes
    ----------
    kind : {"classification", "generative"}
        Classification reads ``text`` (and ``text_pair``) and ``label``; generative reads ``prompt`` and
        ``response``, and ``label`` only when it is named (a label then only steers label-based partitioners).
    text, text_pair, label, prompt, response : str or None
        Field names.
    """

    kind: str = "classification"
    text: str = "text"
    text_pair: str | None = None
    label: str | None = "label"
    prompt: str = "prompt"
    response: str = "response"

    @classmethod
    def of(cls, spec: Any) -> Columns:
        """The columns a task spec (``scenario.TaskSpec``) names, with the defaults of its kind."""
        label = spec.label if spec.label is not None else ("label" if spec.kind == "classification" else None)
        return cls(spec.kind, spec.text, spec.text_pair, label, spec.prompt, spec.response)

    def text_fields(self) -> tuple[str, ...]:
        """The fields that hold text, in example order."""
        if self.kind == "generative":
            return (self.prompt, self.response)
        return (self.text,) if self.text_pair is None else (self.text, self.text_pair)


@dataclass(frozen=True)
class RawExamples:
    """Examples as strings, before labels become class ids.

    Attributes
    ----------
    texts : tuple of str
        The text (classification) or the prompt (generative) of each example.
    text_pairs, responses : tuple of str or None
        The second text of a pair task; the response of a generative task.
    labels : tuple of str or None
        The label of each example as written (numbers as their decimal string), or None without a label field.
    origins : tuple of str
        ``"<file> row <n>"`` of each example, for errors raised later (a label outside the set, an overlong
        response).
    """

    texts: tuple[str, ...]
    text_pairs: tuple[str, ...] | None
    responses: tuple[str, ...] | None
    labels: tuple[str, ...] | None
    origins: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


def label_key(value: Any) -> str:
    """A label value as a string: ``1``, ``1.0`` and ``"1"`` are the same label ``"1"``.

    Raises
    ------
    TypeError
        For values that are not a string, a bool or a whole number.
    """
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value.strip()
    raise TypeError(f"expected a string or a whole number, got {value!r}")


def sorted_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Distinct labels in a deterministic order: numerically when all are integers, else by name."""
    distinct = set(labels)
    if distinct and all(re.fullmatch(r"-?\d+", label) for label in distinct):
        return tuple(sorted(distinct, key=int))
    return tuple(sorted(distinct))


# ------------------------------------------------------------------------------------------------- files
FileStamp = tuple[str, int, int] | None


def file_stamp(path: str | Path | None) -> FileStamp:
    """``(path, size, mtime_ns)`` of a file (a folder: its own entry) that a memo reads, None for no path or a
    missing one: memos key on it, so a file rewritten in place is read again rather than served from memory."""
    if path is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return None
    return str(path), status.st_size, status.st_mtime_ns


def spec_stamps(spec: Any) -> tuple[FileStamp, ...]:
    """Stamps of the local files and folders a task spec reads (its train and test files, a local HF dataset)."""
    return tuple(file_stamp(getattr(spec, name, None)) for name in ("train", "test", "hf_dataset"))


def read_file(path: str | Path, columns: Columns) -> RawExamples:
    """Read the examples of one JSONL, CSV or Parquet file.

    Parameters
    ----------
    path : str or Path
        The file; its suffix picks the format (``.jsonl``/``.ndjson``, ``.csv``, ``.parquet``).
    columns : Columns
        The fields to read.

    Returns
    -------
    RawExamples
        One example per row, in file order.

    Raises
    ------
    DataError
        On a missing or empty file, an unknown format, or a row without a usable field (the message names the
        file, the 1-based row and the field).
    """
    path = Path(path)
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown data format {path.suffix!r}; use one of {sorted(FILE_FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: data file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected rows with fields {list(_wanted(columns))}")
    rows = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[fmt](path)
    return read_examples(rows, columns, str(path))


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            text = line.decode("utf-8", errors="surrogateescape").strip()
            if not text:
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}: row {number}: not a JSON object ({error.msg} at column {error.colno})"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _csv_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    # newline="" keeps line breaks inside quoted fields; rows are numbered as data rows (the header not counted).
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        yield from enumerate(reader, start=1)


def _parquet_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    import pyarrow.parquet as pq

    for offset, batch in _enumerate_batches(pq.ParquetFile(path).iter_batches(batch_size=4096)):
        for index, row in enumerate(batch.to_pylist()):
            yield offset + index + 1, row


def _enumerate_batches(batches: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    """``(rows before this batch, batch)`` for an iterable of record batches."""
    seen = 0
    for batch in batches:
        yield seen, batch
        seen += batch.num_rows


# ------------------------------------------------------------------------------------------------- rows
def read_examples(rows: Iterable[tuple[int, Mapping[str, Any]]], columns: Columns, where: str) -> RawExamples:
    """Check and collect the fields of ``rows`` (``(row number, mapping)`` pairs read from ``where``).

    Raises
    ------
    DataError
        When there are no rows, or a row lacks a field, holds an empty or undecodable text, or a label that is
        not a string or a whole number.
    """
    fields = columns.text_fields()
    texts: list[tuple[str, ...]] = []
    labels: list[str] = []
    origins: list[str] = []
    for number, row in rows:
        texts.append(tuple(_text(row, name, where, number) for name in fields))
        if columns.label is not None:
            labels.append(_label(row, columns.label, where, number))
        origins.append(f"{where} row {number}")
    if not texts:
        raise DataError(f"{where}: no rows; expected rows with fields {list(_wanted(columns))}")
    first, *others = zip(*texts, strict=True)
    second = others[0] if others else None
    return RawExamples(
        texts=first,
        text_pairs=second if columns.kind == "classification" else None,
        responses=second if columns.kind == "generative" else None,
        labels=tuple(labels) if columns.label is not None else None,
        origins=tuple(origins),
    )


def _wanted(columns: Columns) -> tuple[str, ...]:
    return columns.text_fields() + ((columns.label,) if columns.label is not None else ())


def _field(row: Mapping[str, Any], name: str, where: str, number: int) -> Any:
    if name not in row:
        raise DataError(f"{where}: row {number}: field {name!r} is missing (the row has {sorted(map(str, row))})")
    value = row[name]
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{where}: row {number}: field {name!r}: not UTF-8 text ({error.reason})") from None
    if isinstance(value, str) and _UNDECODABLE.search(value):
        raise DataError(f"{where}: row {number}: field {name!r}: not UTF-8 text (undecodable bytes)")
    return value


def _text(row: Mapping[str, Any], name: str, where: str, number: int) -> str:
    value = _field(row, name, where, number)
    if not isinstance(value, str):
        raise DataError(f"{where}: row {number}: field {name!r}: expected text, got {value!r}")
    if not value.strip():
        raise DataError(f"{where}: row {number}: field {name!r}: empty text")
    return value


def _label(row: Mapping[str, Any], name: str, where: str, number: int) -> str:
    value = _field(row, name, where, number)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: row {number}: field {name!r}: no label")
    try:
        return label_key(value)
    except TypeError as error:
        raise DataError(f"{where}: row {number}: field {name!r}: {error}") from None


# ---------------------------------------------------------------------------------------- Hugging Face
def read_hf_dataset(source: str, split: str, columns: Columns, config: str | None = None) -> RawExamples:
    """Read one split of a Hugging Face dataset: a folder saved with ``save_to_disk``, a local path that
    ``datasets.load_dataset`` reads, or a hub id (needs network access).

    ``ClassLabel`` label columns are read as their class names.

    Raises
    ------
    DataError
        Offline with a hub id, when the dataset cannot be loaded, or the split does not exist; and for the
        row errors of :func:`read_examples`.
    """
    dataset = _load_hf(source, split, config)
    where = f"hf_dataset {source!r} split {split!r}"
    missing = [name for name in _wanted(columns) if name not in dataset.column_names]
    if missing:
        raise DataError(f"{where}: row 1: field {missing[0]!r} is missing (columns: {dataset.column_names})")
    names = _class_names(dataset, columns.label)
    rows = ((index + 1, _named_label(row, columns.label, names)) for index, row in enumerate(dataset))
    return read_examples(rows, columns, where)


def _load_hf(source: str, split: str, config: str | None) -> Any:
    import datasets

    path = Path(source)
    if path.exists():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"hf_dataset {source!r}: no split {split!r} (splits: {sorted(loaded)})")
                return loaded[split]
            return loaded
        return _load_dataset(datasets, source, split, config)
    if _offline():
        raise DataError(
            f"hf_dataset {source!r}: not a local folder, and the Hugging Face Hub is off "
            f"(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set); save the dataset to a folder with "
            f"Dataset.save_to_disk and name that folder, or run with network access"
        )
    return _load_dataset(datasets, source, split, config)


def _load_dataset(datasets: Any, source: str, split: str, config: str | None) -> Any:
    try:
        return datasets.load_dataset(source, config, split=split)
    except Exception as error:  # noqa: BLE001 - datasets raises many types (network, missing split, format)
        raise DataError(f"hf_dataset {source!r} split {split!r}: cannot be loaded: {error}") from None


def _offline() -> bool:
    return any(os.environ.get(name, "").lower() in {"1", "true", "yes", "on"} for name in _OFFLINE_FLAGS)


_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _class_names(dataset: Any, label: str | None) -> Sequence[str] | None:
    feature = dataset.features.get(label) if label is not None else None
    return list(feature.names) if feature is not None and hasattr(feature, "names") else None


def _named_label(row: dict[str, Any], label: str | None, names: Sequence[str] | None) -> dict[str, Any]:
    if names is not None and isinstance(row.get(label), int) and 0 <= row[label] < len(names):
        row[label] = names[row[label]]
    return row


# ----------------------------------------------------------------------------------------- label sets
def label_set(parts: Sequence[RawExamples], declared: Sequence[str] | None) -> tuple[str, ...]:
    """The task's label names: ``declared`` as given, else every label found in ``parts``, sorted."""
    if declared is not None:
        return tuple(declared)
    return sorted_labels(label for part in parts for label in part.labels or ())


def to_dataset(
    name: str, raw: RawExamples, label_names: Sequence[str] | None, label_field: str = "label"
) -> TextDataset:
    """Examples with class ids from ``label_names``; None keeps the examples unlabelled (generative).

    Raises
    ------
    DataError
        For a label outside ``label_names``, naming the file, the row and the label.
    """
    labels = None
    if raw.labels is not None and label_names is not None:
        ids = {label: index for index, label in enumerate(label_names)}
        for label, origin in zip(raw.labels, raw.origins, strict=True):
            if label not in ids:
                raise DataError(
                    f"{origin}: field {label_field!r}: {label!r} is not among the task's labels {list(label_names)}"
                )
        labels = tuple(ids[label] for label in raw.labels)
    return TextDataset(
        name=name,
        texts=raw.texts,
        labels=labels,
        label_names=tuple(label_names or ()),
        text_pairs=raw.text_pairs,
        responses=raw.responses,
        origins=raw.origins,
    )
