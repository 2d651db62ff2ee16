"""The caches a node's stages keep for the sequences being generated.

A decoder stage reads its layers' cache inputs and writes the outputs that feed them at the next
step of the same sequence. The node keeps those outputs, per stage and sequence, and hands them to
the stage as its inputs when that sequence's next step comes: they never travel. A prefill (step 0)
starts from empty caches; a sequence's last step, a failed step or a new plan frees what it kept."""

from __future__ import annotations

import threading

import numpy as np

from common.decoding import CACHE_AXIS


def empty_cache(declared: list[int | str | None], batch: int, dtype: np.dtype) -> np.ndarray:
    """A zero-token cache for a stage input of the declared shape (symbolic dims: batch first, tokens 0)."""
    shape = [
        batch if k == 0 else 0 if k == CACHE_AXIS else (d if isinstance(d, int) else 1) for k, d in enumerate(declared)
    ]
    return np.zeros(shape, dtype)


class SequenceCaches:
    """Cache arrays by (stage, sequence), with the bytes held now and at most (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self.nbytes = 0
        self.peak_nbytes = 0

    def take(self, stage: int, sequence: int) -> dict[str, np.ndarray] | None:
        """What the stage kept of the sequence's last step (still held until `keep` or `drop`), or None."""
        with self._lock:
            return self._kept.get((stage, sequence))

    def keep(self, stage: int, sequence: int, arrays: dict[str, np.ndarray]) -> None:
        """The cache after this step, in place of the one before."""
        size = sum(a.nbytes for a in arrays.values())
        with self._lock:
            old = self._kept.get((stage, sequence))
            self.nbytes += size - (sum(a.nbytes for a in old.values()) if old else 0)
            self._kept[stage, sequence] = arrays
            self.peak_nbytes = max(self.peak_nbytes, self.nbytes)

    def drop(self, stage: int, sequence: int) -> None:
        with self._lock:
            old = self._kept.pop((stage, sequence), None)
            if old:
                self.nbytes -= sum(a.nbytes for a in old.values())

    def clear(self) -> None:
        """Every sequence's cache gone (a new plan: its sequences start again with a prefill)."""
        with self._lock:
            self._kept.clear()
            self.nbytes = 0

    @property
    def sequences(self) -> int:
        with self._lock:
            return len({seq for _, seq in self._kept})
