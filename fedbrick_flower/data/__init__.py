"""Tasks (packaged datasets of both kinds, the user's files, Hugging Face datasets), federated splits and batching.

``datasets`` and ``pyarrow`` are imported only where a partitioner, a Parquet file or a Hugging Face dataset is
used.

Names are loaded from their submodule on first use (PEP 562), so reading a scenario or a device profile
that only needs the light modules (sources, checks, partitioner names) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "EncodedExamples": "batches",
    "encode_examples": "batches",
    "ensure_pad_token": "batches",
    "iterate_batches": "batches",
    "select": "batches",
    "OVERLONG_POLICIES": "checks",
    "LengthFit": "checks",
    "fit_lengths": "checks",
    "label_mismatch": "checks",
    "IGNORE_INDEX": "generative",
    "encode_generative": "generative",
    "normalize_answer": "generative",
    "DATASET_NAMES": "instructions",
    "GENERATIVE_TASK_NAMES": "instructions",
    "load_packaged": "instructions",
    "packaged_kind": "instructions",
    "report_overlong": "checks",
    "local_dataset": "loading",
    "local_labels": "loading",
    "task_dataset": "loading",
    "task_files": "loading",
    "task_labels": "loading",
    "ClientSplit": "partition",
    "FederatedSplit": "partition",
    "split_federated": "partition",
    "split_local": "partition",
    "stratified_holdout": "partition",
    "PARTITIONERS": "partitioners",
    "PARTITIONS": "partitioners",
    "check_partition": "partitioners",
    "partition_pool": "partitioners",
    "TASK_KINDS": "sources",
    "Columns": "sources",
    "DataError": "sources",
    "FileStamp": "sources",
    "RawExamples": "sources",
    "label_set": "sources",
    "read_file": "sources",
    "read_hf_dataset": "sources",
    "to_dataset": "sources",
    "SENTIMENT_LABELS": "tasks",
    "TASK_NAMES": "tasks",
    "TextDataset": "tasks",
    "load_task": "tasks",
    "sentiment_label": "tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import ``name`` from its submodule the first time it is asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
