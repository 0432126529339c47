"""A Flower strategy base for heterogeneous clients: each node gets its own payload and its own schema.

Flower's ``FedAvg`` needs identical keys in every reply. Clients here hold different depths, families and
tasks, so this base subclasses :class:`flwr.serverapp.strategy.Strategy` directly and adds what every
algorithm of the package needs: a client registry keyed by the LOGICAL client id (learned through a ``query``
message; Flower's node ids are random), per-client payloads, reply validation that rejects and logs a bad
update while the round goes on, seeded sampling with a bounded wait for nodes, byte accounting, checkpointable
state and round hooks. An algorithm subclass implements four verbs: :meth:`payload`, :meth:`expected_update`,
:meth:`aggregate` and, where it keeps one, :meth:`global_adapters`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from logging import ERROR, INFO, WARNING
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from ..adapters.naming import drop_lora, is_head, names_for_layers
from ..data.checks import label_mismatch
from ..records import (
    ADAPTERS_KEY,
    CONFIG_KEY,
    EVAL_PREFIX,
    METRICS_KEY,
    PROFILE_KEY,
    STATE_SCOPE_KEY,
    UpdateRejected,
    array_bytes,
    content_bytes,
    from_array_record,
    json_config,
    to_array_record,
    validate_update,
)
from .aggregation import Contribution, Robustness, random_layer_subset, sample_clients, weighted_mean

if TYPE_CHECKING:
    from ..scenario import Scenario

NO_DEFENCE = Robustness()  # the plain weighted mean, no norm check, no clipping
T = TypeVar("T")


@dataclass
class ClientInfo:
    """What the server knows about one logical client, as reported in its ``query`` reply."""

    client_id: str
    model: str
    task: str
    group: str
    model_type: str
    num_layers: int
    budget: int
    fixed_layers: list[int] | None
    layer_schema: dict[str, list[int]]
    head_schema: dict[str, list[int]]
    num_train_examples: int
    hidden_size: int = 0
    intermediate_size: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    rank: int = 0
    alpha: float = 0.0
    roles: list[str] = field(default_factory=list)
    adapter_kinds: list[str] = field(default_factory=lambda: ["lora"])
    extra: dict[str, Any] = field(default_factory=dict)
    node_id: int = 0

    @classmethod
    def from_json(cls, text: str, node_id: int) -> ClientInfo:
        """Parse a ``query`` reply; unknown fields (a newer client) go to ``extra`` rather than failing."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)} - {"node_id"}
        extra = {key: data.pop(key) for key in list(data) if key not in known}
        data["extra"] = {**data.get("extra", {}), **extra}
        return cls(**data, node_id=node_id)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("node_id")
        return json.dumps(data)

    def schema(self, layers: Iterable[int]) -> dict[str, tuple[int, ...]]:
        """Canonical names and shapes of this client's adapters on ``layers`` plus its head."""
        names = names_for_layers(self.layer_schema, layers)
        names.update({name: tuple(shape) for name, shape in self.head_schema.items()})
        return names


@dataclass
class ClientUpdate:
    """A validated training reply."""

    client: ClientInfo
    arrays: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]


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
        How many clients the scenario declares. When so many fail to register that ``min_clients`` can no
        longer be reached, the run stops at once with their reasons instead of waiting out the timeout.
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
        callbacks: Sequence[RoundCallback] = (),
    ) -> None:
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
        self.task_labels = dict(task_labels or {})
        self.callbacks = list(callbacks)
        self.clients: dict[str, ClientInfo] = {}
        self.round_layers: dict[str, list[int]] = {}
        self.start_round = 1
        self._log_rows: list[dict] = []
        self._bytes_down: dict[tuple[str, str], int] = {}  # (client id, phase) -> bytes of the last message
        self._sent: dict[str, str] = {}  # message id -> logical client id, for the current exchange
        self._last_replies: list[Message] = []
        self._trained: set[str] = set()  # clients whose train reply (with its evaluation) came back this round
        self._failed_nodes: dict[int, str] = {}  # node id -> why it could not register (asked once)

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
        validated: list[tuple[Message, ClientUpdate]] = []
        for reply, client in self._attributed(replies):
            update = self._accept(reply, client, server_round)
            if update is not None:
                validated.append((reply, update))
        updates = self._screen(server_round, [update for _, update in validated])
        self._trained = {u.client.client_id for u in updates}
        for reply, update in validated:
            if update.client.client_id in self._trained:
                self._log_train(server_round, reply, update)
        if updates:
            started = time.perf_counter()
            self.aggregate(server_round, updates)
            # The server's own work per round, apart from waiting for clients (compared across methods).
            self._log_rows.append(
                {
                    "round": server_round,
                    "phase": "aggregate",
                    "seconds": time.perf_counter() - started,
                    "updates": len(updates),
                }
            )
        weights = [u.num_examples for u in updates]
        metrics: dict[str, float] = {"num-updates": len(updates)}
        for key in ("train-loss", EVAL_PREFIX + "accuracy"):
            mean = weighted_mean([u.metrics[key] for u in updates if key in u.metrics], weights)
            if mean is not None:
                metrics[key] = mean
        return None, MetricRecord(metrics)

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
        for reply, client in self._attributed(replies):
            if reply.has_error():
                self._reject(server_round, client, "evaluate", f"node error: {reply.error.reason}")
                continue
            metrics = {key: float(value) for key, value in reply.content[METRICS_KEY].items()}
            self._log_evaluation(server_round, client, metrics, content_bytes(reply.content))
        rows = [r for r in self._log_rows if r["phase"] == "evaluate" and r["round"] == server_round]
        accuracy = weighted_mean([r["accuracy"] for r in rows], [r["num-examples"] for r in rows])
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

        The signature is Flower's ``Strategy.start``. Where the behaviour differs, it is because clients here
        are heterogeneous:

        - ``initial_arrays`` is not sent as one model to everybody: each algorithm builds a payload per client
          from its own state, starting from the seeded adapter initialisation every process shares. Arrays
          passed here are ignored (a warning says so).
        - ``timeout`` is each round's reply timeout (``round_timeout``, when given).
        - ``train_config`` and ``evaluate_config`` are merged into every client's per-round instructions.
        - ``evaluate_fn(round, arrays)`` receives the global adapters, flattened as ``model/task/name``; the
          package's own server-side evaluation runs as a round callback (``GlobalModelEvaluator``).
        - Before each round the loop learns the profiles of new nodes (``query``) and attributes every reply to
          its logical client, also error replies (through ``reply_to_message_id``). Training replies carry the
          client's own evaluation, so ``evaluate`` messages go only to clients that did not train.
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
            messages = self.configure_train(server_round, ArrayRecord(), train_config or ConfigRecord(), grid)
            self._exchange(grid, messages)
            _, train_metrics = self.aggregate_train(server_round, self._last_replies)
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
            self._log_rows.append({"round": server_round, "phase": "round", "wall_seconds": time.monotonic() - started})
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

    # ------------------------------------------------------------------ helpers
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
        content = RecordDict(
            {
                ADAPTERS_KEY: to_array_record(self._on_wire(tensors), self.wire_dtype),
                CONFIG_KEY: json_config(
                    **dict(config),
                    **instructions,
                    **{"server-round": server_round, "wire-dtype": self.wire_dtype, STATE_SCOPE_KEY: self.state_scope},
                ),
            }
        )
        self._bytes_down[(client.client_id, phase)] = content_bytes(content)
        message_type = MessageType.TRAIN if phase == "train" else MessageType.EVALUATE
        return Message(content=content, dst_node_id=client.node_id, message_type=message_type)

    def _exchange(self, grid: Grid, messages: Iterable[Message]) -> None:
        """Push messages, remember which logical client each went to, and pull the replies."""
        messages = list(messages)
        if not messages:
            self._last_replies = []
            return
        node_to_client = {info.node_id: cid for cid, info in self.clients.items()}
        message_ids = list(grid.push_messages(messages))
        self._sent = {
            mid: node_to_client[msg.metadata.dst_node_id] for mid, msg in zip(message_ids, messages, strict=False)
        }
        self._last_replies = self._pull(grid, message_ids, self.round_timeout)
        for mid in set(self._sent) - {r.metadata.reply_to_message_id for r in self._last_replies}:
            log(WARNING, "client %s did not reply within %.0fs", self._sent[mid], self.round_timeout)

    @staticmethod
    def _pull(grid: Grid, message_ids: list[str], timeout: float) -> list[Message]:
        pending, replies = set(message_ids), []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for reply in grid.pull_messages(list(pending)):
                replies.append(reply)
                pending.discard(reply.metadata.reply_to_message_id)
            if pending:
                time.sleep(0.2)
        return replies

    def _attributed(self, replies: Iterable[Message]) -> list[tuple[Message, ClientInfo]]:
        """Pair each reply with its logical client, in client-id order.

        An error reply for a lost node comes from the SuperLink, not the node: it is mapped back by message id.
        The order makes rows and floating-point sums independent of which reply arrived first.
        """
        attributed = [
            (reply, self.clients[cid])
            for reply in replies
            if (cid := self._sent.get(reply.metadata.reply_to_message_id)) is not None
        ]
        return sorted(attributed, key=lambda pair: pair[1].client_id)

    def _accept(self, reply: Message, client: ClientInfo, server_round: int) -> ClientUpdate | None:
        if reply.has_error():
            self._reject(server_round, client, "train", f"node error: {reply.error.reason}")
            return None
        try:
            arrays = from_array_record(reply.content[ADAPTERS_KEY])
            validate_update(arrays, self._on_wire(self.expected_update(client, server_round)), self.max_update_bytes)
            metrics = {key: float(value) for key, value in reply.content[METRICS_KEY].items()}
            num_examples = _training_set_size(metrics)
        except (UpdateRejected, KeyError, TypeError, ValueError) as error:
            self._reject(server_round, client, "train", str(error))
            return None
        return ClientUpdate(client, arrays, num_examples, metrics)

    def _screen(self, server_round: int, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """Reject the round's norm outliers and clip the rest, as :attr:`robustness` asks (see :class:`Robustness`).

        Norms are compared among updates of the same model (heads: of the same model and task), through the
        server-state names :func:`scoped_name` gives.
        """
        if not self.robustness.screens:
            return updates
        scoped = {u.client.client_id: {scoped_name(u.client, n): v for n, v in u.arrays.items()} for u in updates}
        rejected, kept, factors = self.robustness.screen(scoped)
        for update in updates:
            if update.client.client_id in rejected:
                self._reject(server_round, update.client, "train", rejected[update.client.client_id])
        for client_id, factor in sorted(factors.items()):
            self._log_rows.append({"round": server_round, "phase": "clipped", "client": client_id, "factor": factor})
        return [
            dataclasses.replace(u, arrays=dict(zip(u.arrays, kept[u.client.client_id].values(), strict=True)))
            for u in updates
            if u.client.client_id in kept
        ]

    def combine_layerwise(self, contributions: Iterable[Contribution]) -> dict[str, np.ndarray]:
        """Combine each tensor over the contributions that hold it: the one entry point of every layer-wise
        method, so ``server.aggregation`` (mean, median, trimmed mean) applies to all of them."""
        return self.robustness.combine(contributions)

    def _log_train(self, server_round: int, reply: Message, update: ClientUpdate) -> None:
        """The ``train`` row of an update that is aggregated, and the evaluation it carried."""
        client, metrics = update.client, update.metrics
        train_metrics = {k: v for k, v in metrics.items() if not k.startswith(EVAL_PREFIX)}
        self._log_rows.append(
            {
                "round": server_round,
                "phase": "train",
                "client": client.client_id,
                "layers": self.round_layers.get(client.client_id),
                "bytes_up": content_bytes(reply.content),
                "bytes_down": self._bytes_down.get((client.client_id, "train")),
                "adapter_bytes": array_bytes(update.arrays),
                **train_metrics,
            }
        )
        evaluation = {k[len(EVAL_PREFIX) :]: v for k, v in metrics.items() if k.startswith(EVAL_PREFIX)}
        if evaluation:
            self._log_evaluation(server_round, client, evaluation, bytes_up=0, inside_train=True)

    def _log_evaluation(
        self,
        server_round: int,
        client: ClientInfo,
        metrics: dict[str, float],
        bytes_up: int,
        inside_train: bool = False,
    ) -> None:
        """One ``evaluate`` row: the client's accuracy on its own test split, and what its message cost."""
        self._log_rows.append(
            {
                "round": server_round,
                "phase": "evaluate",
                "client": client.client_id,
                "source": "train-message" if inside_train else "evaluate-message",
                "bytes_up": bytes_up,
                "bytes_down": 0 if inside_train else self._bytes_down.get((client.client_id, "evaluate")),
                **metrics,
            }
        )

    def _reject(self, server_round: int, client: ClientInfo, phase: str, reason: str) -> None:
        log(WARNING, "round %d: rejected %s reply of client %s: %s", server_round, phase, client.client_id, reason)
        self._log_rows.append(
            {"round": server_round, "phase": "rejected", "client": client.client_id, "stage": phase, "reason": reason}
        )

    def _online_clients(self, grid: Grid) -> list[str]:
        """Registered clients whose node is connected; waits (bounded) for ``min_clients`` of them."""
        deadline = time.monotonic() + self.node_wait_timeout
        while True:
            nodes = set(grid.get_node_ids())
            online = [cid for cid, info in self.clients.items() if info.node_id in nodes]
            if len(online) >= self.min_clients:
                return online
            self._stop_if_unreachable()
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"only {len(online)} of the required {self.min_clients} clients connected within "
                    f"{self.node_wait_timeout:.0f}s (server.node_wait_timeout); stopping the run"
                )
            time.sleep(1.0)
            self._register_new_nodes(grid)

    def _stop_if_unreachable(self) -> None:
        """End the run at once when failed registrations leave too few clients to ever reach ``min_clients``."""
        if self.expected_clients is None or not self._failed_nodes:
            return
        if self.expected_clients - len(self._failed_nodes) < self.min_clients:
            reasons = "; ".join(self._failed_nodes.values())
            raise RuntimeError(
                f"{reasons} ({len(self._failed_nodes)} of {self.expected_clients} clients failed to register, "
                f"{self.min_clients} are required; server.min_clients)"
            )

    def _register_new_nodes(self, grid: Grid) -> None:
        """Ask every connected node we do not know yet for its profile (a node that rejoins has a new id).

        A node that answers with an error is asked no more: its reason is logged once and kept, and the run
        stops at once if the remaining clients cannot reach ``min_clients``.
        """
        known = {info.node_id for info in self.clients.values()} | set(self._failed_nodes)
        new_nodes = [node for node in grid.get_node_ids() if node not in known]
        if not new_nodes:
            return
        messages = [
            Message(content=RecordDict({CONFIG_KEY: ConfigRecord()}), dst_node_id=node, message_type=MessageType.QUERY)
            for node in new_nodes
        ]
        replies = grid.send_and_receive(messages, timeout=self.round_timeout)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self._registration_failed(node, reply.error.reason or "no reason given")
                continue
            info = ClientInfo.from_json(str(reply.content[CONFIG_KEY][PROFILE_KEY]), node)
            reason = self.refuse(info)
            if reason is not None:
                self._registration_failed(node, f"client {info.client_id} refused: {reason}")
                continue
            self.clients[info.client_id] = info
            log(INFO, "client %s registered on node %s (%s)", info.client_id, info.node_id, _profile_line(info))
        self._stop_if_unreachable()

    def refuse(self, info: ClientInfo) -> str | None:
        """Why a registering client cannot take part (None: it can). Subclasses add their own conditions.

        A node whose own training labels are not all labels of its task is refused (device-local data).
        """
        if info.task not in self.task_labels:
            return None
        return label_mismatch(self.task_labels[info.task], info.extra.get("labels"))

    def _registration_failed(self, node: int, reason: str) -> None:
        self._failed_nodes[node] = reason
        log(ERROR, "node %s failed to register: %s", node, reason)
        row = {"round": self.start_round, "phase": "registration-failed", "node": node, "reason": reason}
        self._log_rows.append(row)


def scoped_name(client: ClientInfo, name: str) -> str:
    """Server-state key of a canonical tensor name: layers are shared per model, heads per model and task."""
    return f"{client.model}/{client.task}/{name}" if is_head(name) else f"{client.model}/{name}"


def _training_set_size(metrics: dict[str, float]) -> int:
    """The FedAvg weight n_k: a reply must state its client's training-set size; none is not weight zero."""
    if "num-examples" not in metrics:
        raise UpdateRejected("reply has no num-examples (the client's training-set size, its FedAvg weight)")
    count = metrics["num-examples"]
    if not count >= 1:
        raise UpdateRejected(f"num-examples must be >= 1, got {count}")
    return int(count)


def _profile_line(info: ClientInfo) -> str:
    layers = info.fixed_layers if info.fixed_layers is not None else f"{info.budget} of {info.num_layers}"
    return f"model={info.model} task={info.task} layers={layers}"
