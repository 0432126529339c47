"""Tokenization of task examples and mini-batch iteration."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedbrick_flower.data.checks import fit_lengths, report_overlong
from fedbrick_flower.data.tasks import TextDataset
from fedbrick_flower.models.backbone import ensure_pad_token

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class EncodedExamples:
    """Tokenized, right-padded examples with their labels.

    Attributes
    ----------
    input_ids : torch.Tensor
        Token ids, shape ``(N, T)``, dtype long.
    attention_mask : torch.Tensor
        1 for real tokens and 0 for padding, shape ``(N, T)``, dtype long.
    labels : torch.Tensor
        Class ids, shape ``(N,)``, or per-token targets ``(N, T)`` of a generative task (-100: no loss), long.
    truncated : int
        How many of the examples were cut to ``max_length`` tokens.
    dropped : int
        How many examples longer than ``max_length`` were left out (not among the ``N``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    truncated: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, idx: Sequence[int] | torch.Tensor) -> EncodedExamples:
        """Return the examples at positions ``idx`` (in that order).

        Parameters
        ----------
        idx : sequence of int or torch.Tensor
            Positions into these examples.

        Returns
        -------
        EncodedExamples
            A new container holding the selected rows.
        """
        rows = torch.as_tensor(idx, dtype=torch.long)
        return EncodedExamples(
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            labels=self.labels[rows],
        )


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[int],
    max_length: int,
    *,
    text_pairs: Sequence[str] | None = None,
    overlong: str = "truncate",
    origins: Sequence[str] | None = None,
    what: str = "examples",
) -> EncodedExamples:
    """Tokenize ``texts`` (or text pairs), padding to the longest encoded example.

    Examples longer than ``max_length`` tokens are cut to it or left out (``overlong``), counted in the
    result and logged (:func:`~fedbrick_flower.data.checks.report_overlong`). Calls :func:`ensure_pad_token`
    on ``tokenizer`` first.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        Tokenizer of the model to train.
    texts : sequence of str
        Examples to encode.
    labels : sequence of int
        Class id of each example.
    max_length : int
        Truncation length in tokens (special tokens included).
    text_pairs : sequence of str, optional
        The second text of each example (pair tasks); the pair is cut longest-first.
    overlong : {"truncate", "drop"}, default "truncate"
        What happens to examples longer than ``max_length``.
    origins : sequence of str, optional
        Where each example was read, to name the first overlong one in the log.
    what : str, default "examples"
        What these examples are, for the log (``"task reviews, client c1, train"``).

    Returns
    -------
    EncodedExamples
        Tensors of width ``min(longest encoded example, max_length)``.
    """
    if len(texts) != len(labels):
        raise ValueError(f"texts and labels differ in length: {len(texts)} != {len(labels)}")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"texts and text_pairs differ in length: {len(texts)} != {len(text_pairs)}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    ensure_pad_token(tokenizer)
    if not texts:
        # Tokenizers reject an empty batch, yet an empty set is valid (a client
        # without a local test split).
        empty = torch.zeros((0, 0), dtype=torch.long)
        return EncodedExamples(input_ids=empty, attention_mask=empty.clone(), labels=torch.zeros(0, dtype=torch.long))
    pairs = list(text_pairs) if text_pairs is not None else None
    # Measured untruncated on purpose (overlong examples are reported below): verbose=False keeps transformers from
    # warning that a sequence exceeds the model's maximum length, which ``max_length`` then truncates anyway.
    lengths = [len(ids) for ids in tokenizer(list(texts), pairs, truncation=False, verbose=False)["input_ids"]]
    fit = fit_lengths(lengths, max_length, overlong)
    report_overlong(fit, max_length, what, origins)
    kept_texts = [texts[i] for i in fit.keep]
    kept_pairs = [pairs[i] for i in fit.keep] if pairs is not None else None
    label_tensor = torch.tensor([labels[i] for i in fit.keep], dtype=torch.long)
    if not kept_texts:
        empty = torch.zeros((0, 0), dtype=torch.long)
        return EncodedExamples(empty, empty.clone(), label_tensor, dropped=len(fit.dropped))
    encoded = tokenizer(
        kept_texts,
        kept_pairs,
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
    )
    return EncodedExamples(
        input_ids=encoded["input_ids"].long(),
        attention_mask=encoded["attention_mask"].long(),
        labels=label_tensor,
        truncated=len(fit.truncated),
        dropped=len(fit.dropped),
    )


def iterate_batches(
    examples: EncodedExamples, batch_size: int, *, shuffle: bool, seed: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield mini-batches, each trimmed to its longest real sequence.

    Trimming drops padding columns that no row of the batch needs, which saves
    most of the compute on short texts padded to a long neighbour's length.

    Parameters
    ----------
    examples : EncodedExamples
        Right-padded examples.
    batch_size : int
        Rows per batch (the last batch may be smaller).
    shuffle : bool
        Visit the rows in a seeded random order instead of in order.
    seed : int, default 0
        Seed of the shuffle; vary it per epoch for a different order.

    Yields
    ------
    dict of str to torch.Tensor
        ``input_ids`` and ``attention_mask`` of shape ``(B, T_batch)`` and
        ``labels`` of shape ``(B,)`` (``(B, T_batch)`` for generative examples).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.arange(len(examples))
    # Sliced by hand: Tensor.split yields one empty chunk for an empty tensor.
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        mask = examples.attention_mask[rows]
        width = int(mask.sum(dim=1).max())
        labels = examples.labels[rows]
        yield {
            "input_ids": examples.input_ids[rows, :width],
            "attention_mask": mask[:, :width],
            # Generative examples label every position (N, T); class labels are one per row.
            "labels": labels[:, :width] if labels.ndim == 2 else labels,
        }


def select(dataset: TextDataset, indices: Sequence[int]) -> tuple[list[str], list[int]]:
    """Return the texts and labels of ``dataset`` at ``indices``.

    Parameters
    ----------
    dataset : TextDataset
        Source task (labelled).
    indices : sequence of int
        Example indices, e.g. a client's ``train`` split.

    Returns
    -------
    texts, labels : list of str, list of int
        In the order of ``indices``.
    """
    labels = dataset.strata
    return [dataset.texts[i] for i in indices], [labels[i] for i in indices]
