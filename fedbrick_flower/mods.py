"""Flower ClientApp mods: fault injection and a wire audit, both off unless a run asks for them.

- ``fault_injection_mod``: a scenario's ``faults.nan_update`` lists clients whose training replies get a NaN
  written into their first tensor after training, as a diverged client would send it. The server must reject
  such a reply, log it and finish the round with the others.
- ``wire_audit_mod``: with the run-config key ``audit-wire=true``, every message a client receives and every
  reply it sends is described (record names, array names, shapes, dtypes, metric and config keys; never the
  values) in ``<out-dir>/wire-audit.jsonl``, so a user can check what crosses the link.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from .clients.profile import session_for
from .records import ADAPTERS_KEY
from .runconfig import AUDIT_KEY

AUDIT_FILE = "wire-audit.jsonl"


def fault_injection_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Corrupt the training reply of clients listed in ``faults.nan_update``."""
    reply = call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    session = session_for(context.run_config, context.node_config)
    if session.profile.id in session.scenario.faults.nan_update:
        record = reply.content[ADAPTERS_KEY]
        name = next(iter(record))
        values = record[name].numpy().copy()
        values.flat[0] = np.nan
        record[name] = Array(values)
    return reply


def wire_audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Describe the incoming message and the outgoing reply when the run asks for an audit."""
    reply = call_next(msg, context)
    out_dir = str(context.run_config.get("out-dir", ""))
    if not context.run_config.get(AUDIT_KEY) or not out_dir:
        return reply
    client_id = session_for(context.run_config, context.node_config).profile.id
    rows = [
        {"direction": "down", "client": client_id, "type": msg.metadata.message_type, **describe(msg)},
        {"direction": "up", "client": client_id, "type": msg.metadata.message_type, **describe(reply)},
    ]
    _append(Path(out_dir) / AUDIT_FILE, rows)
    return reply


def describe(message: Message) -> dict[str, Any]:
    """Names, shapes and dtypes of everything in a message's content (no values)."""
    if message.has_error():
        return {"error": message.error.reason}
    records: dict[str, Any] = {}
    for key, record in message.content.items():
        if isinstance(record, ArrayRecord):
            records[key] = {"arrays": {n: {"shape": list(a.shape), "dtype": a.dtype} for n, a in record.items()}}
        elif isinstance(record, MetricRecord):
            records[key] = {"metrics": sorted(record)}
        elif isinstance(record, ConfigRecord):
            records[key] = {
                "config": {k: type(v).__name__ for k, v in record.items()},
                "longest_string": max((len(v) for v in record.values() if isinstance(v, str)), default=0),
            }
    return {"records": records}


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    # Several simulated clients share the file: an exclusive lock keeps each write whole.
    with path.open("a") as sink:
        fcntl.flock(sink, fcntl.LOCK_EX)
        sink.write("".join(json.dumps(row) + "\n" for row in rows))
        fcntl.flock(sink, fcntl.LOCK_UN)
