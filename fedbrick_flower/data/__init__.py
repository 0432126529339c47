"""Offline text-classification tasks, federated splits and batching."""

from fedbrick_flower.data.batches import (
    EncodedExamples,
    encode_examples,
    ensure_pad_token,
    iterate_batches,
    select,
)
from fedbrick_flower.data.partition import (
    PARTITIONS,
    ClientSplit,
    FederatedSplit,
    dirichlet_partition,
    iid_partition,
    split_federated,
    stratified_holdout,
)
from fedbrick_flower.data.tasks import (
    SENTIMENT_LABELS,
    TASK_NAMES,
    TextDataset,
    load_task,
    sentiment_label,
)

__all__ = [
    "PARTITIONS",
    "SENTIMENT_LABELS",
    "TASK_NAMES",
    "ClientSplit",
    "EncodedExamples",
    "FederatedSplit",
    "TextDataset",
    "dirichlet_partition",
    "encode_examples",
    "ensure_pad_token",
    "iid_partition",
    "iterate_batches",
    "load_task",
    "select",
    "sentiment_label",
    "split_federated",
    "stratified_holdout",
]
