"""FedMosaic's one-time ``pivot_l2_cca`` alignment of the frozen Co-LoRA A and B, run by the server before round 1.

The math is :mod:`fedbrick_flower.adapters.alignment`; this module feeds it. It runs every model of the
scenario on the server's public proxy split and records, at each block-end layer and role, the input and output
of the adapted projection.

Our choice [D]: the families here have different tokenizers (BERT WordPiece, MPNet, Llama BPE), so token
positions do not correspond across models. The activations are therefore pooled per example: the mean over the
example's real tokens. Alignment then matches sequence-level summaries, one row per proxy text, in every model.
The official code maps vocabularies between Llama and Qwen instead, which has no counterpart across these
families.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..adapters.alignment import align_projection, carry_b, cca_map, projection_error
from ..adapters.colora import ColoraSettings, block_tensor_name, frozen_schema, random_shared_frozen
from ..assembly import cached_backbone, cached_config, task_split
from ..models import family_of, load_tokenizer, model_dims, resolve_roles
from ..scenario import Scenario

Activations = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]  # (block, role) -> (inputs, outputs)


def proxy_texts(scenario: Scenario) -> list[str]:
    """The public proxy texts of every task, in a fixed order (the same rows for every model)."""
    texts: list[str] = []
    for task in sorted(scenario.tasks):
        texts += list(task_split(scenario, task, "proxy", None).texts)
    return texts


@torch.no_grad()
def pooled_activations(
    scenario: Scenario, model: str, settings: ColoraSettings, roles: tuple[str, ...], texts: list[str]
) -> Activations:
    """Mean-pooled input and output of each block-end projection of ``model``, one row per text."""
    spec = scenario.models[model]
    backbone = cached_backbone(spec, scenario.seed)  # read-only: hooks are removed before returning
    dims = model_dims(backbone.config)
    family = family_of(dims.model_type)
    stack = backbone.get_submodule(family.layer_stack)
    tokenizer = load_tokenizer(spec.tokenizer_source)
    mask: dict[str, torch.Tensor] = {}
    rows: dict[tuple[int, str], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def pooled(values: torch.Tensor) -> torch.Tensor:
        weights = mask["m"].unsqueeze(-1).to(values.dtype)
        return ((values * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)).float()

    def record(key: tuple[int, str], module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        rows[key][0].append(pooled(args[0]))
        rows[key][1].append(pooled(out))

    hooks = []
    for block, g in enumerate(settings.targets(dims.num_layers)):
        for role in resolve_roles(roles, family):
            key = (block, role)
            rows[key] = ([], [])
            module = stack[g].get_submodule(family.module_path(role))
            hooks.append(module.register_forward_hook(functools.partial(record, key)))
    try:
        for start in range(0, len(texts), 16):
            batch = tokenizer(
                texts[start : start + 16],
                truncation=True,
                max_length=scenario.data.max_length,
                padding=True,
                return_tensors="pt",
            )
            mask["m"] = batch["attention_mask"]
            backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return {key: (torch.cat(inputs), torch.cat(outputs)) for key, (inputs, outputs) in rows.items()}


def pivot_alignment(
    scenario: Scenario, settings: ColoraSettings, roles: tuple[str, ...], seed: int, options: Mapping[str, Any]
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Aligned A and B of every client model: the pivot keeps its seeded ones, the others are aligned to it.

    Returns
    -------
    tuple
        ``{model: {colora name: array}}`` and a report: the pivot, the proxy sizes, and per model the mean
        relative A-projection error on the held-out proxy texts before and after alignment.
    """
    models = sorted({client.model for client in scenario.clients})
    dims = {model: model_dims(cached_config(scenario.models[model])) for model in models}
    pivot = min(models, key=lambda m: (dims[m].hidden_size, dims[m].num_layers, m))
    frozen = {m: random_shared_frozen(frozen_schema(settings, dims[m], roles), seed) for m in models}
    if len(models) == 1:  # one model: nothing to align to, the pivot keeps its seeded A and B (no proxy needed)
        return {pivot: {n: v.numpy() for n, v in frozen[pivot].items()}}, {"pivot": pivot, "models": {}}
    texts = proxy_texts(scenario)
    if len(texts) < 4:
        raise ValueError(f"data.proxy_fraction: pivot_l2_cca needs at least 4 proxy texts, the split has {len(texts)}")
    order = np.random.default_rng(seed).permutation(len(texts))
    held = max(1, math.ceil(options["holdout"] * len(texts)))
    held_out, fit = torch.as_tensor(order[:held]), torch.as_tensor(order[held:])
    pivot_rows = pooled_activations(scenario, pivot, settings, roles, texts)
    report: dict[str, Any] = {"pivot": pivot, "proxy_examples": len(texts), "held_out": held, "models": {}}
    for model in models:
        if model == pivot:
            continue
        rows = pooled_activations(scenario, model, settings, roles, texts)
        before, after = [], []
        for (block, role), (inputs, outputs) in rows.items():
            if (block, role) not in pivot_rows:  # a role the pivot's family lacks (BERT has no gate): no partner
                continue
            pivot_inputs, pivot_outputs = pivot_rows[(block, role)]
            a_name, b_name = block_tensor_name(block, role, "A"), block_tensor_name(block, role, "B")
            target = pivot_inputs @ frozen[pivot][a_name].T
            scale = float((target[held_out] ** 2).mean()) or 1.0
            start = frozen[model][a_name]
            aligned = align_projection(
                inputs[fit], target[fit], start, steps=int(options["steps"]), lr=float(options["lr"])
            )
            before.append(projection_error(inputs[held_out], start, target[held_out]) / scale)
            after.append(projection_error(inputs[held_out], aligned, target[held_out]) / scale)
            transform = cca_map(pivot_outputs[fit], outputs[fit], ridge=float(options["ridge"]))
            frozen[model][a_name] = aligned
            frozen[model][b_name] = carry_b(frozen[pivot][b_name], transform)
        report["models"][model] = {"error_before": float(np.mean(before)), "error_after": float(np.mean(after))}
    return {m: {n: v.numpy() for n, v in f.items()} for m, f in frozen.items()}, report
