"""Tests for the pure data checks: a node's labels against its task's, and the max_length policy."""

import logging

import pytest

from fedbrick_flower.data import LengthFit, fit_lengths, label_mismatch, report_overlong


@pytest.mark.parametrize(
    ("task", "node", "reason"),
    [
        (("neg", "pos"), ("neg", "pos"), None),
        (("neg", "neu", "pos"), ("pos",), None),
        (None, None, None),
        (None, ("a",), None),
        (("neg", "pos"), ("neg", "spam", "eggs"), "the node's labels ['eggs', 'spam'] are not among the task's labels"),
        (("neg", "pos"), (), "the node has no labelled training examples"),
        (("neg", "pos"), None, "the task has labels ['neg', 'pos'] and the node reported none"),
    ],
)
def test_label_mismatch(task: tuple | None, node: tuple | None, reason: str | None) -> None:
    # Execute
    result = label_mismatch(task, node)

    # Assert
    if reason is None:
        assert result is None
    else:
        assert result is not None and result.startswith(reason)


def test_truncate_keeps_every_example_and_counts_the_long_ones() -> None:
    # Execute
    fit = fit_lengths([5, 9, 8, 12], max_length=8, policy="truncate")

    # Assert
    assert fit == LengthFit(keep=(0, 1, 2, 3), truncated=(1, 3), dropped=())


def test_drop_leaves_out_the_long_ones() -> None:
    # Execute
    fit = fit_lengths([5, 9, 8, 12], max_length=8, policy="drop")

    # Assert
    assert fit == LengthFit(keep=(0, 2), truncated=(), dropped=(1, 3))


def test_an_unknown_policy_names_the_field() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"data.overlong: 'cut' is not one of \['truncate', 'drop'\]"):
        fit_lengths([1], 8, "cut")


def test_report_names_the_count_and_the_first_row(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    fit = fit_lengths([5, 9, 8, 12], max_length=8, policy="drop")

    # Execute
    with caplog.at_level(logging.WARNING):
        report_overlong(fit, 8, "task t, c1, train", ["f row 1", "f row 2", "f row 3", "f row 4"])

    # Assert
    assert "task t, c1, train: 2 example(s) dropped, longer than max_length=8 tokens; first: f row 2" in caplog.text
