"""Tests for generative examples: response-only labels, chat template, overlong policies, packaged tasks."""

from __future__ import annotations

import copy

import pytest
import torch

from fedbrick_flower.data import IGNORE_INDEX, encode_generative, load_packaged, normalize_answer
from fedbrick_flower.data.generative import format_pair
from fedbrick_flower.data.instructions import load_instruction_task
from fedbrick_flower.models import load_tokenizer

TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} [end] {% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.fixture(scope="module")
def plain():
    """MiniLM's WordPiece tokenizer: no chat template, no eos (answers end with [SEP])."""
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def templated(plain):
    tokenizer = copy.deepcopy(plain)
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_labels_are_ignored_exactly_on_prompt_and_padding(plain) -> None:
    # Prepare: two pairs of different lengths, so the shorter row is padded.
    prompts, responses = ["what is the capital of france", "hi"], ["paris", "hello there my friend"]

    # Execute
    encoded = encode_generative(plain, prompts, responses, 64)

    # Assert: row = prompt "\n" then response [SEP]; labels copy the response tokens and are -100 elsewhere.
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        prompt_ids = _ids(plain, prompt + "\n")
        response_ids = [*_ids(plain, response), plain.sep_token_id]
        length = len(prompt_ids) + len(response_ids)
        assert encoded.input_ids[row, :length].tolist() == prompt_ids + response_ids
        assert encoded.attention_mask[row].tolist() == [1] * length + [0] * (encoded.input_ids.shape[1] - length)
        expected = [IGNORE_INDEX] * len(prompt_ids) + response_ids
        expected += [IGNORE_INDEX] * (encoded.input_ids.shape[1] - length)
        assert encoded.labels[row].tolist() == expected
    assert encoded.truncated == encoded.dropped == 0


def test_chat_template_is_used_when_the_tokenizer_has_one(templated) -> None:
    # Execute
    prompt_ids, response_ids = format_pair(templated, "name a colour", "blue")

    # Assert: the prompt part ends with the assistant header; the response part is the answer and end of turn.
    assert prompt_ids == _ids(templated, "[user] name a colour [end] [assistant] ")
    assert response_ids == _ids(templated, "blue [end] ")


def test_smollm2_tokenizer_has_a_chat_template_that_frames_the_answer() -> None:
    # Prepare
    tokenizer = load_tokenizer("smollm2-135m")

    # Execute
    prompt_ids, response_ids = format_pair(tokenizer, "Hi", "Hello!")

    # Assert
    assert tokenizer.chat_template
    assert tokenizer.decode(prompt_ids).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(response_ids) == "Hello!<|im_end|>\n"


@pytest.mark.parametrize(("overlong", "rows", "truncated", "dropped"), [("truncate", 2, 1, 1), ("drop", 1, 0, 2)])
def test_overlong_examples_are_truncated_or_dropped_and_counted(plain, overlong, rows, truncated, dropped) -> None:
    # Prepare: "a" fits; "b" has a long response; "c" has a prompt that alone fills max_length.
    max_length = 8
    prompts = ["a", "b", " ".join(["word"] * 10)]
    responses = ["yes", " ".join(["long"] * 10), "no"]

    # Execute
    encoded = encode_generative(plain, prompts, responses, max_length, overlong=overlong, what="pairs")

    # Assert
    assert len(encoded) == rows and (encoded.truncated, encoded.dropped) == (truncated, dropped)
    assert encoded.input_ids.shape[1] <= max_length
    if overlong == "truncate":
        prompt_length = len(_ids(plain, "b\n"))
        assert encoded.attention_mask[1].sum() == max_length
        assert encoded.labels[1, prompt_length:].tolist() == _ids(plain, responses[1])[: max_length - prompt_length]


def test_normalize_answer_ignores_case_punctuation_and_spacing() -> None:
    assert normalize_answer("  Birth-Control! \n") == "birthcontrol"
    assert normalize_answer("Sport.") == normalize_answer("sport")
    assert normalize_answer("New  York") == "new york"
    assert normalize_answer("tech") != normalize_answer("politics")


def test_chat_pairs_are_consecutive_turns() -> None:
    # Execute
    dataset = load_packaged("chat-pairs")

    # Assert: every response of a pair that starts a conversation is the next turn of that conversation.
    pairs = set(zip(dataset.texts, dataset.responses, strict=True))
    assert ("Are you sapient?", "In all probability, I am not. I'm not that sophisticated.") in pairs
    assert len(pairs) == len(dataset) and len(dataset.label_names) == 21


def test_classification_as_generation_answers_with_the_label_word() -> None:
    # Execute
    dataset = load_packaged("bbc-news-gen")

    # Assert
    assert set(dataset.responses) == {"business", "entertainment", "politics", "sports", "tech"}
    assert all(dataset.responses[i] == dataset.label_names[dataset.labels[i]] for i in range(0, len(dataset), 97))
    assert dataset.texts[0].startswith("What is the topic of this news article? Answer with one of: business")
    assert len(dataset.texts[0].split("\n\n", 1)[1].split()) <= 25


def test_unknown_packaged_dataset_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown dataset name 'nope'"):
        load_instruction_task("nope")


def test_batches_cut_token_labels_to_the_batch_width(plain) -> None:
    # Prepare
    from fedbrick_flower.data import iterate_batches

    encoded = encode_generative(plain, ["a", "a much longer prompt than the other"], ["b", "c"], 32)

    # Execute
    batch = next(iterate_batches(encoded.subset([0]), 4, shuffle=False))

    # Assert
    assert batch["labels"].shape == batch["input_ids"].shape == (1, int(encoded.attention_mask[0].sum()))
    assert torch.equal(batch["labels"], encoded.labels[:1, : batch["labels"].shape[1]])


def test_overlong_pairs_are_logged_with_the_first_origin(plain, caplog) -> None:
    # Prepare: the second pair's response does not fit.
    origins = ["pairs.jsonl row 1", "pairs.jsonl row 2"]

    # Execute
    with caplog.at_level("WARNING"):
        encoded = encode_generative(
            plain, ["a", "b"], ["yes", " ".join(["long"] * 20)], 8, overlong="drop", origins=origins, what="task t"
        )

    # Assert
    assert (len(encoded), encoded.dropped) == (1, 1)
    assert "task t: 1 example(s) dropped, longer than max_length=8 tokens; first: pairs.jsonl row 2" in caplog.text
