"""A Flower strategy base for heterogeneous clients: each node gets its own payload and its own schema.

Flower's ``FedAvg`` needs identical keys in every reply. Clients here hold different depths, families and
tasks, so this base subclasses :class:`flwr.serverapp.strategy.Strategy` directly and holds the verbs of a round
and the state a run resumes from. Like Flower's ``strategy.py`` beside ``strategy_utils.py``, the work it
shares with every algorithm lives in pure helper modules, each tested on its own: :mod:`.registration` (the
``query`` exchange that keys clients by their LOGICAL id; Flower's node ids are random), :mod:`.transport`
(per-client messages, replies attributed to their client), :mod:`.replies` (reply checks that reject and log a
bad update while the round goes on), :mod:`.screening` (norm outliers and clipping), :mod:`.dp` (client-level
differential privacy) and :mod:`.metric_rows` (the rows of ``metrics.jsonl``). An algorithm subclass implements
four verbs: :meth:`payload`, :meth:`expected_update`, :meth:`aggregate` and, where it keeps one,
:meth:`global_adapters`; one whose server needs only sums adds :meth:`aggregation_key` and
:meth:`aggregate_means` and runs under secure aggregation (:mod:`.secure_aggregation`, SecAgg+).
"""

from __future__ import annotations

import dataclasses
import random
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import ERROR, INFO, WARNING
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from ..adapters.naming import drop_lora
from ..client_info import ClientInfo
from ..data.checks import label_mismatch
from ..metrics import TRAIN
from ..records import content_bytes, to_array_record
from ..scenario.schema import PrivacySettings
from ..secure_layout import LAYOUT_KEY, Layout
from . import dp, metric_rows
from .aggregation import Contribution, Robustness, random_layer_subset, sample_clients
from .registration import (
    RunStoppedError,
    check_reachable,
    connected_clients,
    query_messages,
    refusal_line,
    refusal_messages,
    register_replies,
    too_few_connected,
    unknown_nodes,
)
from .replies import (
    ClientUpdate,
    attribute,
    node_error,
    nothing_trained,
    read_updates,
    reply_metrics,
    training_set_size,
)
from .screening import screen_updates
from .secure_aggregation import SecAggParameters, SecureAggregationFailed, SecureRound, run_protocol, unmasked_sum
from .transport import exchange, round_message

if TYPE_CHECKING:
    from ..scenario import Scenario

NO_DEFENCE = Robustness()  # the plain weighted mean, no norm check, no clipping
NO_PRIVACY = PrivacySettings()
SeededStart = Callable[[str, str, "int | None"], Mapping[str, np.ndarray]]
"""``(model, task, LoRA rank) -> tensors``: what a client starts each tensor from before it is sent any."""
T = TypeVar("T")


class RoundCallback:
    """No-op round hooks (Lightning-``Callback`` style) for metrics sinks, checkpoints and reports."""

    def on_round_end(self, strategy: HeterogeneousStrategy, server_round: int, log_rows: list[dict]) -> None:
        """Called after training, client evaluation and server evaluation of a round."""

    def on_run_end(self, strategy: HeterogeneousStrategy, rounds_completed: int) -> None:
        """Called once after the last round."""

    def stop_requested(self) -> bool:
        """True ends the run after the round just completed (``num_rounds`` is then a cap, not a count)."""
        return False


class HeterogeneousStrategy(Strategy):
    """Base of every fedbrick-flower strategy.

    Parameters
    ----------
    seed : int (default: 0)
        Seeds node sampling and the algorithm's own draws, so a run can be repeated.
    fraction_train : float (default: 1.0)
        Fraction of registered, connected clients sampled for training each round (at least
        ``min_train_clients``).
    min_train_clients : int (default: 1)
        Minimum number of clients sampled for training in a round.
    min_clients : int (default: 1)
        Minimum number of connected, registered clients before a round starts.
    expected_clients : int, optional
        How many clients the scenario declares. Once every one of them has answered and so many failed to
        register that ``min_clients`` can no longer be reached, the run stops at once with their reasons instead
        of waiting out the timeout (while some have not answered, a device may still come, or come back
        corrected).
    node_wait_timeout : float (default: 120.0)
        Seconds to wait for ``min_clients`` nodes before failing the run with a clear error (never hang).
    round_timeout : float (default: 3600.0)
        Seconds to wait for the replies of one round; late replies are dropped and logged.
    wire_dtype : str (default: "float32")
        dtype of the adapter tensors on the wire (``float32`` or ``float16``).
    max_update_bytes : int (default: 64 MiB)
        Size cap for one client update; a bigger update is rejected.
    resample_layers : bool (default: False)
        Draw each client's layers anew every round within its depth budget (FedRA allocation). Otherwise a
        client holds the layers its profile fixes, or the first ``budget`` layers.
    task_labels : Mapping[str, Sequence[str] | None], optional
        Each task's label set. A registering client whose training labels (reported as counts and names, never
        examples) are not all among its task's labels is refused, with the reason logged under its id.
    state_scope : str (default: "")
        Names the run for the clients' durable state: a device keeps its state file across a restart of its
        SuperNode, or of the server resuming the same run, and ignores one written for another run.
    frozen_lora : bool (default: False)
        ``train.freeze_lora``: the clients train no LoRA, so none is sent to them or expected back (only the
        head and the algorithm's own modules travel); the strategy's state keeps no LoRA, and a global model
        runs with its seeded start (B = 0).
    robustness : Robustness (default: plain weighted mean, no checks)
        Defences against finite but poisoned updates: the round's validated updates are checked against the
        round's median norm (an outlier is rejected and logged like an invalid reply) and optionally clipped
        before :meth:`aggregate`; layer-wise methods combine tensors through :meth:`combine_layerwise`, which
        applies its ``aggregation`` (mean, median or trimmed mean over each tensor's holders).
    secure_aggregation : SecAggParameters, optional
        Run each round's training through SecAgg+ (``privacy.secure_aggregation``): the strategy receives only
        masked vectors and unmasks their sum, the layer-wise weighted mean over holders, which it folds in with
        :meth:`aggregate_means`. Only for strategies whose registry entry declares ``secure_aggregation``, and
        with no ``robustness`` that needs individual updates (norm screening, clipping, median, trimmed mean).
    privacy : PrivacySettings (default: none)
        ``privacy.mode: central``: each validated update is clipped, its delta from what the client started from
        bounded by ``clip_norm`` (:func:`.dp.clip_update`), and :meth:`combine_layerwise` returns each tensor's
        unweighted mean over its holders with Gaussian noise (:func:`.dp.noised_layerwise_mean`). Under
        ``central`` and ``local`` a ``privacy`` row gives epsilon after every round (:func:`.dp.epsilon`).
    seeded_start : SeededStart, optional
        The start of the tensors a client was not sent (its first round): the reference of its delta under
        central privacy. None: such a tensor's whole value counts as the update.
    callbacks : Sequence[RoundCallback] (default: ())
        Round hooks: metrics files, checkpoints, server-side evaluation.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        fraction_train: float = 1.0,
        min_train_clients: int = 1,
        min_clients: int = 1,
        expected_clients: int | None = None,
        node_wait_timeout: float = 120.0,
        round_timeout: float = 3600.0,
        wire_dtype: str = "float32",
        max_update_bytes: int = 64 * 2**20,
        resample_layers: bool = False,
        task_labels: Mapping[str, Sequence[str] | None] | None = None,
        state_scope: str = "",
        frozen_lora: bool = False,
        robustness: Robustness = NO_DEFENCE,
        secure_aggregation: SecAggParameters | None = None,
        privacy: PrivacySettings = NO_PRIVACY,
        seeded_start: SeededStart | None = None,
        callbacks: Sequence[RoundCallback] = (),
    ) -> None:
        if secure_aggregation is not None and (robustness.screens or robustness.aggregation != "mean"):
            raise ValueError(
                f"privacy.secure_aggregation: the server sees no individual update, so {robustness} cannot apply"
            )
        self.seed = seed
        self.fraction_train = fraction_train
        self.min_train_clients = min_train_clients
        self.min_clients = min_clients
        self.expected_clients = expected_clients
        self.node_wait_timeout = node_wait_timeout
        self.round_timeout = round_timeout
        self.wire_dtype = wire_dtype
        self.max_update_bytes = max_update_bytes
        self.resample_layers = resample_layers
        self.state_scope = state_scope
        self.frozen_lora = frozen_lora
        self.robustness = robustness
        self.secure_aggregation = secure_aggregation
        self.privacy = privacy
        self.seeded_start = seeded_start
        self.task_labels = dict(task_labels or {})
        self.callbacks = list(callbacks)
        self.clients: dict[str, ClientInfo] = {}
        self.round_layers: dict[str, list[int]] = {}
        self.start_round = 1
        self._log_rows: list[dict] = []
        self._bytes_down: dict[tuple[str, str], int] = {}  # (client id, phase) -> bytes of the last message
        self._sent: dict[str, str] = {}  # message id -> logical client id, for the current exchange
        self._sent_train: dict[str, dict[str, np.ndarray]] = {}  # client id -> tensors sent to train (central DP)
        self._last_replies: list[Message] = []
        self._trained: set[str] = set()  # clients whose train reply (with its evaluation) came back this round
        self._failed_nodes: dict[int, str] = {}  # node id -> why it could not register (asked once)
        self._secure: tuple[SecureRound, Layout] | None = None  # this round's protocol state and slots

    @classmethod
    def from_scenario(cls, scenario: Scenario, **kwargs: Any) -> HeterogeneousStrategy:
        """Build the strategy for a run; an algorithm that needs the scenario itself (models, proxy data)
        overrides this to pass it on."""
        return cls(**kwargs)

    # ------------------------------------------------------------------ algorithm verbs
    @abstractmethod
    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        """Tensors and per-round instructions for one client (``phase`` is ``train`` or ``evaluate``)."""

    @abstractmethod
    def expected_update(self, client: ClientInfo, server_round: int) -> dict[str, tuple[int, ...]]:
        """Exactly the tensor names and shapes the client must return from this round's training."""

    @abstractmethod
    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> None:
        """Fold the round's validated updates into the server state."""

    def aggregation_key(self, client: ClientInfo, name: str) -> str:
        """Under secure aggregation: the key under which a tensor of ``client`` is averaged with the other
        holders' (tensors of one key must have one shape). Only strategies whose server needs sums define it."""
        raise NotImplementedError(f"{type(self).__name__} needs individual updates: no secure aggregation")

    def aggregate_means(self, server_round: int, means: dict[str, np.ndarray], updates: list[ClientUpdate]) -> None:
        """Under secure aggregation: fold the round's layer-wise weighted means (by :meth:`aggregation_key`) into
        the server state; ``updates`` hold the clients' metrics and no tensors."""
        raise NotImplementedError(f"{type(self).__name__} needs individual updates: no secure aggregation")

    def global_adapters(self) -> dict[tuple[str, str], dict[str, np.ndarray]]:
        """Full-depth global adapters per ``(model, task)``, for server evaluation; empty where none exists."""
        return {}

    def personalized_adapters(self, client: ClientInfo) -> dict[str, np.ndarray]:
        """The adapters this client runs with (saved as its personalized peft adapter at the end)."""
        arrays, _ = self.payload(client, server_round=0, phase="evaluate")
        return arrays

    def algorithm_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Algorithm-specific arrays and JSON-able metadata for checkpoints."""
        return {}, {}

    def load_algorithm_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore what :meth:`algorithm_state` returned."""

    def describe(self) -> dict[str, Any]:
        """Algorithm settings shown by :meth:`summary`."""
        return {}

    def summary_fields(self) -> dict[str, Any]:
        """Algorithm-specific entries for the run's ``summary.json``."""
        return {}

    def layers_for(self, client: ClientInfo, server_round: int, phase: str) -> list[int]:
        """The global layers ``client`` holds this round; evaluation reuses the round's training allocation."""
        if phase == "evaluate" and client.client_id in self.round_layers:
            return self.round_layers[client.client_id]
        if client.fixed_layers is not None:
            layers = list(client.fixed_layers)
        elif self.resample_layers:
            rng = random.Random(f"{self.seed}/layers/{client.client_id}/{server_round}")
            layers = list(random_layer_subset(client.num_layers, client.budget, rng))
        else:
            layers = list(range(client.budget))
        self.round_layers[client.client_id] = layers
        return layers

    # ------------------------------------------------------------------ state
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything needed to resume: registry, layer allocations and the algorithm's state."""
        arrays, meta = self.algorithm_state()
        meta = {
            "algorithm": meta,
            "clients": {cid: info.to_json() for cid, info in self.clients.items()},
            "round_layers": self.round_layers,
        }
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], completed_round: int) -> None:
        """Restore :meth:`state_dict` output and continue after ``completed_round``."""
        self.clients = {cid: ClientInfo.from_json(text, node_id=0) for cid, text in meta["clients"].items()}
        self.round_layers = {cid: list(layers) for cid, layers in meta["round_layers"].items()}
        self.load_algorithm_state(arrays, meta["algorithm"])
        self.start_round = completed_round + 1

    # ------------------------------------------------------------------ Flower Strategy interface
    def summary(self) -> None:
        log(INFO, "\t├── %s", type(self).__name__)
        settings = {
            "seed": self.seed,
            "fraction_train": self.fraction_train,
            "min_train_clients": self.min_train_clients,
            "min_clients": self.min_clients,
            "wire_dtype": self.wire_dtype,
            "max_update_bytes": self.max_update_bytes,
            "robustness": self.robustness,
            "privacy": self.privacy,
            **self.describe(),
        }
        for key, value in settings.items():
            log(INFO, "\t│\t├── %s: %s", key, value)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rng = random.Random(f"{self.seed}/sample/{server_round}")
        online = self._online_clients(grid)
        sampled = sample_clients(online, self.fraction_train, self.min_train_clients, rng)
        return [self._message(self.clients[cid], server_round, "train", config) for cid in sampled]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.secure_aggregation is not None:
            return self._aggregate_masked(server_round, replies)
        validated, invalid = read_updates(
            attribute(replies, self._sent, self.clients),
            lambda client: self._on_wire(self.expected_update(client, server_round)),
            self.max_update_bytes,
        )
        screened = screen_updates(self.robustness, [update for _, update in validated])
        for client_id, reason in {**invalid, **screened.rejected}.items():
            self._reject(server_round, self.clients[client_id], TRAIN, reason)
        self._log_rows.extend(metric_rows.clipped_rows(server_round, screened.factors))
        updates = self._clip_private(server_round, screened.kept)
        self._trained = {u.client.client_id for u in updates}
        for reply, update in validated:
            if (cid := update.client.client_id) in self._trained:
                layers, bytes_down = self.round_layers.get(cid), self._bytes_down.get((cid, "train"))
                rows = metric_rows.train_rows(server_round, update, layers, content_bytes(reply.content), bytes_down)
                self._log_rows.extend(rows)
        if updates:
            started = time.perf_counter()
            self.aggregate(server_round, updates)
            self._log_rows.append(metric_rows.aggregate_row(server_round, time.perf_counter() - started, len(updates)))
        if self.privacy.mode != "none":
            self._log_rows.append(metric_rows.privacy_row(server_round, self.privacy, self._sample_rate()))
        return None, MetricRecord(metric_rows.train_metrics(updates))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluation-only messages, for the connected clients that did not train this round.

        A client that trained has already evaluated the network it just trained inside its train message (one
        ClientApp start per client and round), so it gets no second message.
        """
        online = [cid for cid in self._online_clients(grid) if cid not in self._trained]
        return [self._message(self.clients[cid], server_round, "evaluate", config) for cid in sorted(online)]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        for reply, client in attribute(replies, self._sent, self.clients):
            if reply.has_error():
                self._reject(server_round, client, "evaluate", node_error(reply))
                continue
            bytes_down = self._bytes_down.get((client.client_id, "evaluate"))
            row = metric_rows.evaluation_row(
                server_round, client.client_id, reply_metrics(reply), content_bytes(reply.content), bytes_down
            )
            self._log_rows.append(row)
        accuracy = metric_rows.evaluation_accuracy(self._log_rows, server_round)
        return MetricRecord({"accuracy": accuracy}) if accuracy is not None else None

    # ------------------------------------------------------------------ the run
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run rounds ``start_round..num_rounds`` and return Flower's :class:`Result`.

        The signature and the round (configure, exchange, aggregate; train, then evaluate) are Flower's
        ``Strategy.start``, which cannot be called as it is, because clients here are heterogeneous:

        - A resumed run starts at ``start_round``; Flower's loop always starts at round 1.
        - Before each round the loop learns the profiles of new nodes (``query``), and a reply, also an error
          reply the SuperLink writes for a lost node, is attributed to its logical client through the id of the
          message it answers; ``Grid.send_and_receive`` returns the replies alone.
        - Round hooks (``callbacks``: metrics rows, checkpoints, server-side evaluation) run after each round;
          Flower's loop has none.
        - ``initial_arrays`` is not sent as one model to everybody: each algorithm builds a payload per client
          from its own state, starting from the seeded adapter initialisation every process shares. Arrays
          passed here are ignored (a warning says so), and ``evaluate_fn(round, arrays)`` receives the global
          adapters, flattened as ``model/task/name``, from round 1 on (there is no round-0 model to score).
        - ``timeout`` is each round's reply timeout (``round_timeout``); a client that misses it is logged.
        - ``train_config`` and ``evaluate_config`` are merged into every client's per-round instructions.
          Training replies carry the client's own evaluation, so ``evaluate`` messages go only to clients that
          did not train.
        """
        if initial_arrays is not None and len(initial_arrays) > 0:
            log(WARNING, "%s ignores initial_arrays: payloads are built per client", type(self).__name__)
        self.round_timeout = timeout
        log(INFO, "Starting %s for rounds %d..%d", type(self).__name__, self.start_round, num_rounds)
        self.summary()
        result = Result()
        completed = self.start_round - 1
        for server_round in range(self.start_round, num_rounds + 1):
            started = time.monotonic()
            log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
            self._register_new_nodes(grid)
            messages = list(self.configure_train(server_round, ArrayRecord(), train_config or ConfigRecord(), grid))
            self._exchange_train(grid, messages, server_round)
            _, train_metrics = self.aggregate_train(server_round, self._last_replies)
            if not self._trained:  # a run in which nothing trained must not go on to report success
                rejected = metric_rows.rejected_reasons(self._log_rows, server_round, TRAIN)
                reason = nothing_trained(server_round, len(messages), rejected)
                if reason is not None:
                    raise RunStoppedError(reason)
                log(WARNING, "round %d: every sampled device went offline; waiting for them", server_round)
            log(INFO, "\t└──> train: %s", train_metrics)
            result.train_metrics_clientapp[server_round] = train_metrics
            messages = self.configure_evaluate(server_round, ArrayRecord(), evaluate_config or ConfigRecord(), grid)
            self._exchange(grid, messages)
            eval_metrics = self.aggregate_evaluate(server_round, self._last_replies)
            log(INFO, "\t└──> evaluate: %s", eval_metrics)
            if eval_metrics is not None:
                result.evaluate_metrics_clientapp[server_round] = eval_metrics
            if evaluate_fn is not None:
                server_metrics = evaluate_fn(server_round, self._flat_global_adapters())
                if server_metrics is not None:
                    result.evaluate_metrics_serverapp[server_round] = server_metrics
            self._log_rows.append(metric_rows.round_row(server_round, time.monotonic() - started))
            rows, self._log_rows = self._log_rows, []
            for callback in self.callbacks:
                callback.on_round_end(self, server_round, rows)
            completed = server_round
            # Duck-typed: a callback that is not a RoundCallback subclass has no say in stopping.
            if any(getattr(callback, "stop_requested", bool)() for callback in self.callbacks):
                log(INFO, "Stopping after round %d of at most %d: a round callback asked", server_round, num_rounds)
                break
        for callback in self.callbacks:
            callback.on_run_end(self, completed)
        result.arrays = self._flat_global_adapters()
        return result

    # ------------------------------------------------------------------ registration
    def refuse(self, info: ClientInfo) -> str | None:
        """Why a registering client cannot take part (None: it can). Subclasses add their own conditions.

        A node whose own training labels are not all labels of its task is refused (device-local data).
        """
        if info.task not in self.task_labels:
            return None
        return label_mismatch(self.task_labels[info.task], info.extra.get("labels"))

    def _register_new_nodes(self, grid: Grid) -> None:
        """Ask every connected node we do not know yet for its profile (a node that rejoins has a new id).

        A node that answers with an error, or that :meth:`refuse` turns down, is asked no more: its reason is
        logged once under its client id, kept, and sent to the device; the run stops at once when every
        expected client has answered and too few remain to reach ``min_clients``.
        """
        new_nodes = unknown_nodes(grid.get_node_ids(), self.clients, self._failed_nodes)
        if not new_nodes:
            return
        replies = grid.send_and_receive(query_messages(new_nodes), timeout=self.round_timeout)
        refused = register_replies(replies, self.clients, self.refuse)
        for node, reason in refused.items():
            self._failed_nodes[node] = reason
            log(ERROR, "%s", refusal_line(node, reason))
            self._log_rows.append(metric_rows.registration_failed_row(self.start_round, node, reason))
        grid.push_messages(refusal_messages(refused))  # the device shows the reason too; no reply is awaited
        check_reachable(self.expected_clients, len(self.clients), self._failed_nodes, self.min_clients)

    def _online_clients(self, grid: Grid) -> list[str]:
        """Registered clients whose node is connected; waits (bounded) for ``min_clients`` of them."""
        deadline = time.monotonic() + self.node_wait_timeout
        while len(online := connected_clients(self.clients, grid.get_node_ids())) < self.min_clients:
            check_reachable(self.expected_clients, len(self.clients), self._failed_nodes, self.min_clients)
            if time.monotonic() >= deadline:
                raise too_few_connected(len(online), self.min_clients, self.node_wait_timeout, self._failed_nodes)
            time.sleep(1.0)
            self._register_new_nodes(grid)
        return online

    # ------------------------------------------------------------------ helpers
    def combine_layerwise(self, contributions: Iterable[Contribution]) -> dict[str, np.ndarray]:
        """Combine each tensor over the contributions that hold it: the one entry point of every layer-wise
        method, so ``server.aggregation`` (mean, median, trimmed mean) applies to all of them, and under
        ``privacy.mode: central`` the noised mean of :func:`.dp.noised_layerwise_mean`."""
        if self.privacy.mode == "central":
            return dp.noised_layerwise_mean(contributions, self.privacy.noise_multiplier, self.privacy.clip_norm)
        return self.robustness.combine(contributions)

    def _clip_private(self, server_round: int, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """Under central privacy, each update with its delta from what its client started from clipped to
        ``privacy.clip_norm`` (a ``clipped`` row for each one scaled down); the updates as they are otherwise."""
        if self.privacy.mode != "central":
            return updates
        clipped, factors = [], {}
        for update in updates:
            result = dp.clip_update(update.arrays, self._start_of(update.client), self.privacy.clip_norm)
            clipped.append(dataclasses.replace(update, arrays=result.arrays))
            if (factor := result.factor(self.privacy.clip_norm)) < 1.0:
                factors[update.client.client_id] = factor
        self._log_rows.extend(metric_rows.clipped_rows(server_round, factors))
        return clipped

    def _start_of(self, client: ClientInfo) -> dict[str, np.ndarray]:
        """What ``client`` started this round's training from: the tensors sent to it, over its seeded start."""
        sent = self._sent_train.get(client.client_id, {})
        if self.seeded_start is None:
            return dict(sent)
        return {**self.seeded_start(client.model, client.task, client.rank or None), **sent}

    def _sample_rate(self) -> float:
        """Each client's chance of training in a round, for the accountant: ``fraction_train``, raised where
        ``min_train_clients`` samples more; 1 under local privacy (the server sees who sends)."""
        if self.privacy.mode == "local" or not self.expected_clients:
            return 1.0
        return min(1.0, max(self.fraction_train, self.min_train_clients / self.expected_clients))

    def _flat_global_adapters(self) -> ArrayRecord:
        tensors = {
            f"{model}/{task}/{name}": value
            for (model, task), adapters in self.global_adapters().items()
            for name, value in adapters.items()
        }
        return to_array_record(tensors, "float32")

    def _on_wire(self, tensors: Mapping[str, T]) -> dict[str, T]:
        """What of an algorithm's tensors (or schema) travels: all of them, less LoRA under ``frozen_lora``."""
        return drop_lora(tensors) if self.frozen_lora else dict(tensors)

    def _message(self, client: ClientInfo, server_round: int, phase: str, config: ConfigRecord) -> Message:
        tensors, instructions = self.payload(client, server_round, phase)
        message = round_message(
            client.node_id,
            phase,
            self._on_wire(tensors),
            dict(config),
            instructions,
            server_round,
            self.wire_dtype,
            self.state_scope,
        )
        self._bytes_down[(client.client_id, phase)] = content_bytes(message.content)
        if phase == "train" and self.privacy.mode == "central":
            self._sent_train[client.client_id] = self._on_wire(tensors)
        return message

    def _exchange(self, grid: Grid, messages: Iterable[Message]) -> None:
        """Push messages, remember which logical client each went to, and pull the replies."""
        self._sent, self._last_replies = exchange(grid, messages, self.clients, self.round_timeout)

    def _exchange_train(self, grid: Grid, messages: Iterable[Message], server_round: int) -> None:
        """The training exchange: plain, or the SecAgg+ stages with each client's update padded to the union of
        the round's tensors (``secure_layout``)."""
        if self.secure_aggregation is None:
            self._exchange(grid, messages)
            return
        messages = list(messages)
        by_node = {info.node_id: info for info in self.clients.values()}
        sampled = [by_node[message.metadata.dst_node_id] for message in messages]
        wire = {client.client_id: self._on_wire(self.expected_update(client, server_round)) for client in sampled}
        keys = {c.client_id: {name: self.aggregation_key(c, name) for name in wire[c.client_id]} for c in sampled}
        layout = Layout.union(
            [{keys[cid][name]: shape for name, shape in schema.items()} for cid, schema in wire.items()]
        )
        clipping = self.secure_aggregation.clipping_range
        for message, client in zip(messages, sampled, strict=True):
            message.content[LAYOUT_KEY] = ConfigRecord(layout.for_client(keys[client.client_id], clipping))
        self._secure, self._sent, self._last_replies = None, {}, []
        try:
            secure, sent, self._last_replies = run_protocol(
                grid,
                messages,
                self.secure_aggregation,
                max_weight=max(client.num_train_examples for client in sampled),
                server_round=server_round,
                timeout=self.round_timeout,
                seed=f"{self.seed}/secagg/{server_round}",
            )
        except SecureAggregationFailed as error:
            log(ERROR, "round %d: %s; no aggregation this round", server_round, error)
            return
        self._secure = secure, layout
        self._sent = {mid: by_node[nid].client_id for mid, nid in sent.items()}

    def _aggregate_masked(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregation under secure aggregation: ``replies`` hold masked vectors and metrics, never an update.

        The unmasked sum gives each tensor's weighted mean over its holders; a client whose reply failed is
        rejected with its reason (its masks are removed through its neighbours' shares).
        """
        if self._secure is None:
            return None, MetricRecord(metric_rows.train_metrics([]))
        secure, layout = self._secure
        updates = []
        for reply, client in attribute(replies, self._sent, self.clients):
            if client.node_id in secure.rejected:
                self._reject(server_round, client, "train", secure.rejected[client.node_id])
                continue
            metrics = reply_metrics(reply)  # read_masked checked them
            update = ClientUpdate(client, {}, training_set_size(metrics), metrics)
            updates.append(update)
            rows = metric_rows.train_rows(
                server_round,
                update,
                self.round_layers.get(client.client_id),
                content_bytes(reply.content),
                self._bytes_down.get((client.client_id, "train")),
            )
            self._log_rows.extend(rows)
        self._trained = {u.client.client_id for u in updates}
        started = time.perf_counter()
        try:
            means = layout.means(*unmasked_sum(secure))
        except SecureAggregationFailed as error:
            log(ERROR, "round %d: %s; no aggregation this round", server_round, error)
            return None, MetricRecord(metric_rows.train_metrics(updates))
        self.aggregate_means(server_round, means, updates)
        self._log_rows.append(metric_rows.aggregate_row(server_round, time.perf_counter() - started, len(updates)))
        return None, MetricRecord(metric_rows.train_metrics(updates))

    def _reject(self, server_round: int, client: ClientInfo, phase: str, reason: str) -> None:
        log(WARNING, "round %d: rejected %s reply of client %s: %s", server_round, phase, client.client_id, reason)
        self._log_rows.append(metric_rows.rejected_row(server_round, client.client_id, phase, reason))
