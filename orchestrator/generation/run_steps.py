"""A generation job's part of a run: its sequences driven (warm-up, then measured) with a progress
bar counting tokens, and the whole model's greedy decode of the same prompts for `tokens_match`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.adapt.world import ChangingWorld
from orchestrator.driving.client import NodeClient
from orchestrator.driving.driver import DriveControl, Record
from orchestrator.generation.drive import generate
from orchestrator.generation.job import GenerationSetup
from orchestrator.generation.records import SequenceRun
from orchestrator.generation.reference import ReferenceDecoder
from orchestrator.profiling.calibration import PrefillMeasure
from orchestrator.runtimes.base import Deployment


class GenerationRun:
    """The sequences of one configuration's run, in the order their prompts were given."""

    def __init__(self, setup: GenerationSetup, timeout_s: float) -> None:
        self.setup = setup
        self.timeout_s = timeout_s
        self.sequences = [
            SequenceRun(i, list(p), setup.max_new_tokens, warmup=i < setup.warmup) for i, p in enumerate(setup.prompts)
        ]
        self.kv_cache: dict[str, int] | None = None  # bytes per device, read once the sequences are done
        # measured before the run, for the prediction: each stage's lone decode step and prefill
        self.measured_decode_s: list[float] | None = None
        self.prefill: PrefillMeasure | None = None

    def drive(
        self,
        console: Console,
        label: str,
        source: NodeClient,
        *,
        warmup: bool,
        control: DriveControl | None,
        world: ChangingWorld | None = None,
    ) -> list[Record]:
        """Generate the warm-up sequences or the measured ones; returns their steps' records.
        `world` (the measured drive of a run whose world changes) steers it, else `control`."""
        seqs = [s for s in self.sequences if s.warmup == warmup]
        if not seqs:
            return []
        with Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tokens"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("tokens", total=sum(s.max_new_tokens for s in seqs))
            return generate(
                source,
                self.setup.io,
                seqs,
                in_flight=self.setup.sequences,
                timeout_s=self.timeout_s,
                on_step=lambda r: (bar.advance(task), world.answered(r) if world is not None else None),
                control=world.control if world is not None else control,
                on_start=world.on_start if world is not None else None,
            )

    def read_caches(self, dep: Deployment) -> None:
        """Each node's most cache kept at once (StatsReply.peak_kv_cache_bytes), the run's figure."""
        self.kv_cache = {d: int(dep.client(d).stats().peak_kv_cache_bytes) for d in dep.nodes}

    def reference(self, model: Path) -> list[list[int]]:
        """The whole model's greedy decode of every prompt, in one process."""
        ref = ReferenceDecoder(model)
        return [ref.greedy(s.prompt, s.max_new_tokens) for s in self.sequences]
