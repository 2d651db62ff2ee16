"""What the driver feeds the pipeline: seeded synthetic tensors, or images from a dataset.

Also keeps what the report needs afterwards: each request's labels (for accuracy) and the
inputs of the first few (to run the whole model on them in one process, for agreement).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from orchestrator.config import Job
from orchestrator.datasets import Prefetcher, open_dataset
from orchestrator.driving.driver import Feed
from orchestrator.errors import UserError
from orchestrator.partition.seeded_inputs import seeded_inputs, session_inputs

SYNTHETIC_POOL = 8  # distinct synthetic inputs, cycled


@dataclass
class Inputs:
    feeds: Iterator[Feed]
    synthetic: bool
    labels: dict[int, np.ndarray] = field(default_factory=dict)  # key -> [batch] class indices
    kept: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # key -> arrays, for agreement
    notes: list[str] = field(default_factory=list)
    close: Callable[[], None] = lambda: None


def synthetic_pool(sess: ort.InferenceSession, batch: int, size: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`size` seeded random inputs shaped like the model's, the batch dimension set to `batch`."""
    specs = session_inputs(sess)
    return [seeded_inputs(specs, batch, seed + k) for k in range(size)]


def _synthetic(job: Job, sess: ort.InferenceSession, note: str) -> Inputs:
    pool = synthetic_pool(sess, job.batch, SYNTHETIC_POOL, job.dataset.seed)
    feeds = (Feed(arrays=pool[i % len(pool)], key=i % len(pool)) for i in itertools.count())
    return Inputs(
        feeds=feeds,
        synthetic=True,
        kept=dict(enumerate(pool)),
        notes=[f"{note}: {len(pool)} seeded random inputs, cycled; accuracy not measured"],
    )


def open_inputs(job: Job, job_file: str, sess: ort.InferenceSession) -> Inputs:
    """The job's inputs; a missing ImageNet path falls back to synthetic data, and says so."""
    spec = job.dataset
    if spec.kind == "synthetic":
        return _synthetic(job, sess, "synthetic inputs")
    path = job.path(spec.path) if spec.path else None
    if spec.kind == "imagenet" and (path is None or not path.exists()):
        return _synthetic(
            job,
            sess,
            f"dataset: the ImageNet files are absent ({path or 'no path given'}), synthetic inputs used instead",
        )
    model_inputs = sess.get_inputs()
    if len(model_inputs) != 1:
        raise UserError(
            f"an image dataset feeds one input, the model has {len(model_inputs)}", job_file, "dataset.kind"
        )
    inp = model_inputs[0]
    try:
        ds = open_dataset(spec, base_dir=job.base_dir)
    except ValueError as e:
        field_name, _, msg = str(e).partition(": ")
        raise UserError(msg or str(e), job_file, f"dataset.{field_name}") from None
    want = [d for d in inp.shape[1:]]
    got = list(ds.load(0).shape)
    if all(isinstance(d, int) for d in want) and want != got:
        raise UserError(
            f"images come out {got} but the model's {inp.name} takes {want}", job_file, "dataset.preprocessing"
        )
    current: list[Prefetcher] = []

    def close() -> None:
        for pf in current:
            pf.close()

    inputs = Inputs(
        feeds=iter(()),
        synthetic=False,
        close=close,
        notes=[f"dataset: {len(ds)} images ({spec.kind}, {spec.path}), decoded ahead by {spec.workers} workers"],
    )

    def feeds() -> Iterator[Feed]:
        key = 0
        for lap in itertools.count():  # cycle when more requests than images are asked for
            start = key
            if lap == 1:
                inputs.notes.append(f"more requests than the dataset's {len(ds)} images: it was cycled")
            pf = Prefetcher(ds, batch=job.batch, workers=spec.workers, depth=max(4, 2 * job.concurrency))
            current[:] = [pf]
            with pf:
                for x, y in pf:
                    arrays = {inp.name: x}
                    inputs.labels[key] = y
                    if key < job.agreement:
                        inputs.kept[key] = arrays
                    yield Feed(arrays=arrays, key=key)
                    key += 1
            if key == start:
                return

    inputs.feeds = feeds()
    return inputs
