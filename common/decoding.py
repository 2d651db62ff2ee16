"""Names and the greedy choice a generation step shares between the nodes and the orchestrator."""

from __future__ import annotations

import numpy as np

LOGITS = "logits"  # the decoder's output: (batch, new tokens, vocabulary)
NEXT_TOKEN = "next_token"  # what the source device gives back instead: the greedy choice, (batch, 1) int64
CACHE_AXIS = 2  # the token axis of a cache tensor: (batch, kv heads, tokens, head dim)


def greedy_token(logits: np.ndarray) -> np.ndarray:
    """The greedy choice at the last position of each sequence: (batch, 1) int64."""
    return logits[:, -1, :].argmax(axis=-1).astype(np.int64)[:, None]
