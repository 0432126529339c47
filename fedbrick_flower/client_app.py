"""Thin Flower ClientApp: find this node's profile, then hand each message to the algorithm's client half.

The client half is built per message with a state handle on ``context.state`` (and the node's ``state-dir``
when it has one), so nothing an algorithm keeps depends on the process living on between messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .clients.base import ClientAlgorithm
from .clients.profile import ClientSession, session_for
from .clients.state import STATE_DIR_KEY, ClientState
from .models.placement import match_threads_to_cpu_share
from .mods import fault_injection_mod, wire_audit_mod
from .records import (
    ADAPTERS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PROFILE_KEY,
    STATE_SCOPE_KEY,
    decode_config,
    from_array_record,
    to_array_record,
)
from .registry import client_class

# Error code of a query reply from a client that could not set itself up (Flower's own codes are below 100).
REGISTRATION_FAILED = 400

# The audit sits outermost so that it records the reply as it leaves, after any injected fault.
app = ClientApp(mods=[wire_audit_mod, fault_injection_mod])


def _session(context: Context) -> ClientSession:
    match_threads_to_cpu_share()  # once per process: a simulated client computes on its CPU share only
    return session_for(context.run_config, context.node_config)


def _algorithm(session: ClientSession, context: Context, config: dict[str, Any]) -> ClientAlgorithm:
    """The algorithm's client half for this message, holding this node's state handle."""
    folder = context.node_config.get(STATE_DIR_KEY)
    state = ClientState(
        context.state,
        Path(str(folder)) if folder else None,
        client_id=session.profile.id,
        scope=str(config.get(STATE_SCOPE_KEY, "")),
    )
    return client_class(session.scenario.algorithm)(session, state)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this client's profile and adapter schema; nothing but shapes and counts leaves the device.

    A client that cannot set itself up (a missing data file, an unknown task...) answers with one error that
    names it and the cause, so the server reports the reason once instead of a remote traceback.
    """
    try:
        session = _session(context)
        profile = json.dumps(session.describe(client_class(session.scenario.algorithm).adapter_kinds))
    except Exception as error:  # noqa: BLE001 - every cause must reach the server as a readable reason
        who = _client_name(context)
        return Message(Error(REGISTRATION_FAILED, f"client {who} failed to register: {error}"), reply_to=msg)
    return Message(RecordDict({CONFIG_KEY: ConfigRecord({PROFILE_KEY: profile})}), reply_to=msg)


def _client_name(context: Context) -> str:
    """The logical client id, or what the node config says when the profile itself is what failed."""
    try:
        return _session(context).profile.id
    except Exception:  # noqa: BLE001 - fall back to the node config
        node = context.node_config
        key = next((k for k in ("client-id", "profile", "partition-id") if k in node), None)
        return f"{node[key]} ({key})" if key else f"on node {context.node_id}"


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of the assigned adapters, then evaluation; the reply holds adapter tensors and metrics."""
    config = decode_config(msg.content[CONFIG_KEY])
    algorithm = _algorithm(_session(context), context, config)
    update, metrics = algorithm.train(from_array_record(msg.content[ADAPTERS_KEY]), config)
    algorithm.state.save()
    content = RecordDict(
        {ADAPTERS_KEY: to_array_record(update, str(config["wire-dtype"])), METRICS_KEY: MetricRecord(metrics)}
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the network this device runs on its own test split (evaluation-only rounds)."""
    config = decode_config(msg.content[CONFIG_KEY])
    metrics = _algorithm(_session(context), context, config).evaluate(
        from_array_record(msg.content[ADAPTERS_KEY]), config
    )
    return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)
