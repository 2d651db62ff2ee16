"""Run stage models in order in this process, each fed by name from the model's inputs and the
earlier stages' outputs: what verify compares with the whole model, and where the profiler and the
calibration take real intermediate tensors from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from common.ort_session import open_session


class ChainStage(Protocol):
    """A stage model file (relative to the chain's folder) and the tensors it takes and gives."""

    model: str
    inputs: list[str]
    outputs: list[str]


def run_chain(folder: Path, stages: Sequence[ChainStage], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor of the chain: the feeds and each stage's outputs (names are unique in a graph).

    One session at a time: each is freed before the next is built."""
    env = dict(feeds)
    for s in stages:
        sess = open_session(Path(folder) / s.model)
        env.update(zip(s.outputs, sess.run(list(s.outputs), {x: env[x] for x in s.inputs}), strict=True))
        del sess
    return env
