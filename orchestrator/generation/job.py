"""What a generation job needs before anything starts: the decoder's interface and the prompts.

A bad generation job (a model without cache inputs, a prompt past the model's context, a bad
prompts file) ends here, in one line and exit status 2, before a node or a container starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from orchestrator.config import Job
from orchestrator.errors import UserError
from orchestrator.generation.decoder import DecoderIO
from orchestrator.generation.prompts import cache_tokens, load_prompts
from orchestrator.partition.decode import held_cache_tokens, mean_past_tokens


@dataclass(frozen=True)
class GenerationSetup:
    """The decoder, one prompt per sequence (the `warmup` ones first), and the cache each needs."""

    io: DecoderIO
    prompts: list[list[int]]
    warmup: int  # the first `warmup` prompts are not measured
    max_new_tokens: int
    sequences: int  # in flight at once
    cache_tokens: int  # tokens a stage's cache holds for one sequence, at most
    notes: list[str]

    @property
    def longest_prompt(self) -> int:
        return max(len(p) for p in self.prompts)

    @property
    def past_tokens(self) -> int:
        """The decode step profiles and stage measurements are taken at (partition.decode)."""
        return mean_past_tokens(self.longest_prompt, self.max_new_tokens)

    @property
    def held_cache_tokens(self) -> int:
        """Cache tokens a stage holds at most: every sequence in flight at its longest context."""
        return held_cache_tokens(self.longest_prompt, self.max_new_tokens, self.sequences)


def prepare(job: Job, job_file: str, model: Path) -> GenerationSetup:
    """Read the model's decoder interface (weights not loaded) and the job's prompts; start nothing."""
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # a protobuf DecodeError, an unreadable file: all mean no model to read
        raise UserError("not an ONNX model (the file does not parse as one)", str(model)) from None
    io = DecoderIO.of(proto, str(model))
    prompts, notes = load_prompts(job, job_file, io)
    return GenerationSetup(
        io=io,
        prompts=prompts,
        warmup=job.warmup,
        max_new_tokens=job.max_new_tokens,
        sequences=job.sequences,
        cache_tokens=cache_tokens(prompts, job.max_new_tokens),
        notes=notes,
    )
