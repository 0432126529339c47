"""Scoring a network on examples: one definition for the clients' own test splits and the server's held-out split.

Both halves import it, so the accuracy a client reports and the one the server computes are the same function.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .data import EncodedExamples, iterate_batches


@torch.no_grad()
def evaluate(model: nn.Module, examples: EncodedExamples, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Accuracy and mean cross-entropy over all ``examples``."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for batch in iterate_batches(examples, batch_size, shuffle=False):
        batch = {key: value.to(device) for key, value in batch.items()}
        logits = model(batch["input_ids"], batch["attention_mask"]).float()
        loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        correct += int((logits.argmax(dim=-1) == batch["labels"]).sum())
    total = max(1, len(examples))
    return correct / total, loss_sum / total
