"""The whole model's greedy decode in one process: what every sequence generated across the
devices must equal, token for token (report.json `tokens_match`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from common.ort_session import SessionSettings, open_session
from orchestrator.generation.decoder import LOGITS, DecoderIO, greedy_token


class ReferenceDecoder:
    """One ONNX Runtime session of the whole decoder, run with its own cache."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.io = DecoderIO.of(onnx.load(str(self.path), load_external_data=False), str(self.path))
        self.session = open_session(self.path, SessionSettings(threads=threads))
        self._outputs = [LOGITS, *self.io.state.values()]

    def step(self, ids: list[int], cache: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One step of one sequence: its logits and its cache after."""
        past = next(iter(cache.values())).shape[2]
        out = self.session.run(self._outputs, {**self.io.step_feeds(ids, past), **cache})
        return out[0], dict(zip(self.io.state, out[1:], strict=True))

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """The ids a greedy decode of `prompt` generates, `max_new_tokens` of them."""
        cache = self.io.empty_cache(list(self.io.state))
        ids, out = list(prompt), []
        for _ in range(max_new_tokens):
            logits, cache = self.step(ids, cache)
            ids = [int(greedy_token(logits)[0, 0])]
            out.append(ids[0])
        return out
