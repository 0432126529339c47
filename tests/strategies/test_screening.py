"""Screening of a round's updates: server-state scoping, outliers out with their reason, clipping in place."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.strategies.aggregation import Robustness
from fedbrick_flower.strategies.replies import ClientUpdate
from fedbrick_flower.strategies.screening import scoped_name, screen_updates

from .loopback import client_info


def _update(client_id: str, value: float, model: str = "m") -> ClientUpdate:
    """An update of layer 0 (16 entries) and the head (15 entries), every entry ``value``."""
    info = client_info(client_id, node_id=1)
    info.model = model
    arrays = {name: np.full(shape, value, np.float32) for name, shape in info.schema([0]).items()}
    return ClientUpdate(info, arrays, num_examples=10, metrics={})


def test_layers_are_scoped_per_model_and_heads_per_model_and_task() -> None:
    # Prepare
    info = client_info("a", node_id=1)

    # Execute / Assert
    assert scoped_name(info, "layers.3.q.lora_A") == "m/layers.3.q.lora_A"
    assert scoped_name(info, "head.bias") == "m/t/head.bias"


def test_without_a_defence_every_update_passes_untouched() -> None:
    # Prepare
    updates = [_update("a", 1.0), _update("b", 1000.0)]

    # Execute
    screened = screen_updates(Robustness(), updates)

    # Assert
    assert screened.kept == updates and screened.kept[1] is updates[1]
    assert (screened.rejected, screened.factors) == ({}, {})


def test_a_norm_outlier_is_rejected_with_its_reason_and_the_others_kept_in_order() -> None:
    # Prepare
    updates = [_update("a", 1.0), _update("b", 2.0), _update("c", 1000.0), _update("d", 3.0)]

    # Execute
    screened = screen_updates(Robustness(outlier_norm_multiple=3.0), updates)

    # Assert
    assert [u.client.client_id for u in screened.kept] == ["a", "b", "d"]
    assert list(screened.rejected) == ["c"]
    assert screened.rejected["c"].startswith("norm outlier: m/layers.0 has norm 4000")


def test_norms_are_compared_within_a_model_only() -> None:
    # Prepare: three small updates on one model, three 1000x larger on another
    updates = [_update(f"s{i}", 1.0, model="small") for i in range(3)]
    updates += [_update(f"b{i}", 1000.0, model="big") for i in range(3)]

    # Execute
    screened = screen_updates(Robustness(outlier_norm_multiple=3.0), updates)

    # Assert
    assert screened.rejected == {} and len(screened.kept) == 6


def test_clipped_updates_keep_their_canonical_names_and_report_their_factor() -> None:
    # Prepare: layer norms 4 * value (16 entries), head norms sqrt(15) * value
    updates = [_update("a", 1.0), _update("b", 2.0)]

    # Execute
    screened = screen_updates(Robustness(clip_norm=4.0), updates)

    # Assert
    a, b = screened.kept
    assert set(b.arrays) == set(updates[1].arrays)
    np.testing.assert_allclose(b.arrays["layers.0.q.lora_A"], np.full((2, 4), 1.0))
    np.testing.assert_allclose(a.arrays["layers.0.q.lora_A"], np.full((2, 4), 1.0))
    np.testing.assert_allclose(b.arrays["head.bias"], np.full(3, 4 / np.sqrt(15)), rtol=1e-6)
    assert list(screened.factors) == ["b"] and screened.factors["b"] == pytest.approx(0.5)
    np.testing.assert_array_equal(updates[1].arrays["layers.0.q.lora_A"], np.full((2, 4), 2.0))  # inputs unchanged
