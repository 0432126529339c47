"""Build a client's network: backbone (pretrained or random-init), depth truncation, pooling and task head."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..cache import file_memo
from .families import FamilySpec, family_of
from .placement import autocast
from .spec import ModelSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@file_memo(maxsize=8, files=lambda source, cache_dir=None: (source,))
def load_tokenizer(source: str, cache_dir: Path | None = None) -> Any:
    """Load (and cache per process, and per version of a local folder) a tokenizer, with a pad token for decoder
    families."""
    from transformers import AutoTokenizer

    from .sources import resolve_pretrained

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(source, cache_dir))
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give ``tokenizer`` a pad token if it lacks one, and pad on the right.

    Decoder tokenizers (Llama, GPT-2) usually ship without a pad token; the eos
    token is reused (else unk). Padding is masked out by the attention mask, so
    the choice of id does not matter, but the model config must be given the same
    ``pad_token_id`` so sequence classifiers find each row's last real token.
    Right padding is required by :func:`~fedbrick_flower.data.batches.iterate_batches`, which trims batches by
    cutting trailing columns.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        Modified in place.

    Raises
    ------
    ValueError
        If the tokenizer has neither a pad, an eos nor an unk token.
    """
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError("tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"


def load_config(spec: ModelSpec, cache_dir: Path | None = None, **overrides: Any) -> Any:
    """The Hugging Face config of ``spec``, read without loading any weights (``overrides`` for random-init)."""
    from transformers import AutoConfig

    from .sources import resolve_pretrained

    if spec.is_random_init:
        return AutoConfig.for_model(spec.family, **{**dict(spec.config), **overrides})
    return AutoConfig.from_pretrained(resolve_pretrained(spec.source, cache_dir))


def load_backbone(spec: ModelSpec, seed: int, cache_dir: Path | None = None) -> nn.Module:
    """Load the full-depth base model of ``spec`` (random-init models are seeded, identical everywhere)."""
    from transformers import AutoModel

    from .sources import resolve_pretrained

    if spec.is_random_init:
        vocab_size = len(load_tokenizer(spec.tokenizer_source, cache_dir))
        config = load_config(spec, cache_dir, vocab_size=vocab_size)
        with torch.random.fork_rng():
            torch.manual_seed(stable_seed(seed, spec.key, "backbone"))
            model = AutoModel.from_config(config)
    else:
        model = AutoModel.from_pretrained(resolve_pretrained(spec.source, cache_dir))
    _disable_cache(model)
    return model.eval()


def model_family(model: nn.Module) -> FamilySpec:
    """The registered family of a loaded Hugging Face model."""
    return family_of(model.config.model_type)


def hidden_size(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def num_layers(model: nn.Module) -> int:
    return int(getattr(model.config, model_family(model).depth_attribute))


def _disable_cache(model: nn.Module) -> None:
    # Classification never decodes step by step; a KV cache only costs memory.
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False


class SequenceClassifier(nn.Module):
    """Backbone, mean pooling over real tokens, and a linear head.

    Mean pooling is how the sentence-transformer checkpoints were trained, and it also gives decoder
    families a sequence summary that does not depend on where the padding sits.
    """

    def __init__(self, backbone: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size(backbone), num_labels)
        self.autocast_dtype: torch.dtype | None = None  # bf16 on a CPU: the backbone runs under autocast

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with autocast(self.autocast_dtype):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.to(self.head.weight.dtype) if self.autocast_dtype is not None else hidden
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled.to(self.head.weight.dtype))

    def reset_head(self, seed: int) -> None:
        """Initialise the head from a seed so that every client of a task starts from the same head."""
        generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / self.head.in_features**0.5
        with torch.no_grad():
            weight = torch.empty(self.head.weight.shape).uniform_(-bound, bound, generator=generator)
            self.head.weight.copy_(weight)
            self.head.bias.zero_()
