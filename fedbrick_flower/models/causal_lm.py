"""The network of a generative task: the (truncated) decoder backbone, its final norm, and the LM head.

:class:`CausalLM` wraps the same base model (``AutoModel``) that :class:`~.backbone.SequenceClassifier` wraps, so
depth truncation with global indices, LoRA injection and BRICK fillers work unchanged. The final norm belongs to
the base model (``norm`` in Llama/Qwen2/Gemma3, ``ln_f`` in GPT-2). The LM head is frozen: with tied embeddings
(SmolLM2, Gemma3, GPT-2) it IS the input embedding matrix, shared rather than copied; an untied head is loaded
from the checkpoint (or seeded for a random-init model). Nothing of it is trained or sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cache import file_memo
from .backbone import hidden_size, model_family, stable_seed
from .placement import autocast
from .spec import ModelSpec
from .stack import holds_shims, positional_layer_indices


class CausalLM(nn.Module):
    """Backbone + frozen LM head, with logits computed only where they are needed.

    Parameters
    ----------
    backbone : nn.Module
        A Hugging Face base decoder (possibly truncated, with LoRA); its output is final-normed.
    lm_head : nn.Linear
        The output projection ``d -> vocab`` (bias-free); frozen here.
    logit_softcap : float, optional
        Gemma-style final logit soft-capping ``cap * tanh(logits / cap)``.
    """

    def __init__(self, backbone: nn.Module, lm_head: nn.Linear, logit_softcap: float | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.lm_head = lm_head.requires_grad_(False)
        self.logit_softcap = logit_softcap
        self.autocast_dtype: torch.dtype | None = None  # bf16 on a CPU: the backbone runs under autocast

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Final-normed hidden states ``(B, T, d)``.

        With a ``cache`` (from :meth:`kv_cache`), ``input_ids`` are the new tokens only, ``attention_mask`` covers
        the cached tokens and the new ones, and ``position_ids`` give each new token's position.
        """
        with autocast(self.autocast_dtype):
            if cache is None:
                return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            outputs = self.backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            return outputs.last_hidden_state

    @contextlib.contextmanager
    def kv_cache(self, length: int) -> Iterator[Any]:
        """A fresh KV cache for step-by-step decoding of sequences up to ``length`` tokens, or None where one cannot
        give the same answers as decoding without it.

        The stack's layers are re-indexed by position for the block (:func:`positional_layer_indices`), so a truncated
        stack (layers 26-29 of 30) caches in slots 0-3. None for a stack with surrogate layers (a BRICK keeps no
        cache), and for sliding-window attention shorter than ``length`` (the cache would count the window in slots,
        padding included, where decoding without it counts positions).
        """
        from transformers import DynamicCache

        family = model_family(self.backbone)
        window = getattr(self.backbone.config, "sliding_window", None)
        if holds_shims(self.backbone, family) or (window is not None and window < length):
            yield None
            return
        with positional_layer_indices(self.backbone, family):
            yield DynamicCache(config=self.backbone.config)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of hidden states of any leading shape (in the head's dtype)."""
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype))
        if self.logit_softcap is not None:
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        return logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` of every position; the loss and scoring only compute the positions they use."""
        return self.logits(self.hidden_states(input_ids, attention_mask))


def causal_lm(backbone: nn.Module, spec: ModelSpec, seed: int) -> CausalLM:
    """Wrap ``backbone`` with its LM head: tied to its own embedding matrix, or an untied frozen copy."""
    config = backbone.config
    vocab_size, width = backbone.get_input_embeddings().weight.shape
    head = nn.Linear(width, vocab_size, bias=False)
    if getattr(config, "tie_word_embeddings", True):
        head.weight = backbone.get_input_embeddings().weight
    else:
        with torch.no_grad():
            head.weight.copy_(untied_head_weight(spec, seed, vocab_size, hidden_size(backbone)))
    return CausalLM(backbone, head, getattr(config, "final_logit_softcapping", None))


@file_memo(maxsize=4, files=lambda spec, *args, **kwargs: spec.files)
def untied_head_weight(spec: ModelSpec, seed: int, vocab_size: int, width: int, cache_dir: Path | None = None):  # noqa: ANN201
    """The LM head matrix of a model whose head is not its embedding (a read-only memo, like ``cached_backbone``).

    Pretrained: read from the checkpoint's causal-LM model. Random-init: normal(0, 0.02) from a seed shared by
    every process, so all clients score with the same head.
    """
    if spec.is_random_init:
        generator = torch.Generator().manual_seed(stable_seed(seed, spec.key, "lm-head"))
        return torch.randn((vocab_size, width), generator=generator) * 0.02
    from transformers import AutoModelForCausalLM

    from .sources import resolve_pretrained

    model = AutoModelForCausalLM.from_pretrained(resolve_pretrained(spec.source, cache_dir))
    return model.get_output_embeddings().weight.detach().clone()
