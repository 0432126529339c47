"""Flower ClientApp mods: secure aggregation, local differential privacy, fault injection and a wire audit, all
off unless a run asks for them.

- ``secure_aggregation_mod``: on the training messages of a round under ``privacy.secure_aggregation`` (they
  carry Flower's ``secaggplus`` config record), Flower's ``secaggplus_mod`` runs the SecAgg+ stages; in the
  stage that trains, the update is padded to the round's layout (:mod:`fedbrick_flower.secure_layout`) and only
  its masked vector leaves the device, never the tensors. Any other message passes through.
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
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from .clients.profile import session_for
from .records import ADAPTERS_KEY, METRICS_KEY, from_array_record
from .runconfig import AUDIT_KEY
from .scenario import FaultSettings
from .secure_layout import LAYOUT_KEY, pack
from .strategies.dp import noised_update

AUDIT_FILE = "wire-audit.jsonl"


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run Flower's ``secaggplus_mod`` on a SecAgg+ training message; pass any other message through."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda inner, ctxt: masking_input(inner, call_next(inner, ctxt)))


def masking_input(msg: Message, reply: Message) -> Message:
    """The training ``reply`` as ``secaggplus_mod`` reads it: the update, packed to the message's layout, as the
    legacy ``FitRes`` arrays with the training-set size as its weight; the tensors themselves are dropped.

    Raises
    ------
    RuntimeError
        If training failed (the node then answers with an error and drops out of the round).
    """
    if reply.has_error():
        raise RuntimeError(f"training failed: {reply.error.reason}")
    tensors = from_array_record(reply.content.array_records.pop(ADAPTERS_KEY))
    vectors = pack(tensors, msg.content.config_records[LAYOUT_KEY])
    weight = int(reply.content[METRICS_KEY]["num-examples"])
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(vectors), weight, {})
    for key, record in fitres_to_recorddict(fitres, keep_input=True).items():
        reply.content[key] = record
    return reply


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
