"""The client half's interface: what every algorithm's client module implements."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..adapters.lora import adapter_tensors, load_adapter_tensors
from ..models import SequenceClassifier, model_family
from .profile import ClientSession
from .trainer import TrainResult, evaluate, make_optimizer, peak_memory_mb, train_steps


class ClientAlgorithm:
    """Turns a server payload into a trained update, and evaluates the network the device actually runs.

    The default is plain local LoRA training of the layers the server assigned; algorithms override
    :meth:`build_model`, :meth:`local_training` or :meth:`update` to add their own objective and state.
    """

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    def build_model(self, layers: list[int], config: dict[str, Any]) -> SequenceClassifier:
        """This round's network: the held layers only (missing layers are skipped)."""
        return self.session.build(layers)

    def receive(self, model: SequenceClassifier, arrays: dict[str, np.ndarray]) -> None:
        """Load the payload into the model's adapters."""
        load_adapter_tensors(model, model_family(model.backbone), arrays)

    def local_training(self, model: SequenceClassifier, config: dict[str, Any]) -> TrainResult:
        """The local objective; by default the task loss for ``train.local_steps`` steps."""
        settings = self.session.scenario.train
        steps = int(config.get("local-steps", settings.local_steps))
        optimizer = make_optimizer(model, settings.lr, settings.head_lr, settings.weight_decay)
        return train_steps(
            model,
            self.session.examples("train"),
            steps=steps,
            batch_size=self.session.batch_size,
            optimizer=optimizer,
            device=self.session.device,
            seed=int(config.get("server-round", 0)),
            label=f"{self.session.profile.id} train",
        )

    def update(self, model: SequenceClassifier, config: dict[str, Any]) -> dict[str, Any]:
        """The tensors sent back: every adapter tensor of the held layers plus the head."""
        return adapter_tensors(model, model_family(model.backbone))

    def train(self, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """One training message: build, load, train, extract."""
        model = self.build_model(list(config["layers"]), config)
        self.receive(model, arrays)
        result = self.local_training(model, config)
        update = self.update(model, config)
        metrics = {
            "num-examples": float(result.examples),
            "train-loss": result.loss_mean,
            "train-loss-first": result.loss_first,
            "train-loss-last": result.loss_last,
            "train-seconds": result.seconds,
            "peak-memory-mb": peak_memory_mb(self.session.device),
            "model-parameters": float(sum(p.numel() for p in model.parameters())),
        }
        return update, metrics

    def evaluate(self, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, float]:
        """Accuracy of the network this device runs, on its own test split."""
        model = self.build_model(list(config["layers"]), config)
        self.receive(model, arrays)
        examples = self.session.examples("test")
        accuracy, loss = evaluate(model, examples, self.session.scenario.train.eval_batch_size, self.session.device)
        return {"accuracy": accuracy, "loss": loss, "num-examples": float(len(examples))}
