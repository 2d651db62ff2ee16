"""Decode ahead of the pipeline in a worker pool, in order, with bounded memory.

PIL's JPEG decoder and resampler release the GIL, so threads scale across cores without
copying tensors between processes; processes are available for datasets whose loading
holds the GIL. At most `depth` batches are decoded or in flight at any time.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np

from orchestrator.datasets.base import Dataset

_WORKER_DS: Dataset | None = None


def _init_worker(ds: Dataset) -> None:
    global _WORKER_DS
    _WORKER_DS = ds


def _load_in_worker(i: int) -> tuple[np.ndarray, int]:
    assert _WORKER_DS is not None
    return _WORKER_DS.load(i), _WORKER_DS.label(i)


def _load(ds: Dataset, i: int) -> tuple[np.ndarray, int]:
    return ds.load(i), ds.label(i)


class Prefetcher:
    """Iterate (images [B,3,H,W] float32, labels [B] int64) over `indices` in order.

    workers: pool size (0 = load inline, no pool). depth: batches kept ready or in flight.
    mode: "thread" (default) or "process" (spawned workers, each with its own copy of the
    dataset and file descriptors). The last batch may be short. Use as a context manager or
    call close(); closing cancels queued work and joins the pool.
    """

    def __init__(
        self,
        dataset: Dataset,
        indices: Iterable[int] | None = None,
        batch: int = 1,
        workers: int = 2,
        depth: int = 4,
        mode: str = "thread",
    ) -> None:
        if batch <= 0:
            raise ValueError(f"batch: must be positive, got {batch}")
        if depth <= 0:
            raise ValueError(f"depth: must be positive, got {depth}")
        if workers < 0:
            raise ValueError(f"workers: must be >= 0, got {workers}")
        if mode not in ("thread", "process"):
            raise ValueError(f"mode: {mode!r} is not thread or process")
        self.dataset = dataset
        self.indices: Sequence[int] = list(range(len(dataset)) if indices is None else indices)
        self.batch = batch
        self.depth = depth
        self.workers = workers
        self.mode = mode
        self._pool: Executor | None = None
        self._pending: deque[list[Future[tuple[np.ndarray, int]]]] = deque()
        self._started = False
        self._closed = False

    def __len__(self) -> int:
        """Number of batches."""
        return (len(self.indices) + self.batch - 1) // self.batch

    def _make_pool(self) -> Executor | None:
        if self.workers == 0:
            return None
        if self.mode == "thread":
            return ThreadPoolExecutor(self.workers, thread_name_prefix="prefetch")
        # spawn, not fork: the driver runs gRPC threads, which do not survive a fork
        return ProcessPoolExecutor(
            self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(self.dataset,)
        )

    def _submit(self, idx: Sequence[int]) -> list[Future[tuple[np.ndarray, int]]]:
        assert self._pool is not None
        if self.mode == "process":
            return [self._pool.submit(_load_in_worker, i) for i in idx]
        return [self._pool.submit(_load, self.dataset, i) for i in idx]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._started:
            raise RuntimeError("a Prefetcher can be iterated once")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        chunks = (self.indices[k : k + self.batch] for k in range(0, len(self.indices), self.batch))
        try:
            if self.workers == 0:
                for idx in chunks:
                    if self._closed:
                        return
                    yield self._stack([_load(self.dataset, i) for i in idx])
                return
            self._pool = self._make_pool()
            for idx in chunks:
                if len(self._pending) >= self.depth:
                    yield self._take()
                if self._closed:
                    return
                self._pending.append(self._submit(idx))
            while self._pending and not self._closed:
                yield self._take()
        finally:
            self.close()

    def _take(self) -> tuple[np.ndarray, np.ndarray]:
        futs = self._pending.popleft()
        return self._stack([f.result() for f in futs])

    @staticmethod
    def _stack(items: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([x for x, _ in items]), np.array([y for _, y in items], dtype=np.int64)

    def close(self) -> None:
        """Cancel queued work and join the workers; safe to call twice."""
        self._closed = True
        for futs in self._pending:
            for f in futs:
                f.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
