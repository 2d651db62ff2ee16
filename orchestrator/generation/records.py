"""What a generation run keeps of each sequence: its prompt, the ids it generated and the driver's
record of each of its steps (step 0 the prefill, which gives the first token)."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.driving.driver import Record


@dataclass
class SequenceRun:
    """One sequence: `steps[i]` gave `generated[i]`; a step's Record.key is the sequence's index."""

    index: int
    prompt: list[int]
    max_new_tokens: int
    warmup: bool = False  # a warm-up sequence: run, not measured
    generated: list[int] = field(default_factory=list)
    steps: list[Record] = field(default_factory=list)
    error: str = ""

    @property
    def done(self) -> bool:
        return bool(self.error) or len(self.generated) >= self.max_new_tokens

    @property
    def context(self) -> int:
        """Tokens its cache holds once done: the prompt and every generated id but the last."""
        return len(self.prompt) + max(len(self.generated) - 1, 0)
