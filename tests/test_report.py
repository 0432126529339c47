"""Tests for ``fedbrick-flower report``: tables from hand-made metric rows, plots, missing-directory errors."""

import argparse
import json
from pathlib import Path

import pytest

from fedbrick_flower.report import (
    ReportError,
    _with_global_columns,
    client_table,
    download_notes,
    format_table,
    load_rows,
    main,
    round_table,
)


def _train(server_round: int, client: str, loss: float, up: int, down: int | None) -> dict:
    return {
        "round": server_round,
        "phase": "train",
        "client": client,
        "layers": [0, 1],
        "bytes_up": up,
        "bytes_down": down,
        "adapter_bytes": up - 100,
        "train-loss": loss,
        "train-seconds": 1.5,
        "peak-memory-mb": 700.0,
        "model-parameters": 1000.0,
        "num-examples": 10.0,
    }


def _evaluate(server_round: int, client: str, accuracy: float) -> dict:
    return {"round": server_round, "phase": "evaluate", "client": client, "accuracy": accuracy, "loss": 1.0}


def _server(server_round: int, model: str, accuracy: float) -> dict:
    return {"round": server_round, "phase": "server-eval", "model": model, "task": "bbc", "accuracy": accuracy}


ROWS = [
    _train(1, "alice", 2.0, 1100, None),
    _train(1, "bob", 1.0, 2100, 50),
    _evaluate(1, "alice", 0.2),
    _evaluate(1, "bob", 0.4),
    _server(1, "bert", 0.3),
    _server(1, "llama", 0.5) | {"accuracy-without-lora": 0.1},
    {"round": 1, "phase": "aggregate", "seconds": 0.25, "updates": 2},
    {"round": 1, "phase": "round", "wall_seconds": 10.0},
    _train(2, "alice", 1.0, 1100, 1000),
    {"round": 2, "phase": "rejected", "client": "bob", "stage": "train", "reason": "bad shape"},
    _evaluate(2, "alice", 0.6),
    _evaluate(2, "bob", 0.8),
    {"round": 2, "phase": "distill", "model": "bert"},
    {"round": 2, "phase": "round", "wall_seconds": 4.0},
]


def _write_run(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_round_table_means_over_clients() -> None:
    # Prepare
    rows = ROWS

    # Execute
    table = round_table(rows)

    # Assert
    assert [entry["round"] for entry in table] == [1, 2]
    first, second = table
    assert first["wall_s"] == 10.0
    assert first["train_loss"] == pytest.approx(1.5)
    assert first["client_acc"] == pytest.approx(0.3)
    assert first["global"] == {"bert/bbc": 0.3, "llama/bbc": 0.5}
    assert first["global_acc"] == pytest.approx(0.4)
    assert first["no_lora_acc"] == pytest.approx(0.1)  # only the pair that was scored without LoRA
    assert first["agg_s"] == pytest.approx(0.25)
    assert second["agg_s"] is None
    assert first["bytes_up"] == pytest.approx(1600)
    assert first["bytes_down"] == pytest.approx(50)  # a missing (None) download is left out of the mean
    assert first["adapter_bytes"] == pytest.approx(1500)
    assert first["rejected"] == 0
    assert second["train_loss"] == pytest.approx(1.0)
    assert second["client_acc"] == pytest.approx(0.7)
    assert second["global"] == {}
    assert second["global_acc"] is None
    assert second["rejected"] == 1


def test_client_table_shows_rejected_client_without_training_numbers() -> None:
    # Prepare
    rows = ROWS

    # Execute
    table = client_table(rows, server_round=2)

    # Assert
    assert [entry["client"] for entry in table] == ["alice", "bob"]
    alice, bob = table
    assert alice["train_loss"] == 1.0
    assert alice["accuracy"] == 0.6
    assert alice["bytes_down"] == 1000
    assert alice["train_s"] == 1.5
    assert bob["train_loss"] is None
    assert bob["accuracy"] == 0.8


def test_format_table_aligns_columns_and_shows_bytes_in_kib() -> None:
    # Prepare
    entries = [{"client": "alice", "bytes_up": 2048, "accuracy": 0.5}, {"client": "b", "accuracy": None}]

    # Execute
    text = format_table(entries, ["client", "bytes_up", "accuracy"])

    # Assert
    header, first, second = text.splitlines()
    assert header.split() == ["client", "bytes_up", "(KiB)", "accuracy"]
    assert first.split() == ["alice", "2.0", "0.5000"]
    assert second.split() == ["b", "-", "-"]
    assert len({len(header), len(first), len(second)}) == 1


def test_main_prints_tables_and_writes_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    run_dir = _write_run(tmp_path / "run", ROWS)

    # Execute
    code = main(argparse.Namespace(run_dir=run_dir))

    # Assert
    assert code == 0
    output = capsys.readouterr().out
    assert "global bert/bbc" in output
    assert "per client, round 2" in output
    for name in ("accuracy.png", "bytes.png"):
        path = run_dir / "plots" / name
        assert path.read_bytes().startswith(b"\x89PNG")
        assert path.stat().st_size > 5000


def test_main_missing_directory_exits_2_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    missing = tmp_path / "no-such-run"

    # Execute
    code = main(argparse.Namespace(run_dir=missing))

    # Assert
    assert code == 2
    assert str(missing) in capsys.readouterr().err


def test_load_rows_empty_run_directory_is_an_error(tmp_path: Path) -> None:
    # Prepare
    run_dir = _write_run(tmp_path / "run", [])

    # Execute / Assert
    with pytest.raises(ReportError, match="no metrics in .*metrics.jsonl"):
        load_rows(run_dir)


def test_one_global_pair_shows_only_the_global_mean_column() -> None:
    # Prepare
    rows = [_server(1, "bert", 0.3), _train(1, "alice", 1.0, 1100, 50)]

    # Execute
    _, columns = _with_global_columns(round_table(rows))

    # Assert
    assert [c for c in columns if c.startswith("global")] == ["global_acc"]


def test_client_names_align_left_and_numbers_right() -> None:
    # Prepare
    entries = [{"client": "a", "accuracy": 0.5}, {"client": "longer-name", "accuracy": 0.25}]

    # Execute
    header, first, second = format_table(entries, ["client", "accuracy"]).splitlines()

    # Assert
    assert first.startswith("a          ")
    assert second.startswith("longer-name")
    assert first.endswith("0.5000") and second.endswith("0.2500") and header.endswith("accuracy")


def test_a_near_empty_first_download_is_explained() -> None:
    # Prepare: round 1 sends instructions only, later rounds send adapters
    rounds = [
        {"round": 1, "bytes_down": 512},
        {"round": 2, "bytes_down": 100 * 1024},
        {"round": 3, "bytes_down": 102 * 1024},
    ]

    # Execute
    notes = download_notes(rounds)

    # Assert
    assert notes == [
        "note: round 1 downloads 0.5 KiB per client: the server holds no trained adapters yet, so it sends the "
        "round's instructions and little else; from round 2 on a client downloads 101.0 KiB per round on average"
    ]
    assert download_notes([{**r, "bytes_down": 100 * 1024} for r in rounds]) == []


def test_a_round_where_a_client_only_evaluated_counts_its_evaluate_bytes_and_is_marked_when_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: round 2: bob's update was rejected... and carol only evaluated, in a message of her own
    only_evaluated = _evaluate(2, "carol", 0.5) | {"source": "evaluate-message", "bytes_up": 300, "bytes_down": 208163}
    inside_train = _evaluate(2, "alice", 0.6) | {"source": "train-message", "bytes_up": 0, "bytes_down": 0}
    rows = [*ROWS, only_evaluated, inside_train]
    run_dir = _write_run(tmp_path / "run", rows)

    # Execute
    second = round_table(rows)[1]
    carol = next(entry for entry in client_table(rows, 2) if entry["client"] == "carol")
    main(argparse.Namespace(run_dir=run_dir))

    # Assert
    assert second["eval_bytes_down"] == 208163 and second["eval_bytes_up"] == 300
    assert second["total_bytes"] == 1100 + 1000 + 300 + 208163  # alice's train message both ways, carol's evaluate
    assert carol["bytes_down"] == 208163
    output = capsys.readouterr().out
    assert "rounds with rejected updates (count): 2 (1); reasons in metrics.jsonl, phase 'rejected'" in output
