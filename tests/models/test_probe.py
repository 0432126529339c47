"""RELA's probe gradient: closed form against autograd, and its sanitisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel

from fedbrick_flower.models.probe import (
    append_answers,
    check_probe,
    down_projection_gradient,
    ema,
    probe_rows,
    sanitize,
)


def _probe() -> torch.nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama",
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=24,
        vocab_size=40,
        tie_word_embeddings=True,
    )
    return AutoModel.from_config(config).eval()


def test_closed_form_gradient_equals_autograd_on_a_tiny_probe() -> None:
    # Prepare
    probe = _probe()
    ids = torch.randint(0, 40, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0  # padding: its positions carry no loss
    weight = probe.layers[-1].mlp.down_proj.weight

    # Execute
    closed = down_projection_gradient(probe, ids, mask)
    weight.requires_grad_(True)
    hidden = probe(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = hidden[:, :-1] @ probe.embed_tokens.weight.T
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    loss = F.cross_entropy(logits[valid], ids[:, 1:][valid])
    (expected,) = torch.autograd.grad(loss, weight)

    # Assert
    assert closed.shape == (16, 24)
    torch.testing.assert_close(closed, expected, atol=1e-5, rtol=1e-4)


def test_answer_only_gradient_equals_autograd_and_tells_labels_apart_on_the_same_texts() -> None:
    # Prepare: the same two texts (the second left-padded) with two different verbalised labels
    probe = _probe()
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    weight = probe.layers[-1].mlp.down_proj.weight

    # Execute
    answered, answer_mask, target = append_answers(ids, mask, [[20, 21], [22]], pad_id=0)
    closed = down_projection_gradient(probe, answered, answer_mask, target)
    other = down_projection_gradient(probe, *append_answers(ids, mask, [[30, 31], [32]], pad_id=0))
    weight.requires_grad_(True)
    hidden = probe(input_ids=answered, attention_mask=answer_mask).last_hidden_state
    logits = hidden[:, :-1] @ probe.embed_tokens.weight.T
    (expected,) = torch.autograd.grad(F.cross_entropy(logits[target[:, 1:]], answered[:, 1:][target[:, 1:]]), weight)

    # Assert: prompt then answer, right-padded; the loss covers the 3 answer tokens only
    assert answered.tolist() == [[5, 6, 7, 8, 20, 21], [9, 10, 22, 0, 0, 0]]
    assert target.sum() == 3 and target[1].tolist() == [False, False, True, False, False, False]
    torch.testing.assert_close(closed, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(closed, other, atol=1e-6)


def test_an_untied_probe_is_refused_with_the_field_named() -> None:
    # Prepare
    config = AutoConfig.for_model("llama", hidden_size=8, num_hidden_layers=1, num_attention_heads=2, vocab_size=10)

    # Execute / Assert
    with pytest.raises(ValueError, match="algorithm_params.probe"):
        check_probe(AutoModel.from_config(config))


def test_rows_are_fixed_by_the_seed_and_noise_and_ema_follow_the_spec() -> None:
    # Prepare
    gradient = np.arange(20, dtype=np.float32).reshape(10, 2)

    # Execute
    rows = probe_rows(seed=7, width=10, fraction=0.4)
    noiseless = sanitize(gradient, rows, sigma=0.0, rng=np.random.default_rng(0))
    averaged = ema(np.zeros((4, 2), np.float32), np.ones((4, 2), np.float32), alpha=0.5)

    # Assert
    np.testing.assert_array_equal(rows, probe_rows(seed=7, width=10, fraction=0.4))
    assert len(rows) == 4 and list(rows) == sorted(rows)
    np.testing.assert_array_equal(noiseless, gradient[rows])
    np.testing.assert_allclose(averaged, 0.5)
    np.testing.assert_array_equal(ema(None, np.ones(2), 0.5), np.ones(2))
