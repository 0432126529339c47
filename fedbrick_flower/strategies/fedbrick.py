"""FedBRICK server half: FedRA layer-wise LoRA averaging plus per-group BRICK sets, distilled on the server.

Each client trains a random subset of the layers (FedRA allocation) and runs a BRICK, a tiny per-token
surrogate, in place of every layer it does not hold. The server keeps one full set of BRICKs (one per global
layer) per model and client group, sends a client its group's full set with the LoRA of its kept layers, warm
starts each BRICK from the mean of the uploaded ones and then distils every BRICK onto its layer of the
full-depth global model on the server's public proxy split (layer-wise, teacher-forced).

Reference: "FedBRICK: Federated Bias Recovery via Inserted Calibrative Kernels", AAAI-26 (as implemented:
``docs/algorithms/fedbrick.md#server-per-round``): allocation, aggregation and distillation (the paper's eq. 1 and
eq. 20).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from ..adapters.brick import (
    Brick,
    brick_num_parameters,
    brick_schema,
    brick_tensor_name,
    brick_tensors,
    is_brick,
    load_brick_tensors,
    seeded_brick,
)
from ..assembly import build_global_model, task_examples
from ..client_info import ClientInfo
from ..data import EncodedExamples
from ..models import layer_stack, model_family, resolve_device, stable_seed
from ..scenario import Scenario
from .distillation import distill_brick
from .fedavg import LayerwiseFedAvg
from .replies import ClientUpdate

logger = logging.getLogger(__name__)
DISTILL_PHASE = "distill"  # a metric phase, declared with its row keys in the registry entry

LayerCache = dict[int, tuple[torch.Tensor, torch.Tensor]]


class FedBRICK(LayerwiseFedAvg):
    """FedBRICK: FedRA allocation and layer-wise LoRA FedAvg, plus server-distilled per-group BRICK sets.

    Server state: the LoRA and heads of :class:`LayerwiseFedAvg` in ``state``, and the BRICKs in ``bricks``
    under ``"{model}/{group}/bricks.{g}.{A1|B1|A2|B2}"`` (kept apart so that the global adapters, which the
    server evaluates, hold LoRA and heads only).

    Parameters
    ----------
    scenario : Scenario, optional
        The run's scenario: models and proxy splits for the server-side distillation. Required when
        ``distill`` is true.
    resample_layers : bool (default: True)
        FedRA allocation: each client's kept layers are redrawn every round within its depth budget (a profile
        with an explicit layer list keeps it).
    upload_bricks : bool (default: True)
        Clients upload all their BRICKs (Stage-I ones for missing layers, Stage-II ones for kept layers) and the
        server warm-starts each BRICK from their per-group mean. The paper leaves this open
        (``docs/algorithms/fedbrick.md#where-the-paper-is-silent``).
    distill : bool (default: True)
        Distil every BRICK of every group on the proxy split after aggregation. False gives the "FedRA +
        BRICKs, no distillation" ablation.
    distill_epochs, distill_lr, distill_batch_size : int, float, int (default: 10, 1e-4, 128)
        Adam budget of the server distillation per BRICK and round (paper defaults,
        ``docs/algorithms/fedbrick.md#options-algorithm_params``).
    distill_device : str (default: "auto")
        Where the server runs the teacher and the distillation.
    brick_rank : int (default: 8)
        Rank r of every BRICK (4 r d parameters each).
    lambda_w, lambda_theta, lambda_d : float (default: 0.01, 0.005, 0.01)
        Client objective weights: LoRA proximal term (Stage I), missing-BRICK proximal term (Stage I) and the
        Stage-II distillation term. Sent to the clients with every training message.
    stage_two_fraction, stage_two_min_steps : float, int (default: 0.2, 10)
        Stage-II length E2 = max(min, round(fraction * local steps))
        (``docs/algorithms/fedbrick.md#where-the-paper-is-silent``).
    **kwargs
        See :class:`HeterogeneousStrategy`.
    """

    def __init__(
        self,
        *,
        scenario: Scenario | None = None,
        resample_layers: bool = True,
        upload_bricks: bool = True,
        distill: bool = True,
        distill_epochs: int = 10,
        distill_lr: float = 1e-4,
        distill_batch_size: int = 128,
        distill_device: str = "auto",
        brick_rank: int = 8,
        lambda_w: float = 0.01,
        lambda_theta: float = 0.005,
        lambda_d: float = 0.01,
        stage_two_fraction: float = 0.2,
        stage_two_min_steps: int = 10,
        **kwargs: Any,
    ) -> None:
        if upload_bricks and kwargs.get("secure_aggregation") is not None:
            # The server learns only the weighted sum of LoRA and heads; BRICKs are averaged unweighted, outside it.
            raise ValueError(
                "algorithm_params.upload_bricks: must be false under privacy.secure_aggregation (BRICKs are averaged "
                "unweighted, outside the masked weighted sum of LoRA and heads)"
            )
        super().__init__(resample_layers=resample_layers, **kwargs)
        if distill and scenario is None:
            raise ValueError("FedBRICK: distill=True needs the scenario (build it with FedBRICK.from_scenario)")
        self.scenario = scenario
        self.upload_bricks = upload_bricks
        self.distill = distill
        self.distill_epochs = distill_epochs
        self.distill_lr = distill_lr
        self.distill_batch_size = distill_batch_size
        self.distill_device = distill_device
        self.brick_rank = brick_rank
        self.client_objective = {
            "lambda-w": lambda_w,
            "lambda-theta": lambda_theta,
            "lambda-d": lambda_d,
            "stage-two-fraction": stage_two_fraction,
            "stage-two-min-steps": stage_two_min_steps,
        }
        self.bricks: dict[str, np.ndarray] = {}
        self.storage: dict[str, dict[str, float]] = {}

    @classmethod
    def from_scenario(cls, scenario: Scenario, **kwargs: Any) -> FedBRICK:
        return cls(scenario=scenario, **kwargs)

    # ------------------------------------------------------------------ algorithm verbs
    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        """Kept-layer LoRA and head (as in FedRA) plus the client's group's FULL BRICK set (all L layers)."""
        arrays, instructions = super().payload(client, server_round, phase)
        self._ensure_bricks(client)
        names = brick_schema(range(client.num_layers), client_width(client), self.brick_rank)
        arrays.update({name: self.bricks[brick_key(client, name)] for name in names})
        instructions.update(
            self.client_objective, **{"brick-rank": self.brick_rank, "upload-bricks": self.upload_bricks}
        )
        return arrays, instructions

    def expected_update(self, client: ClientInfo, server_round: int) -> dict[str, tuple[int, ...]]:
        expected = super().expected_update(client, server_round)
        if self.upload_bricks:
            expected.update(brick_schema(range(client.num_layers), client_width(client), self.brick_rank))
        return expected

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> None:
        """Layer-wise LoRA FedAvg over holders, BRICK warm start per group, then server distillation."""
        lora_updates = [
            dataclasses.replace(u, arrays={n: v for n, v in u.arrays.items() if not is_brick(n)}) for u in updates
        ]
        super().aggregate(server_round, lora_updates)
        if self.upload_bricks:
            # docs/algorithms/fedbrick.md, server step 4: a plain per-group, per-layer mean of the uploaded BRICKs.
            contributions = [
                (u.client.client_id, {brick_key(u.client, n): v for n, v in u.arrays.items() if is_brick(n)}, 1.0)
                for u in updates
            ]
            self.bricks.update(self.combine_layerwise(contributions))
        self._after_aggregation(server_round, updates)

    def aggregate_means(self, server_round: int, means: dict[str, np.ndarray], updates: list[ClientUpdate]) -> None:
        """LoRA and heads from the secure means (no BRICK travels: ``upload_bricks`` is false), then distillation."""
        super().aggregate_means(server_round, means, updates)
        self._after_aggregation(server_round, updates)

    def _after_aggregation(self, server_round: int, updates: list[ClientUpdate]) -> None:
        """The clients' BRICK storage overhead, then the server distillation of every BRICK."""
        for update in updates:
            self._record_storage(update)
        if self.distill:
            self._distill_all(server_round)

    def algorithm_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super().algorithm_state()
        return {**arrays, **self.bricks}, {**meta, "storage": self.storage}

    def load_algorithm_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.bricks = {key: value for key, value in arrays.items() if "/bricks." in key}
        super().load_algorithm_state({k: v for k, v in arrays.items() if k not in self.bricks}, meta)
        self.storage = dict(meta.get("storage", {}))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "upload_bricks": self.upload_bricks,
            "distill": self.distill,
            "distill (epochs, lr, batch)": (self.distill_epochs, self.distill_lr, self.distill_batch_size),
            "brick_rank": self.brick_rank,
            **self.client_objective,
        }

    def summary_fields(self) -> dict[str, Any]:
        """Per-client BRICK storage overhead and its maximum.

        Overhead = parameters of the BRICKs a client RUNS (one per layer it does not hold this round, the
        paper's "extra storage" on the device) / parameters of the client's network without them (kept layers,
        embeddings, LoRA and head). The full set of L BRICKs that travels with a message is not counted: it is
        communication, not on-device model storage.
        """
        overheads = {cid: values["overhead"] for cid, values in sorted(self.storage.items())}
        return {
            "brick_storage_overhead": overheads,
            "brick_storage_overhead_max": max(overheads.values(), default=None),
        }

    # ------------------------------------------------------------------ BRICK state
    def _ensure_bricks(self, client: ClientInfo) -> None:
        """Give the client's group a seeded, near-identity BRICK for every layer that has none yet."""
        d = client_width(client)
        for g in range(client.num_layers):
            if brick_key(client, brick_tensor_name(g, "A1")) in self.bricks:
                continue
            brick = seeded_brick(d, self.brick_rank, stable_seed(self.seed, client.model, client.group, "brick", g))
            for name, tensor in brick_tensors({g: brick}).items():
                self.bricks[brick_key(client, name)] = tensor.detach().numpy().copy()

    def _record_storage(self, update: ClientUpdate) -> None:
        client = update.client
        missing = client.num_layers - len(self.round_layers[client.client_id])
        brick_parameters = missing * brick_num_parameters(client_width(client), self.brick_rank)
        # The client's "model-parameters" count its network as it runs: BRICK shims included.
        base = update.metrics.get("model-parameters", 0.0) - brick_parameters
        self.storage[client.client_id] = {
            "brick_parameters": float(brick_parameters),
            "overhead": brick_parameters / base if base > 0 else float("nan"),
        }

    # ------------------------------------------------------------------ server-side distillation
    def _distill_all(self, server_round: int) -> None:
        """Server step 5 (docs/algorithms/fedbrick.md): distil every BRICK of every (model, group) on its proxy data
        against the teacher."""
        caches: dict[tuple[str, str], tuple[LayerCache, torch.Tensor]] = {}
        for info in self.clients.values():  # a group none of whose clients was sampled yet has no BRICKs
            self._ensure_bricks(info)
        for (model_key, group), tasks in sorted(self._groups().items()):
            parts = []
            for task in tasks:
                if (model_key, task) not in caches:
                    caches[(model_key, task)] = self._teacher_activations(model_key, task)
                parts.append(caches[(model_key, task)])
            layer_cache, mask = _concatenate(parts)
            self._distill_group(server_round, model_key, group, layer_cache, mask)

    def _groups(self) -> dict[tuple[str, str], list[str]]:
        """The tasks whose proxy split serves each (model, group): the tasks of the group's clients."""
        groups: dict[tuple[str, str], set[str]] = defaultdict(set)
        for info in self.clients.values():
            groups[(info.model, info.group)].add(info.task)
        return {key: sorted(tasks) for key, tasks in groups.items()}

    def _teacher_activations(self, model_key: str, task: str) -> tuple[LayerCache, torch.Tensor]:
        """Run the task's proxy split through the full-depth global model; cache every layer's input/output."""
        assert self.scenario is not None
        device = resolve_device(self.distill_device)
        teacher = build_global_model(self.scenario, model_key, task, self.layer_adapters(model_key), device)
        spec = self.scenario.models[model_key]
        examples = task_examples(self.scenario, task, "proxy", None, spec.tokenizer_source)
        return layer_activations(teacher, examples, self.scenario.train.eval_batch_size), examples.attention_mask

    def _distill_group(
        self, server_round: int, model_key: str, group: str, cache: LayerCache, mask: torch.Tensor
    ) -> None:
        device = resolve_device(self.distill_device)
        for g, (inputs, outputs) in sorted(cache.items()):
            prefix = f"{model_key}/{group}/"
            values = {name: self.bricks[prefix + name] for name in brick_schema([g], inputs.shape[-1], self.brick_rank)}
            brick = Brick(inputs.shape[-1], self.brick_rank)
            load_brick_tensors({g: brick}, values)
            result = distill_brick(
                brick.to(device),
                inputs,
                outputs,
                mask,
                epochs=self.distill_epochs,
                lr=self.distill_lr,
                batch_size=self.distill_batch_size,
                seed=stable_seed(self.seed, server_round, model_key, group, g),
            )
            for name, tensor in brick_tensors({g: brick}).items():
                self.bricks[prefix + name] = tensor.detach().float().cpu().numpy().copy()
            self._log_rows.append(
                {
                    "round": server_round,
                    "phase": DISTILL_PHASE,
                    "model": model_key,
                    "group": group,
                    "layer": g,
                    "mse_before": result.mse_before,
                    "mse_after": result.mse_after,
                    "steps": result.steps,
                }
            )
            logger.info(
                "round %d: BRICK %s/%s/%d distilled, MSE %.5f -> %.5f",
                server_round,
                model_key,
                group,
                g,
                result.mse_before,
                result.mse_after,
            )


def brick_key(client: ClientInfo, name: str) -> str:
    """Server-state key of a canonical BRICK name: BRICK sets are per model and client group."""
    return f"{client.model}/{client.group}/{name}"


def client_width(client: ClientInfo) -> int:
    """The model width d, as the client reported it (a generative network has no head whose shape would say)."""
    return int(client.hidden_size)


@torch.no_grad()
def layer_activations(model: torch.nn.Module, examples: EncodedExamples, batch_size: int) -> LayerCache:
    """Every layer's input and output hidden states on ``examples``, via forward hooks (on CPU, fp32).

    Parameters
    ----------
    model : nn.Module
        A full-depth network (the teacher): a classifier or a causal LM, read through its ``backbone``.
    examples : EncodedExamples
        Right-padded examples; the caches keep their full width so that every batch lines up.
    batch_size : int
        Sequences per forward pass.

    Returns
    -------
    dict[int, tuple[torch.Tensor, torch.Tensor]]
        Global layer index -> ``(inputs, outputs)``, each ``(N, T, d)``.
    """
    stack = layer_stack(model.backbone, model_family(model.backbone))
    seen: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {g: ([], []) for g in range(len(stack))}

    def hook(g: int):  # noqa: ANN202 - a forward hook
        def record(module, args, kwargs, output):  # noqa: ANN001, ANN202
            hidden = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            seen[g][0].append(hidden.detach().float().cpu())
            seen[g][1].append(out.detach().float().cpu())

        return record

    handles = [layer.register_forward_hook(hook(g), with_kwargs=True) for g, layer in enumerate(stack)]
    device = next(model.parameters()).device
    try:
        model.eval()
        for start in range(0, len(examples), batch_size):
            # The backbone alone: the hooks sit on its layers, and an LM head's logits would cost (N, T, vocab).
            model.backbone(
                input_ids=examples.input_ids[start : start + batch_size].to(device),
                attention_mask=examples.attention_mask[start : start + batch_size].to(device),
            )
    finally:
        for handle in handles:
            handle.remove()
    return {g: (torch.cat(inputs), torch.cat(outputs)) for g, (inputs, outputs) in seen.items()}


def _concatenate(parts: list[tuple[LayerCache, torch.Tensor]]) -> tuple[LayerCache, torch.Tensor]:
    """Stack the caches of several tasks (one group), right-padding them to a common width."""
    if len(parts) == 1:
        return parts[0]
    width = max(mask.shape[1] for _, mask in parts)

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(
            tensor, (0, 0, 0, width - tensor.shape[1]) if tensor.ndim == 3 else (0, width - tensor.shape[1])
        )

    layers = parts[0][0].keys()
    cache = {
        g: (torch.cat([pad(c[g][0]) for c, _ in parts]), torch.cat([pad(c[g][1]) for c, _ in parts])) for g in layers
    }
    return cache, torch.cat([pad(mask) for _, mask in parts])
