"""H2Tune: one shared bank of middle matrices for clients that differ in family, width, depth, rank and task.

Guo et al., "H2Tune: Federated Foundation Model Fine-Tuning with Hybrid Heterogeneity", arXiv 2507.22633,
https://arxiv.org/abs/2507.22633 (as implemented: ``docs/algorithms/h2tune.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..adapters.naming import BANK_PREFIX, bank_tensor_name
from ..adapters.triple import SELECTIONS, bank_roles
from ..client_info import ClientInfo
from ..models.backbone import stable_seed
from ..models.families import ROLES
from ..records import array_bytes
from ..registry import algorithm_arguments
from ..scenario import ScenarioError
from .base import HeterogeneousStrategy
from .replies import ClientUpdate
from .similarity import blockwise_cosine, group_mask

BANK_PHASE = "h2tune"  # a metric phase, declared with its row keys in the registry entry

if TYPE_CHECKING:
    from ..scenario import Scenario

BANK_MASS_NAME = "bank-mass"  # a client's relation mass per slot; sent only under relation-mass weighting
ALTERNATIONS: tuple[str, ...] = ("sequential", "joint_step", "off")
WEIGHTINGS: tuple[str, ...] = ("uniform", "examples")
BANK_INITS: tuple[str, ...] = ("kaiming", "zeros")
# The shared-parameter penalty: mean of squared L2 norms (weight decay's form: its pull fades as a tensor shrinks,
# so the task gradient decides where the middles go), or the public code's mean of un-squared norms (a pull of
# constant size towards zero, the same on every device).
NORM_FORMS: tuple[str, ...] = ("squared", "norm")


def scenario_problems(scenario: Scenario) -> list[str]:
    """H2Tune's own scenario check (its registry entry's ``scenario_checks``): its parameters, refused at load."""
    return parameter_problems(**algorithm_arguments(scenario.algorithm, scenario.algorithm_params))


def parameter_problems(
    *,
    resample_layers: bool,
    alternation: str,
    selection: str,
    weighting: str,
    bank_init: str,
    norm_form: str,
    norm_weight: float,
    kl_weight: float,
    distill_weight: float,
    max_rank: int | None,
    slots: int | None,
    **_: Any,
) -> list[str]:
    """What H2Tune refuses among its parameters, one problem per field (the others, ``**_``, take any value)."""
    problems = []
    if resample_layers:
        problems.append("resample_layers: H2Tune keeps each device's relation matrix per held layer; keep them fixed")
    for name, value, allowed in (
        ("alternation", alternation, ALTERNATIONS),
        ("selection", selection, SELECTIONS),
        ("weighting", weighting, WEIGHTINGS),
        ("bank_init", bank_init, BANK_INITS),
        ("norm_form", norm_form, NORM_FORMS),
    ):
        if value not in allowed:
            problems.append(f"{name}: must be one of {list(allowed)}, got {value!r}")
    for name, value in (("norm_weight", norm_weight), ("kl_weight", kl_weight), ("distill_weight", distill_weight)):
        if value < 0:
            problems.append(f"{name}: must be >= 0, got {value}")
    for name, value in (("max_rank", max_rank), ("slots", slots)):
        if value is not None and value < 1:
            problems.append(f"{name}: must be a positive integer, got {value}")
    return problems


class H2Tune(HeterogeneousStrategy):
    """The server half of H2Tune: seed the bank G once, broadcast it, average the clients' projections of it.

    G holds, per module role, ``L_max`` slots of ``R x R`` middle matrices (R: the federation's largest rank,
    L_max: its largest number of held layers). Every client gets the same G and returns its projection Ĝ_k
    through its own relation matrix (``adapters/triple.py``); A, B, Π, the selection scores and the task head
    never leave the device. ``G <- mean_k Ĝ_k`` over the clients that adapt each role, uniform by default.

    Parameters
    ----------
    alternation : str (default: "sequential")
        ``sequential``: from a client's second round, phase (a) and phase (b) each take an optimizer step on
        every batch. ``joint_step``: both phases' gradients, one step (the public code). ``off``: no
        alternation, every round trains everything jointly like the first (an ablation).
    selection : str (default: "fixed")
        How a client picks its r_k^2 active entries: ``fixed`` (seeded, nested across ranks), ``block``
        (leading r_k x r_k block) or ``straight-through`` (trained scores).
    learn_relation : bool (default: True)
        Train Π; False keeps it at its relative-depth initialisation (an ablation).
    norm_form : str (default: "squared")
        The penalty on the active middles, the scores and Π: ``squared``, the mean of their squared L2 norms, or
        ``norm``, the mean of their un-squared norms (the public code, at weight 1).
    norm_weight : float (default: 0.0001)
        Weight of that penalty. At the code's 1.0 with the un-squared form the penalty, not the data, drives the
        bank: same-family uploads agree to a cosine of 1.00 (``docs/algorithms/h2tune.md#departures``).
    kl_weight : float (default: 1.0)
        Weight of phase (a)'s KL from the client's previous active middles.
    distill_weight : float (default: 1.0)
        Weight of phase (b)'s KL from phase (a)'s logits.
    weighting : str (default: "uniform")
        ``uniform`` (the code) or ``examples`` (n_k) weights of the clients in G's mean.
    relation_mass : bool (default: False)
        Also weight each client per slot by its relation mass ``min(1, sum_l |Π[g, l]|)``; clients then send
        that vector (L_max floats) beside their bank.
    bank_init : str (default: "kaiming")
        G's seeded initialisation: ``kaiming`` (uniform, bound 1 / sqrt(R)) or ``zeros`` (T = 0: plain LoRA).
    max_rank, slots : int, optional
        R and L_max; by default the largest rank and held depth among the clients registered at the first
        round. A client that does not fit a bank already seeded is refused at registration.
    **kwargs
        See :class:`HeterogeneousStrategy`.
    """

    def __init__(
        self,
        *,
        alternation: str = "sequential",
        selection: str = "fixed",
        learn_relation: bool = True,
        norm_form: str = "squared",
        norm_weight: float = 1e-4,
        kl_weight: float = 1.0,
        distill_weight: float = 1.0,
        weighting: str = "uniform",
        relation_mass: bool = False,
        bank_init: str = "kaiming",
        max_rank: int | None = None,
        slots: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        problems = parameter_problems(
            resample_layers=self.resample_layers,
            alternation=alternation,
            selection=selection,
            weighting=weighting,
            bank_init=bank_init,
            norm_form=norm_form,
            norm_weight=norm_weight,
            kl_weight=kl_weight,
            distill_weight=distill_weight,
            max_rank=max_rank,
            slots=slots,
        )
        if problems:  # a strategy built in code; a scenario's are refused at load by scenario_problems
            raise ScenarioError(problems)
        self.alternation = alternation
        self.selection = selection
        self.learn_relation = learn_relation
        self.norm_form = norm_form
        self.norm_weight = float(norm_weight)
        self.kl_weight = float(kl_weight)
        self.distill_weight = float(distill_weight)
        self.weighting = weighting
        self.relation_mass = relation_mass
        self.bank_init = bank_init
        self.max_rank = max_rank
        self.slots = slots
        self.bank: dict[str, np.ndarray] = {}  # role -> (L_max, R, R); empty until the first payload seeds it

    # ------------------------------------------------------------------ the bank
    def seed_bank(self) -> None:
        """Fix R, L_max and the roles from the registered clients and draw G once, from the run's seed."""
        clients = list(self.clients.values())
        self.max_rank = self.max_rank or max(int(c.rank) for c in clients)
        self.slots = self.slots or max(held_depth(c) for c in clients)
        used = {role for c in clients for role in bank_roles(c.model_type, c.roles)}
        bound = 1.0 / np.sqrt(self.max_rank)
        shape = (self.slots, self.max_rank, self.max_rank)
        for role in (r for r in ROLES if r in used):
            rng = np.random.default_rng(stable_seed(self.seed, "h2tune-bank", role))
            drawn = rng.uniform(-bound, bound, shape) if self.bank_init == "kaiming" else np.zeros(shape)
            self.bank[role] = drawn.astype(np.float32)

    def client_roles(self, client: ClientInfo) -> tuple[str, ...]:
        return bank_roles(client.model_type, client.roles)

    def refuse(self, info: ClientInfo) -> str | None:
        """A client that does not fit the bank already seeded (a larger rank, more layers, another role)."""
        if not self.bank:
            return super().refuse(info)
        reasons = []
        if int(info.rank) > int(self.max_rank):
            reasons.append(f"rank {info.rank} exceeds the bank's R = {self.max_rank}")
        if held_depth(info) > int(self.slots):
            reasons.append(f"{held_depth(info)} layers exceed the bank's {self.slots} slots")
        missing = sorted(set(self.client_roles(info)) - set(self.bank))
        if missing:
            reasons.append(f"roles {missing} have no bank (it holds {sorted(self.bank)})")
        return "; ".join(reasons) or super().refuse(info)

    # ------------------------------------------------------------------ verbs
    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        """The same G to every client, plus the round's instructions."""
        if not self.bank:
            self.seed_bank()
        layers = self.layers_for(client, server_round, phase)
        arrays = {bank_tensor_name(role): value for role, value in self.bank.items()}
        instructions = {
            "layers": layers,
            "h2tune-max-rank": int(self.max_rank),
            "h2tune-slots": int(self.slots),
            "h2tune-alternation": self.alternation,
            "h2tune-selection": self.selection,
            "h2tune-learn-relation": self.learn_relation,
            "h2tune-norm-form": self.norm_form,
            "h2tune-norm-weight": self.norm_weight,
            "h2tune-kl-weight": self.kl_weight,
            "h2tune-distill-weight": self.distill_weight,
            "h2tune-send-mass": self.relation_mass,
        }
        return arrays, instructions

    def expected_update(self, client: ClientInfo, server_round: int) -> dict[str, tuple[int, ...]]:
        """Ĝ_k for the roles the client adapts (and its relation mass under ``relation_mass``)."""
        expected = {bank_tensor_name(role): self.bank[role].shape for role in self.client_roles(client)}
        if self.relation_mass:
            expected[BANK_MASS_NAME] = (int(self.slots),)
        return expected

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> None:
        before = {role: value.copy() for role, value in self.bank.items()}
        for role in self.bank:
            name = bank_tensor_name(role)
            holders = [u for u in updates if name in u.arrays]
            if holders:
                self.bank[role] = slot_mean(
                    [u.arrays[name] for u in holders], [self.slot_weights(u) for u in holders], self.bank[role]
                )
        change = sum(float(np.square(self.bank[r] - before[r]).sum()) for r in self.bank)
        same, cross = update_agreement(updates, before)
        self._log_rows.append(
            {
                "round": server_round,
                "phase": BANK_PHASE,
                "bank-bytes": array_bytes(self.bank),
                "bank-change": float(np.sqrt(change)),
                "bank-norm": float(np.sqrt(sum(float(np.square(v).sum()) for v in self.bank.values()))),
                "uploads": len(updates),
                "update-cosine-same-model": same,
                "update-cosine-cross-model": cross,
            }
        )

    def slot_weights(self, update: ClientUpdate) -> np.ndarray:
        """One client's weight on each slot: 1 or n_k, times its relation mass (capped at 1) if asked."""
        base = float(update.num_examples) if self.weighting == "examples" else 1.0
        weights = np.full(int(self.slots), base)
        if self.relation_mass:
            weights = weights * np.clip(update.arrays[BANK_MASS_NAME], 0.0, 1.0)
        return weights

    def personalized_adapters(self, client: ClientInfo) -> dict[str, np.ndarray]:
        """None on the server: a client's A, B, Π and head never leave its device."""
        return {}

    def algorithm_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {bank_tensor_name(role): value for role, value in self.bank.items()}
        return arrays, {"max_rank": self.max_rank, "slots": self.slots}

    def load_algorithm_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.bank = {name[len(BANK_PREFIX) :]: value for name, value in arrays.items() if name.startswith(BANK_PREFIX)}
        self.max_rank, self.slots = meta.get("max_rank"), meta.get("slots")

    def describe(self) -> dict[str, Any]:
        return {
            "alternation": self.alternation,
            "selection": self.selection,
            "learn_relation": self.learn_relation,
            "weighting": self.weighting,
            "relation_mass": self.relation_mass,
            "bank_init": self.bank_init,
            "penalty (form, weight)": (self.norm_form, self.norm_weight),
        }

    def summary_fields(self) -> dict[str, Any]:
        return {
            "bank_rank": self.max_rank,
            "bank_slots": self.slots,
            "bank_roles": sorted(self.bank),
            "bank_bytes": array_bytes(self.bank),
        }


def held_depth(client: ClientInfo) -> int:
    """How many layers a client holds (its Π has that many columns)."""
    return len(client.fixed_layers) if client.fixed_layers is not None else int(client.budget)


def update_agreement(updates: list[ClientUpdate], received: dict[str, np.ndarray]) -> tuple[float | None, float | None]:
    """Mean cosine of the clients' moves ``Ĝ_k - G`` between clients of the same model and of different models.

    A diagnostic of what the bank can carry: where clients of different families push it in unrelated directions
    (cosine near 0), averaging their moves transfers little and mostly shrinks each one.
    """
    roles = sorted(received)
    blocks = [
        np.stack([u.arrays.get(bank_tensor_name(r), received[r]).ravel() - received[r].ravel() for u in updates])
        for r in roles
    ]
    holders = np.array([[bank_tensor_name(r) in u.arrays for r in roles] for u in updates])
    cosine = blockwise_cosine(blocks, holders)
    same = group_mask([u.client.model for u in updates])
    off_diagonal = ~np.eye(len(updates), dtype=bool)
    pairs = (cosine[same & off_diagonal], cosine[~same])
    return tuple(float(p.mean()) if p.size else None for p in pairs)


def slot_mean(banks: list[np.ndarray], weights: list[np.ndarray], previous: np.ndarray) -> np.ndarray:
    """Per slot g, ``sum_k w_k[g] Ĝ_k[g] / sum_k w_k[g]``; a slot that nobody weighs keeps ``previous[g]``.

    Parameters
    ----------
    banks : list[np.ndarray]
        The clients' uploads, each (L_max x R x R).
    weights : list[np.ndarray]
        Each client's weight per slot, (L_max,).
    previous : np.ndarray
        The bank before this round.
    """
    stacked = np.stack([np.asarray(b, np.float64) for b in banks])
    w = np.stack([np.asarray(x, np.float64) for x in weights])
    total = w.sum(axis=0)
    mean = np.einsum("kg,kgij->gij", w, stacked) / np.where(total > 0, total, 1.0)[:, None, None]
    return np.where((total > 0)[:, None, None], mean, previous).astype(np.float32)
