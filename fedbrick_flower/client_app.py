"""Thin Flower ClientApp: find this node's profile, then hand each message to the algorithm's client half."""

from __future__ import annotations

import functools
import json

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .clients.base import ClientAlgorithm
from .clients.profile import ClientSession, session_for
from .mods import fault_injection_mod, wire_audit_mod
from .records import ADAPTERS_KEY, CONFIG_KEY, METRICS_KEY, decode_config, from_array_record, to_array_record
from .registry import client_class
from .strategies.base import PROFILE_KEY

# The audit sits outermost so that it records the reply as it leaves, after any injected fault.
app = ClientApp(mods=[wire_audit_mod, fault_injection_mod])


def _session(context: Context) -> ClientSession:
    return session_for(context.run_config, context.node_config)


@functools.lru_cache(maxsize=32)
def _algorithm(session: ClientSession) -> ClientAlgorithm:
    return client_class(session.scenario.algorithm)(session)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this client's profile and adapter schema; nothing but shapes and counts leaves the device."""
    profile = json.dumps(_session(context).describe())
    return Message(RecordDict({CONFIG_KEY: ConfigRecord({PROFILE_KEY: profile})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of the assigned adapters; the reply holds adapter tensors and metrics only."""
    config = decode_config(msg.content[CONFIG_KEY])
    update, metrics = _algorithm(_session(context)).train(from_array_record(msg.content[ADAPTERS_KEY]), config)
    content = RecordDict(
        {ADAPTERS_KEY: to_array_record(update, str(config["wire-dtype"])), METRICS_KEY: MetricRecord(metrics)}
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the network this device runs on its own test split."""
    config = decode_config(msg.content[CONFIG_KEY])
    metrics = _algorithm(_session(context)).evaluate(from_array_record(msg.content[ADAPTERS_KEY]), config)
    return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)
