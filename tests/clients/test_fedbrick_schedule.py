"""FedBRICK's Stage-II schedule on the client: the hand-over weight and the default Stage-II length."""

from __future__ import annotations

import pytest

from fedbrick_flower.clients.fedbrick import blend_alpha, stage_two_steps


def test_blend_alpha_schedule() -> None:
    # Prepare
    total = 10

    # Execute
    values = [blend_alpha(step, total) for step in (0, 3, 9, 15, -1)]

    # Assert: 1 at the first step, 0 at the last (step E2 - 1), linear in between
    assert values == pytest.approx([1.0, 1.0 - 3 / 9, 0.0, 0.0, 1.0])
    assert blend_alpha(0, 1) == 0.0
    for bad in (0, -3):
        with pytest.raises(ValueError, match="total_steps"):
            blend_alpha(0, bad)


def test_stage_two_steps_defaults() -> None:
    # Execute / Assert
    assert stage_two_steps(30) == 10
    assert stage_two_steps(200) == 40
    assert stage_two_steps(0) == 10
    assert stage_two_steps(200, fraction=0.5, minimum=1) == 100
    with pytest.raises(ValueError, match="steps_per_epoch"):
        stage_two_steps(-1)
