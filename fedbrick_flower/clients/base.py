"""The client half's interface: what every algorithm's client module implements.

A client half is built anew for every message (in deployment each message is a fresh process), so it keeps
nothing on ``self`` between messages: what must last lives in the :class:`ClientState` handle it is given.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from torch import nn

from ..adapters.lora import adapter_tensors, load_adapter_tensors
from ..adapters.naming import drop_lora
from ..models import model_family, stable_seed
from ..records import EVAL_PREFIX, RECEIVED_PREFIX
from ..scoring import scored_round
from .profile import ClientSession
from .state import ClientState
from .trainer import TrainResult, head_only, make_optimizer, process_peak_rss_mb, seed_torch, train_steps


class ClientAlgorithm:
    """Turns a server payload into a trained update, and evaluates the network the device actually runs.

    The default is plain local LoRA training of the layers the server assigned; algorithms override
    :meth:`build_model`, :meth:`receive`, :meth:`local_training` or :meth:`update` to add their own objective,
    and read or write the state handle for what lasts across rounds.

    Parameters
    ----------
    session : ClientSession
        Scenario, profile, placement and data of this client (derived, read-only).
    state : ClientState
        This client's state handle for the current message.
    """

    # The adapter kinds this client half trains; its ``query`` reply declares their schema (``adapters.base``).
    adapter_kinds: tuple[str, ...] = ("lora",)

    def __init__(self, session: ClientSession, state: ClientState) -> None:
        self.session = session
        self.state = state

    def build_model(self, layers: list[int], config: dict[str, Any]) -> nn.Module:
        """This round's network: the held layers only (missing layers are skipped)."""
        return self.session.build(layers)

    def receive(self, model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
        """Load the payload into the model's adapters."""
        load_adapter_tensors(model, model_family(model.backbone), arrays)

    def round_seed(self, config: dict[str, Any], purpose: str) -> int:
        """A seed for this client, round and purpose: clients and seeds draw different batch orders."""
        scenario = self.session.scenario
        return stable_seed(scenario.seed, self.session.profile.id, int(config.get("server-round", 0)), purpose)

    def local_training(self, model: nn.Module, config: dict[str, Any]) -> TrainResult:
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
            seed=self.round_seed(config, "batches"),
            loss_fn=self.session.objective.loss,
            label=f"{self.session.profile.id} train",
        )

    def head_warmup(self, model: nn.Module, config: dict[str, Any]) -> TrainResult | None:
        """LP-FT's linear probe: ``train.head_warmup_steps`` steps of the head alone on this client's training data,
        on the backbone and adapters as received, before :meth:`local_training`.

        A head averaged from shallow networks, or fresh, would otherwise absorb the adapters' first steps. None
        when the warm-up is off or the network has no trainable head (a generative task's LM head is frozen).
        """
        settings = self.session.scenario.train
        if settings.head_warmup_steps <= 0:
            return None
        with head_only(model) as head:
            if not head:
                return None
            return train_steps(
                model,
                self.session.examples("train"),
                steps=settings.head_warmup_steps,
                batch_size=self.session.batch_size,
                optimizer=make_optimizer(model, settings.lr, settings.head_lr, settings.weight_decay),
                device=self.session.device,
                seed=self.round_seed(config, "head-warmup"),
                loss_fn=self.session.objective.loss,
                label=f"{self.session.profile.id} head warm-up",
            )

    def update(self, model: nn.Module, config: dict[str, Any]) -> dict[str, Any]:
        """The tensors sent back: every adapter tensor of the held layers plus the head (classification)."""
        return adapter_tensors(model, model_family(model.backbone))

    def train(self, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """One training message: build, load, score the received network, (warm the head up,) train, extract, score
        the trained one.

        The evaluations of the client's own test split run here, so a round costs one ClientApp start per client
        (in deployment each message is a fresh process). Their metrics travel with the update under ``eval-*``
        names: the trained network's as ``eval-accuracy``, ``eval-loss``..., and the network as received, before
        any local step (the server's model, or the personalized one the server mixed for this client), as
        ``eval-received-accuracy``, ``eval-received-loss``... Scoring the trained network alone would credit every
        method with a local fine-tune. Both are taken in every ``train.evaluate_every``-th round and in the last.
        """
        seed_torch(self.round_seed(config, "torch"))  # dropout and any other torch draw of this round
        model = self.build_model(list(config["layers"]), config)
        self.receive(model, arrays)
        scenario = self.session.scenario
        scored = scored_round(int(config.get("server-round", 0)), scenario.train.evaluate_every, scenario.rounds)
        received = self.score(model) if scored else {}
        warmup = self.head_warmup(model, config)
        result = self.local_training(model, config)
        if warmup is not None:
            result = result.combined_with(warmup)
        update = self.update(model, config)
        if self.session.scenario.train.freeze_lora:  # a linear probe: its LoRA is unchanged, so it stays home
            update = drop_lora(update)
        train = self.session.examples("train")
        metrics = {
            "num-examples": float(len(train)),
            "examples-seen": float(result.examples),
            "train-loss": result.loss_mean,
            "train-loss-first": result.loss_first,
            "train-loss-last": result.loss_last,
            "train-seconds": result.seconds,
            # The round's compute, counted while training: a second stage or an inner optimizer shows.
            "optimizer-steps": float(result.optimizer_steps),
            "forward-passes": float(result.forward_passes),
            "model-parameters": float(sum(p.numel() for p in model.parameters())),
            # Training examples longer than data.max_length: cut (a generative response is cut), or left out.
            "data-truncated": float(train.truncated),
            "data-dropped": float(train.dropped),
        }
        if scored:
            started = time.perf_counter()
            metrics.update({EVAL_PREFIX + key: value for key, value in self.score(model).items()})
            metrics[EVAL_PREFIX + "seconds"] = time.perf_counter() - started  # the evaluate row's own compute time
            metrics.update(
                {EVAL_PREFIX + RECEIVED_PREFIX + key: value for key, value in received.items() if key != "num-examples"}
            )
        metrics["local-rounds"] = float(self.count_local_round())
        metrics["peak-memory-mb"] = result.peak_bytes / 2**20  # this client's training alone
        metrics["process-peak-rss-mb"] = process_peak_rss_mb()  # the whole process (mixes clients in a Ray worker)
        return update, metrics

    def count_local_round(self) -> int:
        """A running statistic of the device: how many rounds it has trained in this run (from its state)."""
        rounds = int(self.state.get("local-rounds", 0)) + 1
        self.state.set("local-rounds", rounds)
        return rounds

    def evaluate(self, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, float]:
        """An evaluation-only message: the network this device runs, with the payload loaded."""
        model = self.build_model(list(config["layers"]), config)
        self.receive(model, arrays)
        return self.score(model)

    def score(self, model: nn.Module) -> dict[str, float]:
        """The task objective's metrics on this client's own test split: accuracy and loss; for a generative task
        also perplexity, token accuracy and, where answers are short, exact match
        (:func:`~fedbrick_flower.scoring.evaluate_generative`). With ``data.validation_fraction`` > 0 the same
        metrics on its validation split follow under ``validation-*`` names."""
        scores = self._score_on(model, "test")
        if self.session.scenario.data.validation_fraction > 0:  # the protocol's on-device validation loss
            validation = self._score_on(model, "validation")
            scores.update({f"validation-{name}": value for name, value in validation.items()})
        return scores

    def _score_on(self, model: nn.Module, part: str) -> dict[str, float]:
        examples = self.session.examples(part)
        scores = self.session.objective.score(
            model, examples, self.session.scenario.train.eval_batch_size, self.session.device
        )
        return {**scores, "num-examples": float(len(examples))}
