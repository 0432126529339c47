"""Thin Flower ClientApp: find this node's profile, then hand each message to the algorithm's client half.

The client half is built per message with a state handle on ``context.state`` (and the node's ``state-dir``
when it has one), so nothing an algorithm keeps depends on the process living on between messages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .clients.base import ClientAlgorithm
from .clients.profile import ClientSession, session_for
from .clients.state import STATE_DIR_KEY, ClientState
from .models.placement import match_threads_to_cpu_share
from .mods import fault_injection_mod, local_dp_mod, secure_aggregation_mod, wire_audit_mod
from .records import (
    ADAPTERS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PROFILE_KEY,
    REASON_KEY,
    STATE_SCOPE_KEY,
    decode_config,
    from_array_record,
    to_array_record,
)
from .registry import client_class

# Error code of a query reply from a client that could not set itself up (Flower's own codes are below 100).
REGISTRATION_FAILED = 400

# The audit sits outermost so that it records the reply as it leaves, after any injected fault and masking. Inside
# it, local DP noises the trained update first, a faulty client then corrupts it (an attacker does not run the
# honest clients' noise), and secure aggregation masks what results.
app = ClientApp(mods=[wire_audit_mod, secure_aggregation_mod, fault_injection_mod, local_dp_mod])


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
        profile = session.describe(client_class(session.scenario.algorithm).adapter_kinds).to_json()
    except Exception as error:  # noqa: BLE001 - every cause must reach the server as a readable reason
        who = _client_name(context)
        return Message(Error(REGISTRATION_FAILED, f"client {who} failed to register: {error}"), reply_to=msg)
    return Message(RecordDict({CONFIG_KEY: ConfigRecord({PROFILE_KEY: profile})}), reply_to=msg)


@app.query("refused")
def refused(msg: Message, context: Context) -> Message:
    """The server turned this device down: say why where the device's owner looks (its console)."""
    reason = msg.content[CONFIG_KEY][REASON_KEY]
    print(f"fedbrick-flower: the server refused this device: {reason}", file=sys.stderr, flush=True)
    return Message(RecordDict(), reply_to=msg)


def _client_name(context: Context) -> str:
    """The logical client id, or what the node config says when the profile itself is what failed.

    A profile file is named by the ``id`` it declares, never by its path: the path is the device's own business.
    """
    try:
        return _session(context).profile.id
    except Exception:  # noqa: BLE001 - fall back to the node config
        node = context.node_config
        if "client-id" in node:
            return str(node["client-id"])
        if "profile" in node:
            return _declared_id(Path(str(node["profile"])))
        if "partition-id" in node:
            return f"{node['partition-id']} (partition-id)"
        return f"on node {context.node_id}"


def _declared_id(path: Path) -> str:
    """The ``id`` a profile file declares, read without checking the rest (which is what failed)."""
    try:
        declared = yaml.safe_load(path.read_text()).get("id")
    except Exception:  # noqa: BLE001 - an unreadable profile is named as such, still without its path
        declared = None
    return str(declared) if declared else "with an unreadable profile (no id)"


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
