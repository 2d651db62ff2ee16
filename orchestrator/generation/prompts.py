"""The prompts a generation job runs: a file of token-id lines, or seeded synthetic ids.

Each prompt is checked against the model before anything starts: ids inside its vocabulary, and
the prompt plus `max_new_tokens` within its context (the positions a sequence will take)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from orchestrator.config import Job
from orchestrator.errors import UserError
from orchestrator.generation.decoder import DecoderIO
from orchestrator.units import shown

SYNTHETIC = "synthetic"
SYNTHETIC_SEED = 0  # fixed: the same job runs the same prompts on every run and every plan
_SEPARATORS = re.compile(r"[,\s]+")
_ID = re.compile(r"-?[0-9]+")  # ASCII digits only: int() also takes '1_0', '+1' and other scripts' digits


def load_prompts(job: Job, job_file: str, io: DecoderIO) -> tuple[list[list[int]], list[str]]:
    """One prompt per sequence the job runs (`warmup` first, then `requests`), in order, and notes.

    UserError for a prompts file that cannot be read or parsed, an id outside the vocabulary, or a
    prompt that with `max_new_tokens` would run past the model's context."""
    count = job.warmup + job.requests
    notes: list[str] = []
    if job.prompts == SYNTHETIC:
        _check_fits(job.prompt_tokens, job.max_new_tokens, io, job_file, "prompt_tokens")
        if io.vocab is None:
            raise UserError(
                "synthetic prompts need the model's vocabulary size (the last dim of its logits is not declared)",
                job_file,
                "prompts",
            )
        rng = np.random.default_rng(SYNTHETIC_SEED)
        ids = rng.integers(0, io.vocab, size=(count, job.prompt_tokens), dtype=np.int64)
        notes.append(f"synthetic prompts: {count} of {job.prompt_tokens} tokens")
        return [[int(t) for t in row] for row in ids], notes
    path = job.path(job.prompts)
    lines = _parse(path, job_file, io)
    for number, prompt in lines:
        _check_fits(len(prompt), job.max_new_tokens, io, str(path), f"line {number}")
    given = [p for _, p in lines]
    if len(given) < count:
        notes.append(f"prompts: {len(given)} in {path} for {count} sequences: used again in order")
    elif len(given) > count:
        notes.append(f"prompts: the first {count} of {len(given)} in {path}")
    return [list(given[i % len(given)]) for i in range(count)], notes


def cache_tokens(prompts: list[list[int]], max_new_tokens: int) -> int:
    """Tokens a stage's cache must hold for one sequence: the longest prompt and what it generates."""
    return max(len(p) for p in prompts) + max_new_tokens


def _check_fits(tokens: int, max_new_tokens: int, io: DecoderIO, file: str, field: str) -> None:
    need = tokens + max_new_tokens
    if io.context is not None and need > io.context:
        raise UserError(
            f"prompt of {tokens} tokens and max_new_tokens {max_new_tokens} need {need} positions, "
            f"the model's context is {io.context}",
            file,
            field,
        )


def _parse(path: Path, job_file: str, io: DecoderIO) -> list[tuple[int, list[int]]]:
    """(line number, ids) for each prompt line; blank lines and `#` comments are skipped."""
    try:
        if not path.exists():
            raise UserError(f"prompts file not found: {path}", job_file, "prompts")
        if path.is_dir():
            raise UserError(f"{path} is a folder, not a prompts file", job_file, "prompts")
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:  # unreadable, or not UTF-8
        reason = "not a text file" if isinstance(e, UnicodeDecodeError) else f"cannot read: {e}"
        raise UserError(reason, str(path)) from None
    upper = io.vocab if io.vocab is not None else 2**63  # ids travel as int64
    span = f"the model's vocabulary [0, {upper})" if io.vocab is not None else f"[0, {upper})"
    out: list[tuple[int, list[int]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = [w for w in _SEPARATORS.split(line.split("#", 1)[0]) if w]
        if not words:
            continue
        ids = []
        for w in words:
            if not _ID.fullmatch(w):
                raise UserError(
                    f"{shown(w)} is not a token id (integers separated by spaces or commas)",
                    str(path),
                    f"line {number}",
                )
            t = int(w) if len(w) <= 20 else None  # int() refuses more than 4300 digits
            if t is None or not 0 <= t < upper:
                shown_id = w if len(w) <= 24 else w[:20] + "..."
                raise UserError(f"token id {shown_id} is outside {span}", str(path), f"line {number}")
            ids.append(t)
        out.append((number, ids))
    if not out:
        raise UserError("no prompt in the file (one line of token ids per prompt)", str(path))
    return out
