"""Pure checks on data that both halves share: does a node's label set fit the task, which examples fit max_length.

No torch, no file access: the server calls :func:`label_mismatch` when a node registers, the encoders call
:func:`fit_lengths` on token counts they computed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

OVERLONG_POLICIES: tuple[str, ...] = ("truncate", "drop")


def label_mismatch(task_labels: Sequence[str] | None, node_labels: Sequence[str] | None) -> str | None:
    """Why a node's labels do not fit its task, or None when they do.

    Parameters
    ----------
    task_labels : sequence of str or None
        The task's label set (declared, or found in the task's data); None for an unlabelled (generative) task.
    node_labels : sequence of str or None
        The distinct labels of the node's own training data, as it reported them at registration; None when
        the node reported no label set.

    Returns
    -------
    str or None
        A reason to refuse the node, naming the offending labels; None when every node label is a task label.
    """
    if task_labels is None:
        return None
    if node_labels is None:
        return f"the task has labels {list(task_labels)} and the node reported none"
    if not node_labels:
        return "the node has no labelled training examples"
    unknown = sorted(set(node_labels) - set(task_labels))
    if unknown:
        return f"the node's labels {unknown} are not among the task's labels {list(task_labels)}"
    return None


@dataclass(frozen=True)
class LengthFit:
    """What a ``max_length`` policy does to a list of examples.

    Attributes
    ----------
    keep : tuple of int
        Positions of the examples to encode, in order.
    truncated : tuple of int
        Positions (among ``keep``) of examples longer than ``max_length``, to be cut to it.
    dropped : tuple of int
        Positions of examples longer than ``max_length`` that are left out.
    """

    keep: tuple[int, ...]
    truncated: tuple[int, ...]
    dropped: tuple[int, ...]


def fit_lengths(lengths: Sequence[int], max_length: int, policy: str) -> LengthFit:
    """Apply the ``data.overlong`` policy to examples of ``lengths`` tokens.

    Parameters
    ----------
    lengths : sequence of int
        Token count of each example, untruncated (prompt and response together for a generative example).
    max_length : int
        The longest sequence the model is given.
    policy : {"truncate", "drop"}
        Keep overlong examples cut to ``max_length``, or leave them out.

    Returns
    -------
    LengthFit
        Kept, truncated and dropped positions.
    """
    if policy not in OVERLONG_POLICIES:
        raise ValueError(f"data.overlong: {policy!r} is not one of {list(OVERLONG_POLICIES)}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    overlong = tuple(index for index, length in enumerate(lengths) if length > max_length)
    if policy == "drop":
        dropped = set(overlong)
        return LengthFit(tuple(i for i in range(len(lengths)) if i not in dropped), (), overlong)
    return LengthFit(tuple(range(len(lengths))), overlong, ())


def report_overlong(fit: LengthFit, max_length: int, what: str, origins: Sequence[str] | None = None) -> None:
    """Log how many examples of ``what`` (e.g. ``"task reviews, client c1, train"``) were cut or dropped.

    The first affected example is named by its origin (file and row) when ``origins`` is given.
    """
    for verb, positions in (("truncated to", fit.truncated), ("dropped, longer than", fit.dropped)):
        if positions:
            first = f"; first: {origins[positions[0]]}" if origins is not None else ""
            logger.warning("%s: %d example(s) %s max_length=%d tokens%s", what, len(positions), verb, max_length, first)
