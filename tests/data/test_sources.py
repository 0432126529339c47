"""Tests for reading the user's data: JSONL, CSV, Parquet, Hugging Face folders, and the errors bad data gets."""

import csv
import json
from pathlib import Path

import pytest

from fedbrick_flower.data import Columns, DataError, read_file, read_hf_dataset, to_dataset
from fedbrick_flower.data.sources import label_set, sorted_labels

ROWS = [
    {"text": "good film", "label": "pos"},
    {"text": "bad film", "label": "neg"},
    {"text": "great plot", "label": "pos"},
]
CLASSIFY = Columns()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("writer", [write_jsonl, write_csv, write_parquet], ids=["jsonl", "csv", "parquet"])
def test_each_file_format_reads_texts_labels_and_rows(tmp_path: Path, writer) -> None:
    # Prepare
    suffix = {"write_jsonl": ".jsonl", "write_csv": ".csv", "write_parquet": ".parquet"}[writer.__name__]
    path = writer(tmp_path / f"train{suffix}", ROWS)

    # Execute
    raw = read_file(path, CLASSIFY)

    # Assert
    assert raw.texts == ("good film", "bad film", "great plot")
    assert raw.labels == ("pos", "neg", "pos")
    assert raw.text_pairs is None and raw.responses is None
    assert raw.origins == tuple(f"{path} row {n}" for n in (1, 2, 3))


def test_text_pairs_and_integer_labels(tmp_path: Path) -> None:
    # Prepare
    rows = [{"q": "a?", "a": "yes", "y": 1}, {"q": "b?", "a": "no", "y": 0}, {"q": "c?", "a": "x", "y": 10}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)

    # Execute
    raw = read_file(path, Columns(text="q", text_pair="a", label="y"))
    dataset = to_dataset("qa", raw, label_set([raw], None), "y")

    # Assert: integer labels sort numerically, not as strings ("10" after "1")
    assert raw.text_pairs == ("yes", "no", "x")
    assert dataset.label_names == ("0", "1", "10")
    assert dataset.labels == (1, 0, 2)


def test_generative_columns_read_prompt_and_response(tmp_path: Path) -> None:
    # Prepare
    rows = [{"instruction": "Say hi", "output": "Hi"}, {"instruction": "Count", "output": "1 2 3"}]
    path = write_jsonl(tmp_path / "gen.jsonl", rows)

    # Execute
    raw = read_file(path, Columns(kind="generative", prompt="instruction", response="output", label=None))
    dataset = to_dataset("gen", raw, None)

    # Assert
    assert raw.texts == ("Say hi", "Count") and raw.responses == ("Hi", "1 2 3")
    assert raw.labels is None and dataset.labels is None and dataset.responses == ("Hi", "1 2 3")


def test_hugging_face_folder_saved_to_disk_maps_class_labels_to_names(tmp_path: Path) -> None:
    # Prepare
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    train = datasets.Dataset.from_dict({"sentence": ["fine", "awful"], "label": [1, 0]}, features=features)
    test = datasets.Dataset.from_dict({"sentence": ["ok"], "label": [1]}, features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "saved"))
    train.save_to_disk(str(tmp_path / "single"))

    # Execute
    columns = Columns(text="sentence")
    whole = read_hf_dataset(str(tmp_path / "saved"), "train", columns)
    held = read_hf_dataset(str(tmp_path / "saved"), "test", columns)
    single = read_hf_dataset(str(tmp_path / "single"), "ignored", columns)

    # Assert
    assert whole.texts == ("fine", "awful") and whole.labels == ("pos", "neg")
    assert held.labels == ("pos",)
    assert single.texts == whole.texts
    assert whole.origins[1] == f"hf_dataset {str(tmp_path / 'saved')!r} split 'train' row 2"


def test_hugging_face_local_data_files_load_with_load_dataset(tmp_path: Path) -> None:
    # Prepare: a folder of JSONL files, read by datasets.load_dataset("json") through the folder path
    folder = tmp_path / "repo"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS)

    # Execute
    raw = read_hf_dataset(str(folder), "train", CLASSIFY)

    # Assert
    assert raw.texts == ("good film", "bad film", "great plot")


def test_hugging_face_missing_split_and_column_are_named(tmp_path: Path) -> None:
    # Prepare
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"], "label": [0]})}).save_to_disk(
        str(tmp_path / "saved")
    )

    # Execute / Assert
    with pytest.raises(DataError, match=r"no split 'validation' \(splits: \['train'\]\)"):
        read_hf_dataset(str(tmp_path / "saved"), "validation", CLASSIFY)
    with pytest.raises(DataError, match="split 'train': row 1: field 'sentence' is missing"):
        read_hf_dataset(str(tmp_path / "saved"), "train", Columns(text="sentence"))


def test_a_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    # Execute / Assert
    with pytest.raises(DataError) as error:
        read_hf_dataset("stanfordnlp/imdb", "train", CLASSIFY)
    assert "hf_dataset 'stanfordnlp/imdb'" in str(error.value)
    assert "HF_HUB_OFFLINE" in str(error.value) and "save_to_disk" in str(error.value)


def test_declared_labels_fix_the_ids_and_reject_an_undeclared_label(tmp_path: Path) -> None:
    # Prepare
    path = write_jsonl(tmp_path / "train.jsonl", [*ROWS, {"text": "meh", "label": "neutral"}])
    raw = read_file(path, CLASSIFY)

    # Execute
    found = label_set([raw], None)
    with pytest.raises(DataError) as error:
        to_dataset("reviews", raw, ("pos", "neg"))

    # Assert
    assert found == ("neg", "neutral", "pos")
    assert str(error.value) == (f"{path} row 4: field 'label': 'neutral' is not among the task's labels ['pos', 'neg']")
    assert to_dataset("r", read_file(write_jsonl(tmp_path / "ok.jsonl", ROWS), CLASSIFY), ("pos", "neg")).labels == (
        0,
        1,
        0,
    )


def test_sorted_labels_is_numeric_only_when_every_label_is_an_integer() -> None:
    # Execute / Assert
    assert sorted_labels(["2", "10", "1"]) == ("1", "2", "10")
    assert sorted_labels(["b", "10", "a"]) == ("10", "a", "b")


# ------------------------------------------------------------------------------------------------ bad data
def test_an_empty_file_is_named(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "train.jsonl"
    path.write_text("")

    # Execute / Assert
    with pytest.raises(DataError, match=rf"^{path}: the file is empty; expected rows with fields \['text', 'label'\]"):
        read_file(path, CLASSIFY)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_of_blank_lines_or_a_header_only_has_no_rows(tmp_path: Path, suffix: str) -> None:
    # Prepare
    path = tmp_path / f"train{suffix}"
    path.write_text("\n\n" if suffix == ".jsonl" else "text,label\n")

    # Execute / Assert
    with pytest.raises(DataError, match=rf"^{path}: no rows"):
        read_file(path, CLASSIFY)


@pytest.mark.parametrize("writer", [write_jsonl, write_csv, write_parquet], ids=["jsonl", "csv", "parquet"])
def test_a_missing_column_names_file_row_and_field(tmp_path: Path, writer) -> None:
    # Prepare
    suffix = {"write_jsonl": ".jsonl", "write_csv": ".csv", "write_parquet": ".parquet"}[writer.__name__]
    path = writer(tmp_path / f"train{suffix}", [{"body": "x", "label": "a"}])

    # Execute / Assert
    with pytest.raises(DataError, match=rf"^{path}: row 1: field 'text' is missing"):
        read_file(path, CLASSIFY)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"text": "x"}, "field 'label' is missing"),
        ({"text": "x", "label": None}, "field 'label': no label"),
        ({"text": "x", "label": "  "}, "field 'label': no label"),
        ({"text": "x", "label": [1]}, "field 'label': expected a string or a whole number"),
        ({"text": "", "label": "a"}, "field 'text': empty text"),
        ({"text": 3, "label": "a"}, "field 'text': expected text, got 3"),
    ],
)
def test_a_row_without_a_usable_label_or_text_is_named(tmp_path: Path, row: dict, problem: str) -> None:
    # Prepare: the bad row is the second
    path = write_jsonl(tmp_path / "train.jsonl", [ROWS[0], row])

    # Execute / Assert
    with pytest.raises(DataError) as error:
        read_file(path, CLASSIFY)
    assert str(error.value).startswith(f"{path}: row 2: {problem}")


def test_an_empty_csv_cell_is_a_row_without_a_label(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood,pos\nbad,\n")

    # Execute / Assert
    with pytest.raises(DataError, match=rf"^{path}: row 2: field 'label': no label"):
        read_file(path, CLASSIFY)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_non_utf8_text_names_file_row_and_field(tmp_path: Path, suffix: str) -> None:
    # Prepare: row 2's text holds Latin-1 bytes
    path = tmp_path / f"train{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(b'{"text": "fine", "label": "a"}\n{"text": "caf\xe9 cr\xe8me", "label": "b"}\n')
    else:
        path.write_bytes(b"text,label\nfine,a\ncaf\xe9 cr\xe8me,b\n")

    # Execute / Assert
    with pytest.raises(DataError) as error:
        read_file(path, CLASSIFY)
    assert str(error.value) == f"{path}: row 2: field 'text': not UTF-8 text (undecodable bytes)"


def test_non_utf8_bytes_in_parquet_are_named(tmp_path: Path) -> None:
    # Prepare
    path = write_parquet(tmp_path / "train.parquet", [{"text": b"ok", "label": "a"}, {"text": b"\xff", "label": "b"}])

    # Execute / Assert
    with pytest.raises(DataError, match=rf"^{path}: row 2: field 'text': not UTF-8 text"):
        read_file(path, CLASSIFY)


def test_a_broken_json_row_is_named(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": \n')

    # Execute / Assert
    with pytest.raises(DataError, match=rf"^{path}: row 2: not a JSON object"):
        read_file(path, CLASSIFY)


def test_missing_file_and_unknown_format_are_named(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(DataError, match="does not exist"):
        read_file(tmp_path / "nope.jsonl", CLASSIFY)
    with pytest.raises(DataError, match=r"unknown data format '\.txt'"):
        read_file(tmp_path / "data.txt", CLASSIFY)
