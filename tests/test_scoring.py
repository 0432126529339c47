"""Tests for scoring generative networks: perplexity, exact match, batched greedy decoding."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch.nn import functional as F

from fedbrick_flower.data import IGNORE_INDEX, EncodedExamples
from fedbrick_flower.models import ModelSpec, keep_layers, model_family
from fedbrick_flower.models.causal_lm import causal_lm
from fedbrick_flower.objectives import response_loss
from fedbrick_flower.scoring import evaluate_generative, exact_match, greedy_answers, losses_and_answers
from tests.conftest import tiny_model

END = 99


@pytest.fixture(scope="module")
def model():
    return causal_lm(tiny_model("llama"), ModelSpec(key="m", family="llama", tokenizer="minilm"), seed=0).eval()


def _examples(rows: list[tuple[list[int], list[int]]]) -> EncodedExamples:
    """Right-padded examples from (prompt ids, response ids)."""
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        ids[i, :n] = torch.tensor(prompt + response)
        mask[i, :n] = 1
        labels[i, len(prompt) : n] = torch.tensor(response)
    return EncodedExamples(ids, mask, labels)


EXAMPLES = [([3, 4, 5], [6, END]), ([7, 8], [9, 10, 11, END]), ([12, 13, 14, 15, 16], [17, END])]


def test_perplexity_is_exp_of_the_mean_response_token_loss(model) -> None:
    # Prepare: the reference, one sequence at a time with full logits.
    losses = []
    for prompt, response in EXAMPLES:
        ids = torch.tensor([prompt + response])
        logits = model(ids, torch.ones_like(ids))[0]
        targets = torch.tensor(response)
        # Positions len(prompt)-1 ... end-1 predict the response tokens.
        losses += F.cross_entropy(logits[len(prompt) - 1 : -1], targets, reduction="none").tolist()
    expected = sum(losses) / len(losses)

    # Execute: batched (padded), two rows per batch.
    scores = evaluate_generative(
        model,
        _examples(EXAMPLES),
        batch_size=2,
        device=torch.device("cpu"),
        end_token=END,
        short_answer_tokens=8,
        decode=lambda ids: " ".join(map(str, ids)),
    )

    # Assert
    assert scores["loss"] == pytest.approx(expected, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert 0.0 <= scores["exact-match"] == scores["accuracy"] <= 1.0


def test_training_loss_is_the_mean_over_response_tokens(model) -> None:
    # Prepare
    examples = _examples(EXAMPLES)
    batch = {"input_ids": examples.input_ids, "attention_mask": examples.attention_mask, "labels": examples.labels}
    logits = model(examples.input_ids, examples.attention_mask)

    # Execute
    loss = response_loss(model, batch)

    # Assert: the shifted cross-entropy with -100 ignored is exactly this mean.
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), examples.labels[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_long_answers_score_token_accuracy_without_generation(model) -> None:
    # Execute
    scores = evaluate_generative(
        model,
        _examples(EXAMPLES),
        batch_size=4,
        device=torch.device("cpu"),
        end_token=END,
        short_answer_tokens=2,  # the second answer has 4 tokens
        decode=lambda ids: pytest.fail("no decoding when answers are long"),
    )

    # Assert
    assert "exact-match" not in scores and scores["accuracy"] == scores["token-accuracy"]


def test_batched_greedy_decoding_matches_one_sequence_at_a_time(model) -> None:
    # Prepare: the reference, a plain greedy loop on each unpadded prompt.
    expected = []
    for prompt, _ in EXAMPLES:
        ids = list(prompt)
        answer = []
        for _ in range(4):
            token = int(model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -1].argmax())
            if token == END:
                break
            answer.append(token)
            ids.append(token)
        expected.append(answer)

    # Execute
    answers = greedy_answers(model, _examples(EXAMPLES), 3, torch.device("cpu"), max_new_tokens=4, end_token=END)

    # Assert
    assert answers == expected


def test_greedy_decoding_stops_at_the_end_token(model) -> None:
    # Prepare: call the first token the model would answer to the first prompt the end token.
    prompt = torch.tensor([EXAMPLES[0][0]])
    first = int(model(prompt, torch.ones_like(prompt))[0, -1].argmax())

    # Execute
    answers = greedy_answers(model, _examples(EXAMPLES), 3, torch.device("cpu"), max_new_tokens=4, end_token=first)

    # Assert: nothing is generated for that prompt; the others still decode (up to the limit or their own end).
    assert answers[0] == []
    assert all(len(answer) <= 4 and first not in answer for answer in answers)


def test_exact_match_after_normalisation() -> None:
    assert exact_match(["Sport.", " tech", "Politics"], ["sport", "Tech!", "business"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text", "gpt2"])
def test_cached_decoding_of_a_truncated_stack_matches_decoding_without_a_cache(model_type: str) -> None:
    # Prepare: layers 1 and 3 of 4 (global indices 1 and 3 at positions 0 and 1), the rows of different lengths.
    backbone = tiny_model(model_type)
    family = model_family(backbone)
    keep_layers(backbone, family, [1, 3])
    model = causal_lm(backbone, ModelSpec(key="m", family=model_type, tokenizer="minilm"), seed=0).eval()
    rows = [([3, 4, 5], [6]), ([7, 8], [9]), ([12, 13, 14, 15, 16, 17, 18], [19]), ([20], [21])]
    examples = _examples(rows)
    reference = []
    for prompt, _ in rows:  # one sequence at a time, the whole sequence recomputed for every token
        ids = list(prompt)
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -1].argmax()))
        reference.append(ids[len(prompt) :])
    indices = [module.layer_idx for module in model.modules() if isinstance(getattr(module, "layer_idx", None), int)]

    # Execute
    with model.kv_cache(16) as cache:
        used = cache is not None
    answers = greedy_answers(model, examples, 3, torch.device("cpu"), max_new_tokens=8, end_token=-1)

    # Assert: the cache is used, the answers are the same token by token, and every layer keeps its global index.
    assert used
    assert answers == reference
    assert [m.layer_idx for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)] == indices
    assert sorted(set(indices)) == [1, 3]


def test_a_stack_with_surrogate_layers_decodes_without_a_cache() -> None:
    # Prepare: layer 2 of 4 held, the others BRICK-like surrogates (any hidden-state map).
    backbone = tiny_model("llama")
    keep_layers(backbone, model_family(backbone), [2], filler=lambda index: torch.nn.Identity())
    model = causal_lm(backbone, ModelSpec(key="m", family="llama", tokenizer="minilm"), seed=0).eval()
    prompt = [3, 4, 5]
    ids = list(prompt)
    for _ in range(3):
        ids.append(int(model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -1].argmax()))

    # Execute
    with model.kv_cache(8) as cache:
        refused = cache is None
    answers = greedy_answers(model, _examples([(prompt, [6])]), 1, torch.device("cpu"), max_new_tokens=3, end_token=-1)

    # Assert
    assert refused and answers == [ids[len(prompt) :]]


def test_one_pass_gives_the_loss_and_the_same_answers_as_decoding_without_a_cache(monkeypatch) -> None:  # noqa: ANN001
    # Prepare: a truncated stack; the reference is the same scoring with the cache switched off.
    backbone = tiny_model("llama")
    keep_layers(backbone, model_family(backbone), [0, 2])
    model = causal_lm(backbone, ModelSpec(key="m", family="llama", tokenizer="minilm"), seed=0).eval()
    rows = [([3, 4, 5], [6, END]), ([7, 8], [9, 10, END]), ([12, 13, 14, 15, 16], [17, END]), ([20], [21, END])]
    examples = _examples(rows)

    # Execute
    cached = losses_and_answers(model, examples, 3, torch.device("cpu"), 6, end_token=-1)
    monkeypatch.setattr(model, "kv_cache", lambda length: contextlib.nullcontext())
    uncached = losses_and_answers(model, examples, 3, torch.device("cpu"), 6, end_token=-1)

    # Assert: the same loss sum, token counts and answers, token by token.
    assert cached == uncached
    assert all(len(answer) == 6 for answer in cached[3])
