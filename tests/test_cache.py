"""Memos of functions that read files key on the files' sizes and mtimes: an edited file is never served stale."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedbrick_flower.assembly import task_split
from fedbrick_flower.cache import file_memo, file_stamps
from fedbrick_flower.data import task_dataset
from fedbrick_flower.scenario import TaskSpec, load_scenario


def _write(path: Path, texts: list[str], mtime_ns: int | None = None, label: str = "pos") -> str:
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text in texts))
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return str(path)


def test_stamps_cover_files_and_folders_and_skip_names_that_are_not_paths(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "weights.bin").write_bytes(b"1234")
    data = _write(tmp_path / "train.jsonl", ["a"])

    # Execute
    stamps = file_stamps([data, str(tmp_path / "model"), "minilm", None])

    # Assert: the file, both files of the folder; a packaged name and None stand for nothing
    assert [(Path(path).name, size) for path, size, _ in stamps] == [
        ("train.jsonl", Path(data).stat().st_size),
        ("config.json", 2),
        ("weights.bin", 4),
    ]


def test_a_memo_reads_a_file_again_when_it_changes_and_not_otherwise(tmp_path: Path) -> None:
    # Prepare
    reads = []

    @file_memo(maxsize=4, files=lambda path: (path,))
    def lines(path: str) -> int:
        reads.append(path)
        return len(Path(path).read_text().splitlines())

    path = _write(tmp_path / "train.jsonl", ["a", "b"], mtime_ns=1_000_000_000)

    # Execute: read, read again, rewrite with the same size (a new mtime only), then grow the file
    first, again = lines(path), lines(path)
    _write(tmp_path / "train.jsonl", ["c", "d"], mtime_ns=2_000_000_000)
    same_size = lines(path)
    _write(tmp_path / "train.jsonl", ["c", "d", "e"])
    grown = lines(path)

    # Assert
    assert (first, again, same_size, grown) == (2, 2, 2, 3)
    assert len(reads) == 3


def test_a_task_file_edited_between_two_messages_gives_the_new_examples(tmp_path: Path) -> None:
    # Prepare
    path = _write(tmp_path / "train.jsonl", ["first", "second"])
    spec = TaskSpec(train=path, labels=("pos",))
    before = task_dataset("t", spec)[0].texts

    # Execute
    _write(tmp_path / "train.jsonl", ["first", "second", "third"])
    after = task_dataset("t", spec)[0].texts

    # Assert
    assert (len(before), len(after)) == (2, 3)


def test_a_clients_split_follows_an_edit_of_its_own_data_file(tmp_path: Path) -> None:
    # Prepare: the smoke scenario, with one client reading its own file
    path = _write(tmp_path / "device.jsonl", [f"text {n}" for n in range(10)], label="tech")
    scenario = load_scenario("smoke", {"clients.0.train": path})
    client = scenario.clients[0]
    before = len(task_split(scenario, "bbc", "train", client)) + len(task_split(scenario, "bbc", "test", client))

    # Execute
    _write(tmp_path / "device.jsonl", [f"text {n}" for n in range(20)], label="tech")
    after = len(task_split(scenario, "bbc", "train", client)) + len(task_split(scenario, "bbc", "test", client))

    # Assert
    assert (before, after) == (10, 20)
