"""Scoring a network on examples: one definition for the clients' own test splits and the server's held-out split.

Both halves import it, so the accuracy a client reports and the one the server computes are the same function.
Classification: accuracy and mean cross-entropy. Generation: mean response-token cross-entropy, perplexity (its
exponential), top-1 response-token accuracy, and where answers are short, exact match of greedy answers.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .data import EncodedExamples, iterate_batches
from .data.generative import IGNORE_INDEX, normalize_answer
from .models import CausalLM

Batch = dict[str, torch.Tensor]


def scored_round(server_round: int, every: int, rounds: int) -> bool:
    """Whether round ``server_round`` of ``rounds`` is scored under ``evaluate_every: every``: each ``every``-th
    round and always the last one (so a run's final figures never depend on ``every``)."""
    return server_round % every == 0 or server_round >= rounds


@torch.no_grad()
def evaluate(model: nn.Module, examples: EncodedExamples, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of a classifier over all ``examples``."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for batch in iterate_batches(examples, batch_size, shuffle=False):
        batch = {key: value.to(device) for key, value in batch.items()}
        logits = model(batch["input_ids"], batch["attention_mask"]).float()
        loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        correct += int((logits.argmax(dim=-1) == batch["labels"]).sum())
    total = max(1, len(examples))
    return correct / total, loss_sum / total


def response_logits(model: CausalLM, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits (float32) at the positions that predict a response token, and those tokens.

    Position ``t`` predicts token ``t + 1``; only targets that are not -100 count, so the LM head runs on the
    response positions alone (the prompt and the padding never reach the vocabulary projection).
    """
    return _response_positions(model, model.hidden_states(batch["input_ids"], batch["attention_mask"]), batch["labels"])


def _response_positions(
    model: CausalLM, hidden: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return model.logits(hidden[:, :-1][keep]).float(), targets[keep]


@torch.no_grad()
def evaluate_generative(
    model: CausalLM,
    examples: EncodedExamples,
    batch_size: int,
    device: torch.device,
    *,
    end_token: int,
    short_answer_tokens: int,
    decode: Callable[[Sequence[int]], str],
) -> dict[str, float]:
    """Response-token loss, perplexity and token accuracy; exact match of greedy answers where answers are short.

    Parameters
    ----------
    model : CausalLM
        The network to score.
    examples : EncodedExamples
        Generative examples (labels ``(N, T)``, -100 off the response).
    batch_size : int
        Sequences per forward pass.
    device : torch.device
        Where the model runs.
    end_token : int
        The token that ends an answer; greedy decoding stops there.
    short_answer_tokens : int
        If no reference answer is longer than this (end token included), answers are generated greedily and
        ``accuracy`` is their exact match after :func:`~fedbrick_flower.data.normalize_answer`; otherwise
        ``accuracy`` is the top-1 response-token accuracy under teacher forcing.
    decode : callable
        Token ids -> text (special tokens skipped).

    Returns
    -------
    dict of str to float
        ``loss`` (mean over response tokens), ``perplexity`` (``exp(loss)``), ``token-accuracy`` and ``accuracy``;
        plus ``exact-match`` (equal to ``accuracy``) where answers are short.
    """
    model.eval()
    answer_lengths = (examples.labels != IGNORE_INDEX).sum(dim=1)
    longest = int(answer_lengths.max()) if len(examples) else 0
    short = 0 < longest <= short_answer_tokens
    loss_sum, correct, tokens, predictions = losses_and_answers(
        model, examples, batch_size, device, longest if short else 0, end_token
    )
    loss = loss_sum / max(1, tokens)
    token_accuracy = correct / max(1, tokens)
    scores = {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float beyond ~709
        "token-accuracy": token_accuracy,
        "accuracy": token_accuracy,
    }
    if short:
        references = [row[row != IGNORE_INDEX].tolist() for row in examples.labels]
        scores["exact-match"] = scores["accuracy"] = exact_match(
            [decode(p) for p in predictions], [decode(r) for r in references]
        )
    return scores


@torch.no_grad()
def losses_and_answers(
    model: CausalLM,
    examples: EncodedExamples,
    batch_size: int,
    device: torch.device,
    max_new_tokens: int,
    end_token: int,
) -> tuple[float, int, int, list[list[int]]]:
    """Teacher-forced response-token loss sum, correct tokens and token count; with ``max_new_tokens`` also the
    greedy answers to the prompts.

    One forward pass per batch over the whole sequences gives both: its response positions the loss, and, run
    through a KV cache, the prompts' keys and values and each prompt's first answer token (causal attention: a prompt
    position never sees the response after it). Decoding then continues from the cache with the responses masked
    out, one token per row and step. A model without a usable cache (:meth:`CausalLM.kv_cache`) takes the same pass
    without one, and :func:`greedy_answers` decodes after it.
    """
    loss_sum, correct, tokens = 0.0, 0, 0
    answers: list[list[int]] = []
    prompt_lengths = (examples.labels != IGNORE_INDEX).int().argmax(dim=1)
    every_batch_cached = True
    batches = iterate_batches(examples, batch_size, shuffle=False)
    for start, batch in zip(range(0, len(examples), batch_size), batches, strict=True):
        ids, mask, labels = (batch[key].to(device) for key in ("input_ids", "attention_mask", "labels"))
        rows, width = ids.shape
        opened = model.kv_cache(width + max_new_tokens) if max_new_tokens else contextlib.nullcontext()
        with opened as cache:
            positions = torch.arange(width, device=device)[None, :].expand(rows, -1)
            hidden = model.hidden_states(ids, mask, positions, cache)
            logits, targets = _response_positions(model, hidden, labels)
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == targets).sum())
            tokens += int(targets.numel())
            every_batch_cached &= cache is not None
            if cache is not None:
                lengths = prompt_lengths[start : start + rows].to(device)
                first = model.logits(hidden[torch.arange(rows, device=device), lengths - 1]).argmax(dim=-1)
                prompts = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
                answers += _continue_cached(model, cache, prompts, first, lengths, max_new_tokens, end_token)
    if max_new_tokens and not every_batch_cached:
        answers = greedy_answers(model, examples, batch_size, device, max_new_tokens, end_token)
    return loss_sum, correct, tokens, answers


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after :func:`normalize_answer`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    return hits / max(1, len(references))


@torch.no_grad()
def greedy_answers(
    model: CausalLM,
    examples: EncodedExamples,
    batch_size: int,
    device: torch.device,
    max_new_tokens: int,
    end_token: int,
) -> list[list[int]]:
    """Greedy answers to the prompts of ``examples`` (the tokens before the first labelled one), end token excluded.

    Prompts are batched on right padding, so every real token keeps its position and never attends to padding.
    Decoding runs with a KV cache (:meth:`CausalLM.kv_cache`): one pass over the prompts, then one token per row and
    step; a model that cannot use one (BRICK surrogates in its stack) decodes without it, recomputing the sequences.
    """
    model.eval()
    answers: list[list[int]] = []
    prompt_lengths = (examples.labels != IGNORE_INDEX).int().argmax(dim=1)
    for start in range(0, len(examples), batch_size):
        lengths = prompt_lengths[start : start + batch_size].clone().to(device)
        source = examples.input_ids[start : start + batch_size, : int(lengths.max())].to(device)
        with model.kv_cache(source.shape[1] + max_new_tokens) as cache:
            decode = _decode_uncached if cache is None else functools.partial(_decode_cached, cache=cache)
            answers.extend(decode(model, source, lengths, max_new_tokens, end_token))
    return answers


def _decode_uncached(
    model: CausalLM, source: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int, end_token: int
) -> list[list[int]]:
    """Greedy decoding in place on right padding, every step recomputing the sequences: row ``i`` writes its next
    token at its own length."""
    device = source.device
    rows = len(lengths)
    width = source.shape[1] + max_new_tokens
    ids = torch.zeros((rows, width), dtype=torch.long, device=device)
    mask = torch.zeros((rows, width), dtype=torch.long, device=device)
    prompt = torch.arange(width, device=device)[None, : source.shape[1]] < lengths[:, None]
    ids[:, : source.shape[1]] = torch.where(prompt, source, 0)
    mask[:, : source.shape[1]] = prompt.long()
    first = lengths.clone()
    active = torch.ones(rows, dtype=torch.bool, device=device)
    index = torch.arange(rows, device=device)
    for _ in range(max_new_tokens):
        current = int(lengths.max())
        hidden = model.hidden_states(ids[:, :current], mask[:, :current])
        token = model.logits(hidden[index, lengths - 1]).argmax(dim=-1)
        active &= token != end_token
        ids[index[active], lengths[active]] = token[active]
        mask[index[active], lengths[active]] = 1
        lengths = lengths + active.long()
        if not bool(active.any()):
            break
    return [ids[i, int(first[i]) : int(lengths[i])].tolist() for i in range(rows)]


def _decode_cached(
    model: CausalLM,
    source: torch.Tensor,
    lengths: torch.Tensor,
    max_new_tokens: int,
    end_token: int,
    *,
    cache: object,
) -> list[list[int]]:
    """Greedy decoding with a KV cache: the padded prompts once, then each row's new token at its own position.

    The cache appends every step's tokens after the padded prompts; the mask hides each row's padding (and the
    tokens of rows that have ended), and ``position_ids`` give a new token the position it has without a cache, so
    every row attends to the same tokens at the same positions as in :func:`_decode_uncached`.
    """
    device = source.device
    rows, width = source.shape
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), source, 0)
    positions = torch.arange(width, device=device)[None, :].expand(rows, -1)
    hidden = model.hidden_states(ids, mask, positions, cache)
    first = model.logits(hidden[torch.arange(rows, device=device), lengths - 1]).argmax(dim=-1)
    return _continue_cached(model, cache, mask, first, lengths, max_new_tokens, end_token)


def _continue_cached(
    model: CausalLM,
    cache: object,
    mask: torch.Tensor,
    token: torch.Tensor,
    lengths: torch.Tensor,
    max_new_tokens: int,
    end_token: int,
) -> list[list[int]]:
    """Greedy decoding on from a filled cache: ``token`` is each row's first answer token, ``mask`` marks the
    cached positions each row may attend to (its prompt), ``lengths`` its prompt length (the new token's position).
    """
    rows = len(lengths)
    active = torch.ones(rows, dtype=torch.bool, device=token.device)
    answers: list[list[int]] = [[] for _ in range(rows)]
    position = lengths.clone()
    for step in range(max_new_tokens):
        active &= token != end_token
        for row in torch.arange(rows)[active.cpu()].tolist():
            answers[row].append(int(token[row]))
        if step + 1 == max_new_tokens or not bool(active.any()):
            break
        mask = torch.cat([mask, active.long()[:, None]], dim=1)
        hidden = model.hidden_states(token[:, None], mask, position[:, None], cache)
        position = position + 1
        token = model.logits(hidden[:, -1]).argmax(dim=-1)
    return answers
