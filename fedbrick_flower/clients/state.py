"""The client half's state handle: what an algorithm keeps on the device between messages.

In deployment every Flower message starts a fresh ClientApp process, so instance attributes, module globals
and caches silently reset between rounds (while in Ray simulation they would appear to persist). State that
must last lives here instead:

- in Flower's ``context.state`` (a ``RecordDict`` the SuperNode keeps in memory for the run, in simulation and
  deployment alike), and
- optionally in a node-local folder (``state-dir`` in the node config, ``fedbrick-flower client --state-dir``),
  written atomically after every message, so a device that restarts keeps its personal adapters, optimizer
  state and running statistics.

State never travels: nothing here is put into a reply (the wire audit checks the actual messages).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

STATE_DIR_KEY = "state-dir"
_JSON_RECORD = "fedbrick-json"
_ARRAYS_PREFIX = "fedbrick-arrays."
_FILE_JSON_ENTRY = "__json__"


class ClientState:
    """Named arrays and JSON values of one client, kept across messages.

    Parameters
    ----------
    records : RecordDict
        Flower's ``context.state`` of this node (kept by the SuperNode between messages of a run).
    folder : Path, optional
        Node-local folder for durable state; None keeps the state in the SuperNode's memory only.
    client_id : str (default: "client")
        The logical client, naming the state file in ``folder``.
    scope : str (default: "")
        The run the state belongs to (sent by the server): a file written for another run is ignored.
    """

    def __init__(
        self, records: RecordDict, folder: Path | None = None, client_id: str = "client", scope: str = ""
    ) -> None:
        self.records = records
        self.path = None if folder is None else Path(folder) / f"{client_id}.state.npz"
        self.scope = scope
        if self.path is not None and self._is_empty() and self.path.is_file():
            self._read_file()

    # ------------------------------------------------------------------ arrays
    def arrays(self, key: str) -> dict[str, np.ndarray]:
        """The arrays stored under ``key`` (empty if none)."""
        record = self.records.get(_ARRAYS_PREFIX + key)
        if record is None:
            return {}
        return {name: np.array(array.numpy(), copy=True) for name, array in record.items()}

    def set_arrays(self, key: str, arrays: Mapping[str, Any]) -> None:
        """Replace the arrays under ``key`` (torch tensors are copied to CPU NumPy)."""
        self.records[_ARRAYS_PREFIX + key] = ArrayRecord(
            {name: Array(np.ascontiguousarray(_to_numpy(value))) for name, value in arrays.items()}
        )

    # ------------------------------------------------------------------ JSON values
    def get(self, key: str, default: Any = None) -> Any:
        """A JSON value stored with :meth:`set`, or ``default``."""
        return self._json().get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store a JSON-serializable value under ``key``."""
        values = self._json()
        values[key] = value
        self.records[_JSON_RECORD] = ConfigRecord({"values": json.dumps(values)})

    def keys(self) -> list[str]:
        """Every key held: JSON values and array groups."""
        arrays = [k[len(_ARRAYS_PREFIX) :] for k in self.records if k.startswith(_ARRAYS_PREFIX)]
        return sorted([*self._json(), *arrays])

    # ------------------------------------------------------------------ durability
    def save(self) -> None:
        """Write the state to the node-local folder, atomically (a crash leaves the previous file whole)."""
        if self.path is None:
            return
        entries: dict[str, np.ndarray] = {}
        for key in self.records:
            if key.startswith(_ARRAYS_PREFIX):
                group = key[len(_ARRAYS_PREFIX) :]
                entries.update({f"{group}/{name}": value for name, value in self.arrays(group).items()})
        payload = {"scope": self.scope, "values": self._json()}
        entries[_FILE_JSON_ENTRY] = np.frombuffer(json.dumps(payload).encode(), dtype=np.uint8)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **entries)
        handle, staging = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(handle, "wb") as sink:
            sink.write(buffer.getvalue())
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(staging, self.path)

    def _read_file(self) -> None:
        assert self.path is not None
        with np.load(self.path, allow_pickle=False) as stored:
            payload = json.loads(bytes(stored[_FILE_JSON_ENTRY]).decode())
            if payload.get("scope", "") != self.scope:
                return  # another run's state: start clean rather than resume someone else's adapters
            groups: dict[str, dict[str, np.ndarray]] = {}
            for entry in stored.files:
                if entry != _FILE_JSON_ENTRY:
                    group, name = entry.split("/", 1)
                    groups.setdefault(group, {})[name] = stored[entry]
        for group, arrays in groups.items():
            self.set_arrays(group, arrays)
        self.records[_JSON_RECORD] = ConfigRecord({"values": json.dumps(payload["values"])})

    def _json(self) -> dict[str, Any]:
        record = self.records.get(_JSON_RECORD)
        return {} if record is None else json.loads(str(record["values"]))

    def _is_empty(self) -> bool:
        return not any(k == _JSON_RECORD or k.startswith(_ARRAYS_PREFIX) for k in self.records)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    return value.detach().float().cpu().numpy()
