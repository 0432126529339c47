"""Encoding of generative (prompt -> response) examples: prompt formatting and response-masked labels.

An example is formatted with the tokenizer's chat template where the tokenizer has one (the prompt as a user turn,
the response as the assistant turn), else as ``[bos] prompt "\\n" response [eos]``. Only the response tokens carry
labels: the prompt and the padding get ``-100``, the ignore index of :func:`torch.nn.functional.cross_entropy`,
so the causal-LM loss is on the response alone.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from fedbrick_flower.data.batches import EncodedExamples
from fedbrick_flower.data.checks import LengthFit, fit_lengths, report_overlong
from fedbrick_flower.models.backbone import ensure_pad_token

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def format_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt part and of the response part of one example.

    With a chat template, the prompt part is the conversation up to and including the assistant header
    (``add_generation_prompt``) and the response part the rest of the templated conversation (the answer and the
    end-of-turn tokens). Without one, ``[bos] prompt "\\n"`` and ``response [eos]``.

    Raises
    ------
    ValueError
        If the template's rendering of the whole conversation does not start with its rendering of the prompt.
    """
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(head):
            raise ValueError("the tokenizer's chat template does not extend the prompt with the answer")
        return _ids(tokenizer, head), _ids(tokenizer, full[len(head) :])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + _ids(tokenizer, prompt + "\n"), _ids(tokenizer, response) + [end_token_id(tokenizer)]


def end_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an answer: eos, else sep (BERT-style tokenizers)."""
    token = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if token is None:
        raise ValueError("the tokenizer has neither an eos nor a sep token to end an answer with")
    return int(token)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # verbose=False: the pair is fitted to max_length afterwards, so transformers' over-length warning misleads
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def fit_pairs(
    prompt_lengths: Sequence[int], response_lengths: Sequence[int], max_length: int, policy: str
) -> LengthFit:
    """:func:`~fedbrick_flower.data.checks.fit_lengths` for pairs: truncation cuts the response, so an example
    whose prompt alone leaves no room for one response token is dropped under either policy."""
    totals = [p + r for p, r in zip(prompt_lengths, response_lengths, strict=True)]
    fit = fit_lengths(totals, max_length, policy)
    hopeless = {i for i in fit.truncated if prompt_lengths[i] >= max_length}
    if not hopeless:
        return fit
    return LengthFit(
        keep=tuple(i for i in fit.keep if i not in hopeless),
        truncated=tuple(i for i in fit.truncated if i not in hopeless),
        dropped=tuple(sorted((*fit.dropped, *hopeless))),
    )


def encode_generative(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
    *,
    overlong: str = "truncate",
    origins: Sequence[str] | None = None,
    what: str = "examples",
) -> EncodedExamples:
    """Tokenize pairs, right-padded, with labels on the response tokens only.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        Tokenizer of the model to train (given a pad token here).
    prompts, responses : sequence of str
        The pairs.
    max_length : int
        Longest encoded example in tokens, prompt and response together.
    overlong : {"truncate", "drop"} (default: "truncate")
        What happens to a longer example: its response is cut to fit, or it is left out (:func:`fit_pairs`).
    origins : sequence of str, optional
        Where each example was read, to name the first overlong one in the log.
    what : str (default: "examples")
        What these examples are, for the log.

    Returns
    -------
    EncodedExamples
        ``labels`` of shape ``(N, T)``: ``labels[i, t] = input_ids[i, t]`` on response tokens and -100 on the
        prompt and the padding; with the numbers of truncated and dropped examples.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses differ in length: {len(prompts)} != {len(responses)}")
    ensure_pad_token(tokenizer)
    pairs = [format_pair(tokenizer, prompt, response) for prompt, response in zip(prompts, responses, strict=True)]
    fit = fit_pairs([len(p) for p, _ in pairs], [len(r) for _, r in pairs], max_length, overlong)
    report_overlong(fit, max_length, what, origins)
    rows = [(pairs[i][0], pairs[i][1][: max_length - len(pairs[i][0])]) for i in fit.keep]
    width = max((len(p) + len(r) for p, r in rows), default=0)
    input_ids = torch.full((len(rows), width), int(tokenizer.pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt_ids, response_ids) in enumerate(rows):
        values = torch.tensor(prompt_ids + response_ids, dtype=torch.long)
        input_ids[row, : len(values)] = values
        attention_mask[row, : len(values)] = 1
        labels[row, len(prompt_ids) : len(values)] = values[len(prompt_ids) :]
    return EncodedExamples(input_ids, attention_mask, labels, truncated=len(fit.truncated), dropped=len(fit.dropped))


def normalize_answer(text: str) -> str:
    """Exact-match normalisation: lowercase, punctuation removed, whitespace collapsed and stripped."""
    lowered = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(lowered.split())
