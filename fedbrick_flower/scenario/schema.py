"""The scenario schema: the dataclasses a validated scenario is made of, and the keys a scenario file may hold.

Torch-free and import-light: reading a scenario, a device profile or the field reference loads no model code.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..models.spec import ModelSpec

# The values of ``server.aggregation`` and ``server.norm_scope``; strategies/aggregation.py implements them.
AGGREGATIONS = ("mean", "median", "trimmed-mean")
NORM_SCOPES = ("layer", "update", "rms")
# The values of ``privacy.mode``; docs/privacy.md says what each protects against.
PRIVACY_MODES = ("none", "central", "local")


class ScenarioError(ValueError):
    """One or more scenario or profile values are wrong; each problem starts with the field's dotted path.

    Parameters
    ----------
    problems : str or sequence of str
        One message per problem (``"tasks.news.dataset: 'bbc' is not a known dataset ..."``).
    source : str, optional
        The file the problems were found in, named in the message when there are several.
    """

    def __init__(self, problems: str | Sequence[str], source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(_describe(self.problems, source))


def _describe(problems: list[str], source: str | None) -> str:
    if len(problems) == 1:
        return problems[0]
    where = f" in {source}" if source else ""
    return f"{len(problems)} problems{where}:\n" + "\n".join(f"  - {problem}" for problem in problems)


@dataclass(frozen=True)
class TaskSpec:
    """One task: where its examples come from, what kind they are, and which fields hold them.

    The examples come from at most one of ``dataset`` (a packaged dataset), ``train`` (a JSONL, CSV or Parquet
    file, with an optional ``test`` file that becomes the server's test split) or ``hf_dataset`` (a Hugging Face
    dataset: a hub id, a folder saved with ``save_to_disk``, or a local path ``datasets.load_dataset`` reads).
    A task with none of them has its data on the devices only (each client names its own files). Relative
    paths are read from the working directory. ``labels`` declares the label set (in class-id order); without
    it the set is every label found in the task's data, sorted.
    """

    dataset: str | None = None
    kind: str = "classification"
    train: str | None = None
    test: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    hf_test_split: str | None = None
    text: str = "text"
    text_pair: str | None = None
    label: str | None = None
    prompt: str = "prompt"
    response: str = "response"
    labels: tuple[str | int, ...] | None = None
    max_examples: int | None = None

    def __post_init__(self) -> None:
        # Labels are compared as strings everywhere (a JSONL label 1 and a declared label "1" are the same).
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(str(label).strip() for label in self.labels))

    @property
    def sources(self) -> list[str]:
        """The fields that name this task's own data (at most one may be set)."""
        return [name for name in ("dataset", "train", "hf_dataset") if getattr(self, name) is not None]


@dataclass(frozen=True)
class DataSettings:
    """How each task is split between the server (proxy, test) and the clients (train, test).

    ``partition`` names a Flower Datasets partitioner (``iid``, ``dirichlet``, ``pathological``, ``shard``,
    ``linear``, ``square``, ``exponential``) and ``partition_params`` its parameters; ``dirichlet_alpha`` is
    the Dirichlet ``alpha`` when ``partition_params`` gives none. ``overlong`` says what happens to an example
    longer than ``max_length`` tokens: ``truncate`` or ``drop`` (both counted and logged); a generative example
    is truncated by cutting its response, and dropped under either policy when its prompt alone fills
    ``max_length``. Generative test splits whose answers are all at most ``short_answer_tokens`` tokens long (end of
    turn included) are also scored by greedy generation (exact match); 0 turns that off.
    """

    partition: str = "iid"
    partition_params: dict[str, Any] = field(default_factory=dict)
    dirichlet_alpha: float = 0.5
    proxy_fraction: float = 0.05
    server_test_fraction: float = 0.2
    client_test_fraction: float = 0.2
    max_length: int = 64
    overlong: str = "truncate"
    short_answer_tokens: int = 8
    validation_fraction: float = 0.0
    """Share of each client's training examples held out as its validation split; the server scores the global
    model on the union of those splits. 0: no validation split (every split exactly as without the field)."""

    def partitioner_params(self) -> dict[str, Any]:
        """The partitioner's parameters as given, with ``alpha`` from ``dirichlet_alpha`` for ``dirichlet``."""
        params = dict(self.partition_params)
        if self.partition == "dirichlet":
            params.setdefault("alpha", self.dirichlet_alpha)
        return params


@dataclass(frozen=True)
class TrainSettings:
    """The local training loop of every client."""

    local_steps: int = 20
    batch_size: int = 16
    lr: float = 5e-4
    head_lr: float = 5e-3
    weight_decay: float = 0.0
    eval_batch_size: int = 64
    freeze_lora: bool = False
    """True: LoRA stays at its initialisation (B = 0) and only the head (and the algorithm's own modules) trains,
    a federated linear probe. LoRA then stays off the wire both ways (algorithms whose registry entry declares
    ``linear_probe`` only)."""
    evaluate_every: int = 1
    """The clients score their own test split in every K-th round's training message (K, 2K, ...) and always in
    the last round; evaluation-only messages (to clients that did not train) always score."""
    head_warmup_steps: int = 0
    """LP-FT style warm-up: every training message first trains the task head alone for this many steps (at
    ``head_lr``, on the client's training data, backbone and adapters frozen as received), then the local
    training runs as usual. 0: no warm-up. A generative task has no head to warm up (its clients skip it)."""


@dataclass(frozen=True)
class LoraDefaults:
    """LoRA settings shared by the clients unless a profile overrides the rank.

    ``targets`` are module ROLES (``q k v o gate up down``, mapped to each family's own modules), or
    ``all-linear`` for every projection the family has.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | str = ("q", "v")

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)


@dataclass(frozen=True)
class ServerSettings:
    """Round mechanics on the server."""

    fraction_train: float = 1.0
    min_train_clients: int = 1
    min_clients: int | None = None
    wire_dtype: str = "float32"
    max_update_mb: float = 64.0
    evaluate_global: bool = True
    evaluate_without_lora: bool = False
    """Also score each global model with its LoRA B zeroed (head only): what the aggregated LoRA adds."""
    evaluate_every: int = 1
    """Server-side evaluation of the global models in every K-th round (K, 2K, ...) and always in the last round."""
    node_wait_timeout: float = 120.0
    round_timeout: float = 3600.0
    aggregation: str = "mean"
    trim_fraction: float = 0.2
    outlier_norm_multiple: float | None = 10.0
    """Secure by default: an update whose root-mean-square value is over 10x the round's median is rejected
    (a x1000 update is; honest clients of the built-in scenarios stay under 3x, docs/privacy.md). None: off."""
    norm_scope: str = "rms"
    clip_norm: float | None = None
    clip_norm_multiple: float | None = None
    stop_when_plateau: str = "off"
    """End the run early once the validation loss stops improving: ``global`` (the server's global models on
    their validation split) or ``on-device`` (mean over clients of their own validation split); needs
    ``data.validation_fraction`` > 0. ``rounds`` stays the cap."""
    plateau_window: int = 5
    plateau_tolerance: float = 0.01
    """Stop when the best loss of the last ``plateau_window`` rounds is less than this share below the best
    loss before them."""


@dataclass(frozen=True)
class FaultSettings:
    """Fault injection for resilience tests: the listed clients corrupt their training replies."""

    nan_update: tuple[str, ...] = ()
    scaled_update: tuple[str, ...] = ()
    scale_factor: float = 1000.0
    sign_flip: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrivacySettings:
    """Client-level differential privacy of the adapter updates (DP-FedAvg) and secure aggregation.

    ``mode``: ``none``; ``central`` (the server clips each client's update, the delta from what it started from,
    to ``clip_norm`` and adds Gaussian noise of std ``noise_multiplier * clip_norm / n`` to each tensor's mean over
    its n holders); ``local`` (each device clips its update and adds noise of std ``noise_multiplier *
    clip_norm`` before sending it). ε at ``delta`` is accounted after every round (a ``privacy`` metric row).
    ``secure_aggregation``: the server learns only the sum of the updates (SecAgg+).
    """

    mode: str = "none"
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    delta: float = 1e-5
    secure_aggregation: bool = False


@dataclass(frozen=True)
class ClientProfile:
    """A device profile: what one client holds and where it runs.

    ``layers`` is a depth budget (an int: the server allocates that many layers) or an explicit list of global
    layer indices the device keeps. ``group`` is the client's domain for an algorithm's per-group state;
    it defaults to the task. ``train`` (and optionally ``test``) name the device's own data files (JSONL,
    CSV or Parquet, read with the task's columns): only this device reads them, and it trains on them instead
    of a share of the task's data.
    """

    id: str
    model: str
    task: str
    layers: int | tuple[int, ...] | None = None
    rank: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    group: str | None = None
    train: str | None = None
    test: str | None = None

    @property
    def domain(self) -> str:
        return self.group or self.task


@dataclass(frozen=True, eq=False)
class Scenario:
    """A validated scenario. Equal (and hashed) by content, so per-process caches can key on it."""

    name: str
    algorithm: str
    models: dict[str, ModelSpec]
    tasks: dict[str, TaskSpec]
    clients: tuple[ClientProfile, ...]
    rounds: int = 3
    seed: int = 0
    algorithm_params: dict[str, Any] = field(default_factory=dict)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    lora: LoraDefaults = field(default_factory=LoraDefaults)
    server: ServerSettings = field(default_factory=ServerSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scenario) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def client(self, client_id: str) -> ClientProfile:
        for profile in self.clients:
            if profile.id == client_id:
                return profile
        raise ScenarioError(f"clients: no client with id {client_id!r} (known: {[c.id for c in self.clients]})")

    def clients_of_task(self, task: str) -> list[str]:
        return [profile.id for profile in self.clients if profile.task == task]


SCENARIO_KEYS: dict[str, str] = {
    "name": "the run's name",
    "description": "what the scenario shows (one line, for `fedbrick-flower scenarios`)",
    "algorithm": "the registered algorithm (required)",
    "rounds": "number of federated rounds",
    "seed": "seed of data splits, layer draws, initialisation and batch order",
    "algorithm_params": "keyword arguments of the algorithm's strategy (see below)",
    "models": "named models (required): MODEL_KEY -> model entry",
    "tasks": "named tasks (required): TASK_KEY -> task entry",
    "clients": "the device profiles (required): a list of client entries",
    "data": "how each task is split",
    "train": "local training of every client",
    "lora": "LoRA defaults",
    "server": "round mechanics",
    "faults": "fault injection for resilience tests",
    "privacy": "differential privacy of the updates and secure aggregation",
}
MODEL_KEYS: dict[str, str] = {
    "source": "pretrained: a packaged name, a local folder, or a hub id (hub ids only when the hub is reachable)",
    "family": "random init (untrained): a Hugging Face model_type such as bert or llama",
    "config": "random init: config overrides (hidden_size, num_hidden_layers...)",
    "tokenizer": "tokenizer source (default: source; required with family)",
}
