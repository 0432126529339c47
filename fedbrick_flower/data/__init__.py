"""Tasks (packaged datasets, the user's files, Hugging Face datasets), federated splits and batching.

``datasets`` and ``pyarrow`` are imported only where a partitioner, a Parquet file or a Hugging Face dataset is
used.
"""

from fedbrick_flower.data.batches import (
    EncodedExamples,
    encode_examples,
    ensure_pad_token,
    iterate_batches,
    select,
)
from fedbrick_flower.data.checks import (
    OVERLONG_POLICIES,
    LengthFit,
    fit_lengths,
    label_mismatch,
    report_overlong,
)
from fedbrick_flower.data.loading import (
    local_dataset,
    local_labels,
    task_dataset,
    task_labels,
)
from fedbrick_flower.data.partition import (
    ClientSplit,
    FederatedSplit,
    split_federated,
    split_local,
    stratified_holdout,
)
from fedbrick_flower.data.partitioners import (
    PARTITIONERS,
    PARTITIONS,
    check_partition,
    partition_pool,
)
from fedbrick_flower.data.sources import (
    TASK_KINDS,
    Columns,
    DataError,
    RawExamples,
    label_set,
    read_file,
    read_hf_dataset,
    to_dataset,
)
from fedbrick_flower.data.tasks import (
    SENTIMENT_LABELS,
    TASK_NAMES,
    TextDataset,
    load_task,
    sentiment_label,
)

__all__ = [
    "ClientSplit",
    "Columns",
    "DataError",
    "EncodedExamples",
    "FederatedSplit",
    "LengthFit",
    "OVERLONG_POLICIES",
    "PARTITIONERS",
    "PARTITIONS",
    "RawExamples",
    "SENTIMENT_LABELS",
    "TASK_KINDS",
    "TASK_NAMES",
    "TextDataset",
    "check_partition",
    "encode_examples",
    "ensure_pad_token",
    "fit_lengths",
    "iterate_batches",
    "label_mismatch",
    "label_set",
    "load_task",
    "local_dataset",
    "local_labels",
    "partition_pool",
    "read_file",
    "read_hf_dataset",
    "report_overlong",
    "select",
    "sentiment_label",
    "split_federated",
    "split_local",
    "stratified_holdout",
    "task_dataset",
    "task_labels",
    "to_dataset",
]
