"""A task descriptor: the sanitised gradient of a frozen, shared probe model (RELA in Seo et al., ICLR 2026, §3.5).

Every client runs the same frozen decoder (SmolLM2-135M by default) on its own texts and takes the gradient of the
next-token loss with respect to the probe's LAST MLP down-projection weight, in closed form (no backward pass):

    δ     = (softmax(logits) − onehot(next token)) / N_tok      at every position with a real next token
    g_h   = δ E                      (E: the tied embedding = LM head)
    g_pre = RMSNorm VJP of g_h       (exact here; the official code uses a diagonal approximation)
    G     = Σ_tokens g_preᵀ u        (d × d_ff; u is the down-projection's input)

The loss covers the positions a target mask names: every real next token of the input (the text alone), or, as
the paper does with answer tokens, only the answer appended to the text (:func:`append_answers`: a classification
client's verbalised label), so clients with the same texts and different labels get different gradients.
Sanitisation keeps a fixed row subset (server-seeded), adds Gaussian noise, averages the round's samples and keeps
an EMA across rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .spec import ModelSpec

PROBE_FAMILIES = ("llama", "qwen2")


def probe_problems(config: Any) -> list[str]:
    """Why a probe of this Hugging Face config cannot serve (empty: it can): it must be an RMSNorm decoder of
    :data:`PROBE_FAMILIES` whose LM head is its tied input embedding. Read from the config alone, so the
    scenario's pre-flight refuses a wrong probe before any client starts."""
    if config.model_type not in PROBE_FAMILIES:
        return [
            f"algorithm_params.probe: the probe must be a decoder of {list(PROBE_FAMILIES)}, got {config.model_type!r}"
        ]
    if not getattr(config, "tie_word_embeddings", False):
        return ["algorithm_params.probe: the probe's LM head must be tied to its embedding (tie_word_embeddings)"]
    return []


def check_probe(backbone: nn.Module) -> None:
    """Refuse a probe whose LM head is not its tied input embedding, or that is not an RMSNorm decoder."""
    problems = probe_problems(backbone.config)
    if problems:
        raise ValueError(problems[0])


@torch.no_grad()
def down_projection_gradient(
    backbone: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Closed-form gradient of the mean next-token loss w.r.t. the last layer's ``mlp.down_proj.weight``.

    Parameters
    ----------
    backbone : nn.Module
        A Llama-style ``AutoModel`` (``layers``, ``norm``, ``embed_tokens``) with a tied LM head.
    input_ids, attention_mask : torch.Tensor
        ``(batch, tokens)``.
    target_mask : torch.Tensor, optional
        ``(batch, tokens)``, true at the tokens the loss predicts (from the position before); by default every
        real token after the first (the whole text).

    Returns
    -------
    torch.Tensor
        ``(d, d_ff)``, equal to autograd's gradient of that loss.
    """
    captured: dict[str, torch.Tensor] = {}
    down = backbone.layers[-1].mlp.down_proj
    hooks = [
        down.register_forward_hook(lambda m, args, out: captured.__setitem__("u", args[0])),
        backbone.norm.register_forward_hook(lambda m, args, out: captured.__setitem__("x", args[0])),
    ]
    try:
        backbone(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for hook in hooks:
            hook.remove()
    x, u = captured["x"].double(), captured["u"].double()
    norm, embedding = backbone.norm, backbone.embed_tokens.weight.double()
    eps = norm.variance_epsilon
    rs = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    weight = norm.weight.double()
    hidden = weight * x * rs
    targets = attention_mask if target_mask is None else target_mask
    valid = (attention_mask[:, :-1] * targets[:, 1:]).bool()
    count = max(int(valid.sum()), 1)
    delta = torch.softmax(hidden[:, :-1] @ embedding.T, dim=-1)
    delta -= F.one_hot(input_ids[:, 1:], embedding.shape[0]).double()
    delta = delta * valid.unsqueeze(-1) / count
    g_h = torch.zeros_like(x)
    g_h[:, :-1] = delta @ embedding
    gw = g_h * weight
    g_pre = rs * gw - x * rs.pow(3) * (gw * x).mean(dim=-1, keepdim=True)
    return torch.einsum("btd,btf->df", g_pre, u).float()


def append_answers(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, answers: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's real tokens (prompt) followed by its answer tokens, right-padded, and the answer's target mask.

    Parameters
    ----------
    input_ids, attention_mask : torch.Tensor
        ``(batch, tokens)`` prompts, padded on either side.
    answers : Sequence[Sequence[int]]
        One non-empty token sequence per row.
    pad_id : int
        Filler of the padding (masked out).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        ``input_ids``, ``attention_mask`` and ``target_mask`` (true at the answer tokens) for
        :func:`down_projection_gradient`.
    """
    rows = [
        ids[mask.bool()].tolist() + list(answer)
        for ids, mask, answer in zip(input_ids, attention_mask, answers, strict=True)
    ]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    for index, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
        target[index, len(row) - len(answer) : len(row)] = True
    return ids, mask, target


def probe_rows(seed: int, width: int, fraction: float) -> np.ndarray:
    """The fixed row subset every client keeps: ``round(fraction · width)`` sorted rows drawn from ``seed``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"algorithm_params.gradient_fraction must be in (0, 1], got {fraction}")
    count = max(1, round(fraction * width))
    return np.sort(np.random.default_rng(seed).choice(width, size=count, replace=False))


def sanitize(gradient: np.ndarray, rows: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Keep ``rows`` of ``gradient`` and add N(0, σ²) noise."""
    kept = np.asarray(gradient, dtype=np.float64)[rows]
    return (kept + rng.normal(0.0, sigma, size=kept.shape)).astype(np.float32)


def ema(previous: np.ndarray | None, current: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 − α) previous + α current``; the first value is ``current`` itself."""
    if previous is None or previous.shape != current.shape:
        return np.asarray(current, dtype=np.float32)
    return ((1.0 - alpha) * previous + alpha * current).astype(np.float32)


def probe_spec(models: Mapping[str, ModelSpec], name: str) -> ModelSpec:
    """The probe's model spec: a key of the scenario's ``models`` (e.g. a tiny random decoder), else a source."""
    return models[name] if name in models else ModelSpec(key=name, source=name)
