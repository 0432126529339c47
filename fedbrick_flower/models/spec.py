"""A scenario's model entry: where a backbone comes from. No torch, so reading a scenario loads none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One model of a scenario: a pretrained source, or a small random-init config for tests.

    Parameters
    ----------
    key : str
        The scenario's name for this model; clients of the same key share one global adapter state.
    source : str, optional
        Packaged name (``minilm``, ``smollm2-135m``, ``mpnet-base``...), a local folder or a hub id.
    family : str, optional
        For a random-init model: the Hugging Face ``model_type`` (``bert``, ``llama``, ``gpt2``...).
    config : dict, optional
        For a random-init model: config overrides (``hidden_size``, ``num_hidden_layers``...).
    tokenizer : str, optional
        Tokenizer source; defaults to ``source``. Random-init models need one (``minilm`` is packaged).
    """

    key: str
    source: str | None = None
    family: str | None = None
    config: tuple[tuple[str, Any], ...] = ()
    tokenizer: str | None = None

    @property
    def is_random_init(self) -> bool:
        return self.source is None

    @property
    def tokenizer_source(self) -> str:
        source = self.tokenizer or self.source
        if source is None:
            raise ValueError(f"models.{self.key}.tokenizer is required for a random-init model")
        return source

    @property
    def files(self) -> tuple[str | None, ...]:
        """What loading this model may read from local paths: its source and its tokenizer (see ``file_memo``)."""
        return (self.source, self.tokenizer)
