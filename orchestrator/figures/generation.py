"""Figures of a generation run (DESIGN "Generation"), from each sequence's step records: what users of
token-by-token systems compare (time to first token, time per output token, tokens per second),
prefill and decode broken down by stage and hop, and whether the tokens are the whole model's.

A sequence is measured when it is not a warm-up and ended without error. Step 0 of a sequence is its
prefill (its answer is the first token); every later step decodes one token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from orchestrator.driving.driver import Record
from orchestrator.figures.metrics import _pct, breakdown_table, hop_figures, hop_samples, stage_figures
from orchestrator.generation.records import SequenceRun

MISMATCHES_SHOWN = 10
ENERGY_FORMULA = "energy per inference (one step) x steps / tokens generated, over the measured sequences"


def _done(step: Record) -> bool:
    """A step that came back with its token."""
    return bool(step.done_ns) and not step.error


def _measured(sequences: list[SequenceRun]) -> list[SequenceRun]:
    return [s for s in sequences if not s.warmup and not s.error]


def _ms(a_ns: int, b_ns: int) -> float:
    return (b_ns - a_ns) / 1e6


def ttft_ms(seq: SequenceRun) -> float | None:
    """Time to first token: the prefill step's round trip, on the driver's clock."""
    if not seq.steps or not _done(seq.steps[0]):
        return None
    return _ms(seq.steps[0].sent_ns, seq.steps[0].done_ns)


def _tpot(seq: SequenceRun) -> list[float]:
    """The time between two tokens of the sequence as its user sees them: one per decode step."""
    st = seq.steps
    return [_ms(st[i - 1].done_ns, st[i].done_ns) for i in range(1, len(st)) if _done(st[i]) and _done(st[i - 1])]


def _span_ns(seqs: list[SequenceRun]) -> tuple[int, int] | None:
    """First send to last answer over these sequences' completed steps."""
    steps = [r for s in seqs for r in s.steps if _done(r)]
    if not steps:
        return None
    return min(r.sent_ns for r in steps), max(r.done_ns for r in steps)


def _tokens_per_s(measured: list[SequenceRun]) -> dict:
    """Total: every measured token over the window from the first send to the last answer (the
    sequences in flight together share it). Per sequence: its tokens over its own first send to
    last answer."""
    span = _span_ns(measured)
    tokens = sum(len(s.generated) for s in measured)
    total = tokens / ((span[1] - span[0]) / 1e9) if span and span[1] > span[0] else None
    per_seq = []
    for s in measured:
        own = _span_ns([s])
        if own and own[1] > own[0]:
            per_seq.append(len(s.generated) / ((own[1] - own[0]) / 1e9))
    return {"total": round(total, 3) if total is not None else None, "per_sequence": _pct(per_seq)}


def _phase(
    steps: list[Record],
    samples: list,
    num_stages: int,
    offsets: dict[str, int] | None,
    source: str | None,
) -> dict:
    """One phase's (prefill's or decode's) steps: their round trip, each stage's queue and compute,
    each hop's parts and bytes per step, and where the time of a step goes."""
    ids = {r.id for r in steps}
    stages = stage_figures(steps, num_stages, offsets=offsets)
    hops = hop_figures(samples, ids)
    per_step: dict[tuple[str, str], list[int]] = {}
    for h in samples:
        if h.id in ids:
            per_step.setdefault((h.src, h.dst), []).append(h.bytes)
    for h in hops:
        h["bytes_per_step"] = round(float(np.mean(per_step[(h["from"], h["to"])])), 1)
    step_ms = _pct([_ms(r.sent_ns, r.done_ns) for r in steps])
    return {
        "steps": len(steps),
        "step_ms": step_ms,
        "stages": stages,
        "hops": hops,
        "breakdown": breakdown_table(stages, hops, (step_ms or {}).get("mean"), source),
    }


def _tokens_match(sequences: list[SequenceRun], reference: list[list[int]]) -> tuple[bool, list[int]]:
    """Each sequence against the whole model's greedy ids, `reference` in the order of the
    sequences' indices: every one must equal its reference, so a sequence that failed before its
    last token never matches (the run did not give its ids)."""
    ordered = sorted(sequences, key=lambda s: s.index)
    if len(reference) != len(ordered):
        raise ValueError(f"{len(reference)} reference decodes for {len(ordered)} sequences")
    bad = []
    for s, ref in zip(ordered, reference, strict=True):
        if [int(t) for t in s.generated] != [int(t) for t in ref]:
            bad.append(s.index)
    return not bad, bad


def _energy_per_token(energy: dict, steps: int, tokens: int) -> dict | None:
    """Energy per inference (energy_split's total, per step here: a step is one inference) over the
    tokens those steps gave; predicted and measured each where energy_split had it."""
    if not tokens:
        return None
    total = energy.get("total") or {}

    def per_token(fig: dict | None) -> float | None:
        if not fig or fig.get("total_j") is None:
            return None
        return round(fig["total_j"] * steps / tokens, 9)

    return {
        "predicted": per_token(total.get("predicted")),
        "measured": per_token(total.get("measured")),
        "steps": steps,
        "tokens": tokens,
        "formula": ENERGY_FORMULA,
    }


def generation_figures(
    sequences: list[SequenceRun],
    num_stages: int,
    offsets: dict[str, int] | None,
    reference: list[list[int]] | None,
    kv_cache: dict[str, int] | None,
    energy: dict | None,
    *,
    source: str | None = None,
    delay_s: Callable[[str, str], float] = lambda a, b: 0.0,
) -> dict:
    """The report keys of a generation run.

    - ttft_ms: percentiles of the measured sequences' prefill round trip (steps[0] sent to done).
    - tpot_ms: percentiles over every decode step of the measured sequences of the time since the
      sequence's token before (steps[i].done_ns - steps[i-1].done_ns).
    - tokens_per_s: {"total", "per_sequence"} (see _tokens_per_s).
    - prefill, decode: each phase's steps broken down by stage and hop (_phase); hops are split
      with the frames of every sequence, warm-ups included, since they share the links.
    - kv_cache_bytes: per device as given (each node's peak cache bytes), None where not given.
    - tokens_match, tokens_mismatch: every sequence's ids equal to the whole model's greedy decode
      (`reference`, one list per sequence in index order), and the indices of the first sequences
      that differ; None without a reference.
    - energy_per_token_j: energy per inference x steps / tokens, from `energy` (energy_split's
      output, over the measured steps); None without it.
    - sequences: counts (measured, warm-up, failed: a failed warm-up counts in both) and tokens.

    offsets: per device, its clock less the orchestrator's (hops cross clocks); source: the device
    that feeds the pipeline, for the breakdown's order; delay_s: each link's delay (link wait).
    Step records must have distinct ids (the hops are told apart by them).
    """
    done_steps = [r for s in sequences for r in s.steps if _done(r)]
    if len({r.id for r in done_steps}) != len(done_steps):
        raise ValueError("step records share ids: hops cannot be told apart")
    measured = _measured(sequences)
    samples = hop_samples(done_steps, num_stages, delay_s, offsets=offsets)
    prefill = [s.steps[0] for s in measured if s.steps and _done(s.steps[0])]
    decode = [r for s in measured for r in s.steps[1:] if _done(r)]
    ttft = [t for t in (ttft_ms(s) for s in measured) if t is not None]
    tokens = sum(len(s.generated) for s in measured)
    steps = len(prefill) + len(decode)
    match, mismatch = _tokens_match(sequences, reference) if reference is not None else (None, None)
    failed = [s for s in sequences if s.error]
    return {
        "ttft_ms": _pct(ttft),
        "tpot_ms": _pct([t for s in measured for t in _tpot(s)]),
        "tokens_per_s": _tokens_per_s(measured),
        "prefill": _phase(prefill, samples, num_stages, offsets, source),
        "decode": _phase(decode, samples, num_stages, offsets, source),
        "kv_cache_bytes": dict(kv_cache) if kv_cache is not None else None,
        "tokens_match": match,
        "tokens_mismatch": mismatch[:MISMATCHES_SHOWN] if mismatch is not None else None,
        "energy_per_token_j": _energy_per_token(energy, steps, tokens) if energy is not None else None,
        "sequences": {
            "measured": len(measured),
            "warmup": sum(1 for s in sequences if s.warmup),
            "failed": len(failed),
            "first_error": failed[0].error if failed else None,
            "tokens_generated": tokens,
            "tokens_generated_all": sum(len(s.generated) for s in sequences),
            "steps": steps,
        },
    }


def write_generations(path: Path, sequences: list[SequenceRun]) -> None:
    """generations.jsonl: one line per sequence, in index order, with its prompt and generated ids."""
    with open(path, "w") as f:
        for s in sorted(sequences, key=lambda s: s.index):
            ttft = ttft_ms(s)
            line = {
                "sequence": s.index,
                "prompt": [int(t) for t in s.prompt],
                "generated": [int(t) for t in s.generated],
                "warmup": s.warmup,
                **({"error": s.error} if s.error else {}),
                "ttft_ms": round(ttft, 3) if ttft is not None else None,
                "tokens": len(s.generated),
            }
            f.write(json.dumps(line) + "\n")
