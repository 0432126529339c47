"""Flower ClientApp mods: local differential privacy, fault injection and a wire audit, off unless a run asks.

- ``local_dp_mod``: under ``privacy.mode: local`` the training reply's tensors are clipped (their delta from what
  the client started from, to ``privacy.clip_norm``) and noised (std ``noise_multiplier * clip_norm``) on the
  device, so the server never sees a noiseless update (:func:`fedbrick_flower.strategies.dp.noised_update`).

- ``fault_injection_mod``: a scenario's ``faults`` lists clients whose training replies are corrupted after
  training: ``nan_update`` writes a NaN into the first tensor (a diverged client), ``scaled_update`` multiplies
  every tensor by ``scale_factor`` (default 1000) and ``sign_flip`` negates every tensor (finite but poisoned
  updates). The update is what the client sends, its trained adapter tensors: flipping both LoRA factors
  leaves their product unchanged, so a sign flip harms mainly through the head. The server must reject a NaN
  reply, and with ``server.outlier_norm_multiple`` a scaled one, log it and finish the round with the others.
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
from .records import ADAPTERS_KEY, from_array_record
from .runconfig import AUDIT_KEY
from .scenario import FaultSettings
from .strategies.dp import noised_update

AUDIT_FILE = "wire-audit.jsonl"


def local_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip and noise this client's training reply on the device under the scenario's ``privacy.mode: local``."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    session = session_for(context.run_config, context.node_config)
    privacy, profile = session.scenario.privacy, session.profile
    if privacy.mode != "local":
        return call_next(msg, context)
    received = from_array_record(msg.content[ADAPTERS_KEY])
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    from .assembly import seeded_start  # torch is loaded by training already

    record = reply.content[ADAPTERS_KEY]
    trained = {name: record[name].numpy() for name in record}
    # The seeded start of the tensors it was not sent; an algorithm's own tensors of another layout count from 0.
    seeded = seeded_start(session.scenario, profile.model, profile.task, profile.rank)
    start = {n: v for n, v in seeded.items() if n in trained and v.shape == trained[n].shape} | received
    noised = noised_update(trained, start, privacy.noise_multiplier, privacy.clip_norm)
    for name, values in noised.arrays.items():
        record[name] = Array(values)
    return reply


def fault_injection_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Corrupt the training reply of the clients listed under the scenario's ``faults``."""
    reply = call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    session = session_for(context.run_config, context.node_config)
    record = reply.content[ADAPTERS_KEY]
    tensors = {name: record[name].numpy() for name in record}
    faulty = apply_faults(tensors, session.scenario.faults, session.profile.id)
    for name, values in faulty.items():
        if values is not tensors[name]:
            record[name] = Array(values)
    return reply


def apply_faults(tensors: dict[str, np.ndarray], faults: FaultSettings, client_id: str) -> dict[str, np.ndarray]:
    """The tensors ``client_id`` sends under ``faults`` (new arrays where a fault applies, the inputs elsewhere)."""
    result = dict(tensors)
    if client_id in faults.scaled_update:
        result = {name: (v * faults.scale_factor).astype(v.dtype) for name, v in result.items()}
    if client_id in faults.sign_flip:
        result = {name: -v for name, v in result.items()}
    if client_id in faults.nan_update and result:
        name = next(iter(result))
        values = result[name].copy()
        values.flat[0] = np.nan
        result[name] = values
    return result


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
