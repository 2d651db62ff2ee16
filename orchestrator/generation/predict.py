"""What a plan predicts of a generation job, from its stages measured whole before the run: the
time to first token, and the mean time per output token with the job's other sequences' prefills.

A decode step's figures are the planner's (partition.decode: TPOT = max(latency, sequences x the
slowest step)); the prefill is measured apart (calibration.measure_prefill), each stage taking a
prompt from an empty cache alone on its device.

- TTFT: a decode step's latency, with each stage's lone prefill compute in place of its lone
  decode compute, and the hops' extra time for the prompt's hidden states.
- Mean TPOT: a sequence's tokens come TPOT apart, except where another sequence's prefill holds a
  stage: each sequence sees about `sequences - 1` of them in its `max_new_tokens - 1` intervals
  (every other slot starts a sequence once in a sequence's life), each longer by what that prefill
  holds its longest stage beyond a decode step there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.partition.decode import decode_prediction
from orchestrator.partition.plan import Predicted


@dataclass(frozen=True)
class GenerationPrediction:
    tpot_s: float  # mean time per output token, the other sequences' prefills counted
    steady_tpot_s: float  # between two prefills: the planner's figure
    tokens_per_s: float  # in total, sequences / tpot_s
    ttft_s: float | None  # None: the prefill was not measured


def predict_generation(
    predicted: Predicted,
    *,
    sequences: int,
    max_new_tokens: int,
    decode_compute_s: Sequence[float] | None = None,
    prefill_compute_s: Sequence[float] | None = None,
    prefill_extra_transfer_s: float = 0.0,
) -> GenerationPrediction:
    """The job's figures from a plan's decode prediction (`predicted`, its stage_s the busy steps)
    and, where measured, each stage's lone decode and prefill compute (see the module's docstring)."""
    steady, _ = decode_prediction(predicted, sequences)
    if prefill_compute_s is None or decode_compute_s is None or predicted.latency_s is None:
        return GenerationPrediction(steady, steady, sequences / steady if steady > 0 else float("inf"), None)
    if len(prefill_compute_s) != len(decode_compute_s):
        raise ValueError("prefill and decode measured for different stages")
    ttft = predicted.latency_s + sum(prefill_compute_s) - sum(decode_compute_s) + prefill_extra_transfer_s
    busy = predicted.stage_s or list(decode_compute_s)
    hold = max((max(0.0, p - d) for p, d in zip(prefill_compute_s, busy, strict=True)), default=0.0)
    intervals = max_new_tokens - 1
    tpot = steady + (sequences - 1) * hold / intervals if intervals > 0 else steady
    return GenerationPrediction(tpot, steady, sequences / tpot if tpot > 0 else float("inf"), ttft)
