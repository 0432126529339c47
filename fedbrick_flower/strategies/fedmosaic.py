"""FedMosaic: relevance-guided aggregation (RELA) of Co-LoRA's width-independent P and Q across models.

Seo, Kim, Lee, Choi, Tuytelaars, "Co-LoRA: Collaborative Model Personalization on Heterogeneous Multi-Modal
Clients" (FedMosaic), ICLR-26, https://arxiv.org/abs/2506.11024 (as implemented: ``docs/algorithms/fedmosaic.md``).

Each client uploads its LOCAL adapter (Co-LoRA P, Q per block and role; ordinary LoRA A, B of the other layers)
and a sanitised probe gradient ĝ_i. The server keeps every client's latest upload and builds for each client i a
customised GLOBAL adapter from the OTHER clients' local adapters::

    S_ij = colwise-cos(ĝ_i, ĝ_j)     w_ij = exp(S_ij / τ) / Σ_{l≠i} exp(S_il / τ)   (w_ii = 0)
    P_G,i[b, m] = Σ_j w_ij P_L,j[b, m]      (block b of every model, across families and widths)
    A_G,i[ℓ, m] = Σ_{j ∈ H(i)} w^H_ij A_L,j[ℓ, m]   (ordinary LoRA: same architecture only; B likewise)

Before round 1 the frozen Co-LoRA A and B are aligned across models (``random_shared`` or ``pivot_l2_cca``) and
reach every client once, in its first payload.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..adapters.colora import ColoraKind, ColoraSettings, frozen_schema, parse_block_tensor_name, random_shared_frozen
from ..client_info import ClientInfo
from ..models.families import ModelDims
from ..records import array_bytes
from ..registry import algorithm_arguments
from ..scenario import ScenarioError
from .base import HeterogeneousStrategy
from .replies import ClientUpdate
from .similarity import columnwise_cosine, cosine_matrix, group_mask, softmax_weights

if TYPE_CHECKING:
    from ..scenario import Scenario

GRADIENT_NAME = "rela.gradient"
ALIGNMENTS = ("random_shared", "pivot_l2_cca")
SIMILARITIES = ("colwise", "flat")
WEIGHTINGS = ("rela", "uniform")
PROBE_LOSSES = ("answer", "text")
# Metric phases (declared with their row keys in the registry entry, which report and compare read).
RELEVANCE_PHASE = "fedmosaic-relevance"
BYTES_PHASE = "fedmosaic-bytes"
ALIGNMENT_PHASE = "alignment"


def scenario_problems(scenario: Scenario) -> list[str]:
    """FedMosaic's own scenario check (its registry entry's ``scenario_checks``), refused at load: its parameters,
    then what its alignment needs (equal widths for ``random_shared``, a proxy split for ``pivot_l2_cca``).

    Reads the models' configs (never their weights) for ``random_shared``.
    """
    arguments = algorithm_arguments(scenario.algorithm, scenario.algorithm_params)
    problems = parameter_problems(**arguments)
    if problems:
        return problems
    problems = [*_depth_problems(scenario), *_probe_problems(scenario, str(arguments["probe"]))]
    if problems:
        return problems
    models = sorted({c.model for c in scenario.clients})
    if arguments["align"] == "random_shared":
        widths = {key: _role_widths(scenario, key) for key in models}
        if len({tuple(sorted(w.items())) for w in widths.values()}) > 1:
            return [f"algorithm_params.align: 'random_shared' needs equal widths, got {widths}; use 'pivot_l2_cca'"]
    elif scenario.data.proxy_fraction <= 0 and len(models) > 1:
        return [
            "data.proxy_fraction: align='pivot_l2_cca' needs a public proxy split (> 0) to align the "
            f"federation's {len(models)} models"
        ]
    return []


FULL_DEPTH = "FedMosaic needs full-depth clients (Co-LoRA's block ends are fixed by the whole depth)"


def _depth_problems(scenario: Scenario) -> list[str]:
    """The scenario's clients that hold fewer than all their model's layers (refused at load, not at registration)."""
    from ..assembly import cached_config
    from ..models import model_dims

    problems = []
    for client in scenario.clients:
        if client.layers is None:
            continue
        depth = model_dims(cached_config(scenario.models[client.model])).num_layers
        held = client.layers if isinstance(client.layers, int) else len(client.layers)
        if held != depth:
            problems.append(f"clients.{client.id}.layers: {FULL_DEPTH}; it holds {held} of {client.model}'s {depth}")
    return problems


def _probe_problems(scenario: Scenario, probe: str) -> list[str]:
    """What is wrong with the probe, read from its config (never its weights): every client would fail on it."""
    from ..assembly import cached_config
    from ..models.probe import probe_problems, probe_spec

    return probe_problems(cached_config(probe_spec(scenario.models, probe)))


def parameter_problems(
    *,
    align: str,
    similarity: str,
    weighting: str,
    probe_loss: str,
    temperature: float,
    ema_alpha: float,
    gradient_every: int,
    align_holdout: float,
    **_: Any,
) -> list[str]:
    """What FedMosaic refuses among its parameters, one problem per field (the others, ``**_``, are checked by
    :class:`~fedbrick_flower.adapters.colora.ColoraSettings` or take any value)."""
    problems = [
        f"algorithm_params.{field}: {value!r} is not one of {list(choices)}"
        for field, value, choices in (
            ("align", align, ALIGNMENTS),
            ("similarity", similarity, SIMILARITIES),
            ("weighting", weighting, WEIGHTINGS),
            ("probe_loss", probe_loss, PROBE_LOSSES),
        )
        if value not in choices
    ]
    if temperature <= 0:
        problems.append(f"algorithm_params.temperature: must be > 0, got {temperature}")
    if not 0.0 < ema_alpha <= 1.0:
        problems.append(f"algorithm_params.ema_alpha: must be in (0, 1], got {ema_alpha}")
    if gradient_every < 1:
        problems.append(f"algorithm_params.gradient_every: must be >= 1, got {gradient_every}")
    if not 0.0 < align_holdout < 1.0:
        problems.append(f"algorithm_params.align_holdout: must be in (0, 1), got {align_holdout}")
    return problems


class FedMosaic(HeterogeneousStrategy):
    """FedMosaic: RELA-weighted, per-client global Co-LoRA P/Q across models; dual LoRA within a model.

    https://arxiv.org/abs/2506.11024

    Parameters
    ----------
    n_blocks : int (default: 4)
        Depth blocks N_B; Co-LoRA sits on the last layer of each (block b of every model is matched).
    block_rule : str (default: "relative-depth")
        ``relative-depth``: block b ends at the layer nearest relative depth b / N_B in every model, so matched
        blocks sit at equal relative depth (the paper's principle); ``fedmosaic``: the code's
        ``get_target_layers`` (the ``floor-step`` rule of ``models.depth.block_end_layers``); or ``balanced``.
    gate : str (default: "input")
        ``input``: the code's input-conditioned gate; ``scalar``: σ(b) per module.
    share_homogeneous_lora : bool (default: True)
        Mix the ordinary LoRA of non-target layers among clients of the same model (code); False sends P, Q only.
    share_across_models : bool (default: True)
        Mix P, Q across all models (FedMosaic); False restricts them to the same model (ablation).
    weighting : str (default: "rela")
        ``rela``: softmax of the similarities; ``uniform``: equal weights on the others (RELA off, ablation).
    similarity : str (default: "colwise")
        ``colwise``: the code's column-wise cosine of ĝ; ``flat``: the cosine of the flattened ĝ.
    temperature : float (default: 0.5)
        Softmax temperature τ.
    probe : str (default: "smollm2-135m")
        The frozen probe model: a key of the scenario's ``models`` or a packaged/hub source (tied LM head).
    probe_loss : str (default: "answer")
        ``answer``: the probe's loss on the verbalised label appended to the text (the paper's answer tokens);
        ``text``: the next-token loss over the text alone (blind to labels: clients of one text source look alike).
    gradient_fraction, gradient_noise : float (default: 0.4, 1e-4)
        Share ρ of the probe's rows kept (a server-seeded subset, fixed for the run) and Gaussian noise σ.
    gradient_every : int (default: 10)
        One probe-gradient sample per this many local steps (at least one per round), averaged per round.
    ema_alpha : float (default: 0.5)
        α of the client's EMA of its round gradients.
    pq_lr : float (default: 5e-4)
        Learning rate of P and Q (LoRA A, B and gates use ``train.lr``).
    align : str (default: "pivot_l2_cca")
        ``random_shared`` (equal widths only) or ``pivot_l2_cca`` (the paper's, on the public proxy split).
    align_steps, align_lr, align_ridge : (default: 200, 1e-2, 1e-4)
        Adam steps and lr of the A alignment; ridge γ of the CCA map for B.
    align_holdout : float (default: 0.25)
        Share of the proxy examples held out to measure the alignment error before and after.
    scenario : Scenario, optional
        Needed for ``pivot_l2_cca`` (models, proxy data) and the probe; :meth:`from_scenario` passes it.
    **kwargs
        See :class:`HeterogeneousStrategy`.
    """

    def __init__(
        self,
        *,
        n_blocks: int = 4,
        block_rule: str = "relative-depth",
        gate: str = "input",
        share_homogeneous_lora: bool = True,
        share_across_models: bool = True,
        weighting: str = "rela",
        similarity: str = "colwise",
        temperature: float = 0.5,
        probe: str = "smollm2-135m",
        probe_loss: str = "answer",
        gradient_fraction: float = 0.4,
        gradient_noise: float = 1e-4,
        gradient_every: int = 10,
        ema_alpha: float = 0.5,
        pq_lr: float = 5e-4,
        align: str = "pivot_l2_cca",
        align_steps: int = 200,
        align_lr: float = 1e-2,
        align_ridge: float = 1e-4,
        align_holdout: float = 0.25,
        scenario: Scenario | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        problems = parameter_problems(
            align=align,
            similarity=similarity,
            weighting=weighting,
            probe_loss=probe_loss,
            temperature=temperature,
            ema_alpha=ema_alpha,
            gradient_every=gradient_every,
            align_holdout=align_holdout,
        )
        if problems:  # a strategy built in code; a scenario's are refused at load by scenario_problems
            raise ScenarioError(problems)
        self.scenario = scenario
        self.block_options = {"n_blocks": n_blocks, "block_rule": block_rule, "gate": gate}
        ColoraSettings(**self.block_options)  # refuse bad values now, naming the field
        self.share_homogeneous_lora = share_homogeneous_lora
        self.share_across_models = share_across_models
        self.weighting, self.similarity, self.temperature = weighting, similarity, temperature
        self.probe = probe
        self.rela = {
            "fraction": gradient_fraction,
            "sigma": gradient_noise,
            "every": gradient_every,
            "alpha": ema_alpha,
            "seed": seed_of(kwargs.get("seed", 0)),
            "loss": probe_loss,
        }
        self.pq_lr = pq_lr
        self.align = align
        self.align_options = {"steps": align_steps, "lr": align_lr, "ridge": align_ridge, "holdout": align_holdout}
        self.probe_dims: tuple[int, int] | None = None  # (d, d_ff) of the probe, read from its config
        self.local: dict[str, dict[str, np.ndarray]] = {}  # every client's latest local adapters
        self.gradients: dict[str, np.ndarray] = {}  # every client's latest ĝ
        self.globals: dict[str, dict[str, np.ndarray]] = {}  # every client's customised global adapters
        self.frozen: dict[str, dict[str, np.ndarray]] = {}  # aligned A, B per model
        self.delivered: set[str] = set()  # clients that have their aligned A, B
        self.alignment_report: dict[str, Any] = {}
        self._bytes: dict[str, int] = {}

    @classmethod
    def from_scenario(cls, scenario: Scenario, **kwargs: Any) -> FedMosaic:
        return cls(scenario=scenario, **kwargs)

    # ------------------------------------------------------------------ settings
    def settings(self, client: ClientInfo) -> ColoraSettings:
        return ColoraSettings(rank=int(client.rank), alpha=float(client.alpha), **self.block_options)

    def refuse(self, info: ClientInfo) -> str | None:
        if info.budget != info.num_layers or (info.fixed_layers and len(info.fixed_layers) != info.num_layers):
            return FULL_DEPTH
        ranks = {c.rank for c in self.clients.values()} | {info.rank}
        if len(ranks) > 1:
            return f"lora.rank: FedMosaic needs one rank across the federation, got {sorted(ranks)}"
        return super().refuse(info)

    def _probe_dims(self) -> tuple[int, int]:
        if self.probe_dims is None:
            from ..assembly import cached_config  # the probe's config only, no weights
            from ..models import model_dims
            from ..models.probe import probe_spec

            if self.scenario is None:
                raise RuntimeError("FedMosaic needs the scenario (or probe_dims) to know the probe's gradient shape")
            dims = model_dims(cached_config(probe_spec(self.scenario.models, self.probe)))
            self.probe_dims = (dims.hidden_size, dims.intermediate_size)
        return self.probe_dims

    def _gradient_shape(self) -> tuple[int, int]:
        width, inner = self._probe_dims()
        return max(1, round(self.rela["fraction"] * width)), inner

    # ------------------------------------------------------------------ verbs
    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        layers = self.layers_for(client, server_round, phase)
        arrays: dict[str, np.ndarray] = {}
        if client.client_id not in self.delivered:
            frozen = self._frozen(client)
            arrays.update(frozen)
            self._count(f"align-down-{phase}", frozen)
        received = self.globals.get(client.client_id, {})
        pq = {n: v for n, v in received.items() if parse_block_tensor_name(n) is not None}
        lora = {n: v for n, v in received.items() if n not in pq}
        arrays.update(pq)
        arrays.update(lora)
        self._count(f"pq-down-{phase}", pq)
        self._count(f"lora-down-{phase}", lora)
        config = {
            "layers": layers,
            "colora": dataclasses.asdict(self.settings(client)),
            "fedmosaic": {
                **self.rela,
                "probe": self.probe,
                "pq-lr": self.pq_lr,
                "share-lora": self.share_homogeneous_lora,
            },
        }
        return arrays, config

    def expected_update(self, client: ClientInfo, server_round: int) -> dict[str, tuple[int, ...]]:
        schema = ColoraKind(self.settings(client)).schema(
            ModelDims.from_mapping(client), self.round_layers[client.client_id], client.roles
        )
        if not self.share_homogeneous_lora:
            schema = {n: s for n, s in schema.items() if parse_block_tensor_name(n) is not None}
        return {**schema, GRADIENT_NAME: self._gradient_shape()}

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> None:
        for update in updates:
            cid = update.client.client_id
            self.gradients[cid] = update.arrays[GRADIENT_NAME]
            self.local[cid] = {n: v for n, v in update.arrays.items() if n != GRADIENT_NAME}
            self.delivered.add(cid)
            pq = {n: v for n, v in self.local[cid].items() if parse_block_tensor_name(n) is not None}
            self._count("pq-up", pq)
            self._count("lora-up", {n: v for n, v in self.local[cid].items() if n not in pq})
            self._count("gradient-up", {GRADIENT_NAME: self.gradients[cid]})
        members = [cid for cid in sorted(self.local) if cid in self.clients]
        similarity = self.similarity_matrix(members)
        models = [self.clients[cid].model for cid in members]
        pq_mask = None if self.share_across_models else group_mask(models)
        pq_weights = softmax_weights(similarity, self.temperature, pq_mask, include_self=False)
        lora_weights = softmax_weights(similarity, self.temperature, group_mask(models), include_self=False)
        for i, cid in enumerate(members):
            mixed = self.globals.setdefault(cid, {})
            for name in self.local[cid]:
                weights = pq_weights if parse_block_tensor_name(name) is not None else lora_weights
                value = _mix(name, weights[i], [self.local[j] for j in members])
                if value is not None:  # nobody else holds it: keep the previous global
                    mixed[name] = value
        self._log_rows.append(
            {
                "round": server_round,
                "phase": RELEVANCE_PHASE,
                "clients": members,
                "models": models,
                "tasks": [self.clients[cid].task for cid in members],
                "similarity": np.round(similarity, 4).tolist(),
                "weights": np.round(pq_weights, 4).tolist(),
                "lora_weights": np.round(lora_weights, 4).tolist(),
            }
        )
        self._log_rows.append({"round": server_round, "phase": BYTES_PHASE, **self._bytes})
        self._bytes = {}

    def similarity_matrix(self, members: list[str]) -> np.ndarray:
        """RELA's S over ``members`` (zeros under ``weighting="uniform"``: the softmax is then uniform)."""
        if self.weighting == "uniform" or not members:
            return np.zeros((len(members), len(members)))
        stacked = np.stack([self.gradients[cid] for cid in members])
        if self.similarity == "flat":
            return cosine_matrix(stacked.reshape(len(members), -1))
        return columnwise_cosine(stacked)

    def personalized_adapters(self, client: ClientInfo) -> dict[str, np.ndarray]:
        """None to save as a peft adapter: a Co-LoRA model (frozen A/B, P/Q, gates, G and L) has no peft form,
        and its gates and head never leave the device. The checkpoint keeps every client's latest local adapters."""
        return {}

    # ------------------------------------------------------------------ alignment
    def _frozen(self, client: ClientInfo) -> dict[str, np.ndarray]:
        if client.model not in self.frozen:
            if self.align == "random_shared":
                self._random_shared(client)
            else:
                self._pivot_alignment()
        return self.frozen[client.model]

    def _random_shared(self, client: ClientInfo) -> None:
        settings = self.settings(client)
        shapes = frozen_schema(settings, ModelDims.from_mapping(client), client.roles)
        others = {m: {n: v.shape for n, v in f.items()} for m, f in self.frozen.items()}
        for model, known in others.items():
            if known != shapes:
                raise ScenarioError(
                    f"algorithm_params.align: 'random_shared' needs equal widths, but {client.model} and {model} "
                    "differ; use 'pivot_l2_cca'"
                )
        self.frozen[client.model] = {n: v.numpy() for n, v in random_shared_frozen(shapes, self.seed).items()}

    def _pivot_alignment(self) -> None:
        from .fedmosaic_alignment import pivot_alignment  # torch and the models load only here

        if self.scenario is None:
            raise RuntimeError("align='pivot_l2_cca' needs the scenario: build FedMosaic with from_scenario(...)")
        started = time.monotonic()
        settings = self.settings(next(iter(self.clients.values())))  # one rank and alpha for the federation
        roles = tuple(self.scenario.lora.roles)  # resolved per family: 'all-linear' differs between families
        self.frozen, report = pivot_alignment(self.scenario, settings, roles, self.seed, self.align_options)
        self.alignment_report = {**report, "seconds": time.monotonic() - started}
        self._log_rows.append({"round": self.start_round, "phase": ALIGNMENT_PHASE, **self.alignment_report})

    # ------------------------------------------------------------------ state and reporting
    def _count(self, part: str, arrays: dict[str, np.ndarray]) -> None:
        self._bytes[part] = self._bytes.get(part, 0) + array_bytes(arrays)

    def algorithm_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        for store, values in (("local", self.local), ("global", self.globals), ("frozen", self.frozen)):
            arrays.update({f"{store}/{key}/{n}": v for key, named in values.items() for n, v in named.items()})
        arrays.update({f"gradient/{cid}/{GRADIENT_NAME}": v for cid, v in self.gradients.items()})
        return arrays, {"delivered": sorted(self.delivered), "alignment": self.alignment_report}

    def load_algorithm_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.local, self.globals, self.frozen, self.gradients = {}, {}, {}, {}
        stores = {"local": self.local, "global": self.globals, "frozen": self.frozen}
        for key, value in arrays.items():
            store, owner, name = key.split("/", 2)
            if store == "gradient":
                self.gradients[owner] = np.asarray(value, dtype=np.float32)
            else:
                stores[store].setdefault(owner, {})[name] = np.asarray(value, dtype=np.float32)
        self.delivered = set(meta.get("delivered", []))
        self.alignment_report = dict(meta.get("alignment", {}))

    def describe(self) -> dict[str, Any]:
        return {
            **self.block_options,
            "align": self.align,
            "weighting": self.weighting if self.weighting == "uniform" else f"rela(T={self.temperature})",
            "similarity": self.similarity,
            "share_homogeneous_lora": self.share_homogeneous_lora,
            "share_across_models": self.share_across_models,
            "probe": self.probe,
            "probe_loss": self.rela["loss"],
        }

    def summary_fields(self) -> dict[str, Any]:
        return {"fedmosaic": {**self.describe(), "alignment": self.alignment_report}}


def seed_of(seed: int) -> int:
    """The server-broadcast seed of the probe's row subset (fixed for the run)."""
    from ..models.backbone import stable_seed

    return stable_seed(seed, "rela-rows")


def _mix(name: str, weights: np.ndarray, stores: list[dict[str, np.ndarray]]) -> np.ndarray | None:
    """``Σ_j w_j x_j[name]`` over the clients that hold ``name``, renormalised; None if none has weight."""
    holders = [j for j, store in enumerate(stores) if name in store and weights[j] > 0]
    total = float(sum(weights[j] for j in holders))
    if total <= 0:
        return None
    return (sum(weights[j] * stores[j][name].astype(np.float64) for j in holders) / total).astype(np.float32)


def _role_widths(scenario: Scenario, model: str) -> dict[str, tuple[int, int]]:
    from ..assembly import cached_config
    from ..models import family_of, model_dims, resolve_roles

    dims = model_dims(cached_config(scenario.models[model]))
    family = family_of(dims.model_type)
    return {role: family.in_out(role, dims) for role in resolve_roles(scenario.lora.roles, family)}
