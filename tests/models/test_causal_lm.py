"""Tests for the generative network: truncated backbone + final norm + the frozen (tied) LM head."""

from __future__ import annotations

import pytest
import torch

from fedbrick_flower.adapters.lora import LoraSettings, adapter_tensors, attach_lora
from fedbrick_flower.models import ModelSpec, keep_layers, model_family
from fedbrick_flower.models.causal_lm import causal_lm
from fedbrick_flower.objectives import response_loss
from tests.conftest import tiny_model

SPEC = ModelSpec(key="m", family="llama", tokenizer="minilm")


def _tied_llama():
    from transformers import AutoConfig, AutoModel

    from tests.conftest import TINY_CONFIGS

    config = AutoConfig.for_model("llama", vocab_size=100, tie_word_embeddings=True, **TINY_CONFIGS["llama"])
    torch.manual_seed(0)
    return AutoModel.from_config(config).eval()


def test_lm_head_stays_tied_to_the_embedding_and_frozen() -> None:
    # Prepare: the client's network as assembly builds it: truncated, LoRA injected, then the LM head.
    backbone = _tied_llama()
    family = model_family(backbone)
    keep_layers(backbone, family, [1, 3])
    attach_lora(backbone, family, LoraSettings(rank=2), seed=0)

    # Execute
    model = causal_lm(backbone, SPEC, seed=0)

    # Assert: the head IS the embedding matrix (no copy), nothing of it trains, and it is not an adapter tensor.
    assert model.lm_head.weight is backbone.get_input_embeddings().weight
    assert not model.lm_head.weight.requires_grad
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert all(name.startswith("layers.") for name in adapter_tensors(model, family))


def test_tied_head_is_unchanged_by_training_and_gives_the_embedding_logits() -> None:
    # Prepare
    backbone = _tied_llama()
    family = model_family(backbone)
    attach_lora(backbone, family, LoraSettings(rank=2), seed=0)
    model = causal_lm(backbone, SPEC, seed=0)
    before = model.lm_head.weight.detach().clone()
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)

    # Execute
    loss = model(ids, mask).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()

    # Assert
    assert torch.equal(model.lm_head.weight, before)
    hidden = model.hidden_states(ids, mask)
    torch.testing.assert_close(model(ids, mask), hidden @ backbone.get_input_embeddings().weight.T)


def test_untied_head_is_seeded_identically_and_frozen() -> None:
    # Prepare: a random-init llama (tie_word_embeddings false by default) in two "processes".
    first, second = tiny_model("llama"), tiny_model("llama")

    # Execute
    a, b = causal_lm(first, SPEC, seed=3), causal_lm(second, SPEC, seed=3)

    # Assert
    assert a.lm_head.weight is not first.get_input_embeddings().weight
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not a.lm_head.weight.requires_grad


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text", "gpt2"])
def test_every_decoder_family_trains_lora_of_its_held_layers_on_the_response_loss(model_type: str) -> None:
    # Prepare: layers 1 and 3 of a tiny model of the family, LoRA on q and v, its LM head; one prompt -> response.
    backbone = tiny_model(model_type)
    family = model_family(backbone)
    keep_layers(backbone, family, [1, 3])
    attach_lora(backbone, family, LoraSettings(rank=2), seed=0)
    model = causal_lm(backbone, ModelSpec(key="m", family=model_type, tokenizer="minilm"), seed=0)
    with torch.no_grad():  # B = 0 at start would give A no gradient
        for name, tensor in adapter_tensors(model, family).items():
            if name.endswith("lora_B"):
                tensor.normal_(0, 0.1)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([[-100] * 3 + [8, 9]])}

    # Execute
    loss = response_loss(model, batch)
    loss.backward()

    # Assert: a finite loss, gradients on every LoRA factor of the held layers and on nothing else.
    tensors = adapter_tensors(model, family)
    assert torch.isfinite(loss) and {int(name.split(".")[1]) for name in tensors} == {1, 3}
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tensors.values())
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
