"""What a plan predicts of a generation job, from its stages measured whole before the run: the
time to first token, and the mean time per output token with the job's other sequences' prefills.

A decode step's figures are the planner's (partition.decode: TPOT = max(latency, sequences x the
slowest step)); the prefill is measured apart (calibration.measure_prefill: each stage's time for
a prompt from an empty cache, on its device).

- TTFT of a lone prefill: a decode step's latency, with each stage's prefill in place of its
  lone decode compute, and the hops' extra time for the prompt's hidden states.
- TTFT of the job's sequences: the first `sequences` start together, so the i-th of them waits
  for i prefills at the slowest prefill stage; each later one starts as another ends, and waits
  about half a decode step at the slowest stage for each other sequence in flight. The figure
  is their mean.
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
    ttft_s: float | None  # mean over the job's sequences; None: the prefill was not measured
    lone_ttft_s: float | None  # one prefill through an idle pipeline


def predict_generation(
    predicted: Predicted,
    *,
    sequences: int,
    max_new_tokens: int,
    measured_sequences: int,
    decode_compute_s: Sequence[float] | None = None,
    prefill_s: Sequence[float] | None = None,
    prefill_extra_transfer_s: float = 0.0,
) -> GenerationPrediction:
    """The job's figures from a plan's decode prediction (`predicted`, its stage_s the busy steps)
    and, where measured, each stage's lone decode compute and prefill time (see the module's
    docstring)."""
    steady, _ = decode_prediction(predicted, sequences)
    if prefill_s is None or decode_compute_s is None or predicted.latency_s is None:
        return GenerationPrediction(steady, steady, sequences / steady if steady > 0 else float("inf"), None, None)
    if len(prefill_s) != len(decode_compute_s):
        raise ValueError("prefill and decode measured for different stages")
    busy = list(predicted.stage_s or decode_compute_s)
    lone = predicted.latency_s + sum(prefill_s) - sum(decode_compute_s) + prefill_extra_transfer_s
    together = min(sequences, measured_sequences)
    waits = [i * max(prefill_s) for i in range(together)]
    waits += [(sequences - 1) * max(busy) / 2] * (measured_sequences - together)
    ttft = lone + sum(waits) / len(waits) if waits else lone
    hold = max((max(0.0, p - d) for p, d in zip(prefill_s, busy, strict=True)), default=0.0)
    intervals = max_new_tokens - 1
    tpot = steady + (sequences - 1) * hold / intervals if intervals > 0 else steady
    return GenerationPrediction(tpot, steady, sequences / tpot if tpot > 0 else float("inf"), ttft, lone)
