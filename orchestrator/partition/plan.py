"""plan.json: which stage runs where and which tensors cross each cut (the contract the README describes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from orchestrator.errors import UserError

PLAN_FILE = "plan.json"


class StagePlan(BaseModel):
    """One stage: its device, its model file (relative to the plan's folder), its boundary tensors."""

    model_config = ConfigDict(extra="ignore")
    index: int = Field(ge=0)
    device: str
    model: str
    inputs: list[str]
    outputs: list[str]
    # the node's predicted peak resident (anonymous) bytes running this stage (partition.memory)
    memory_bytes: int | None = None
    memory_mode: Literal["default", "lean"] = "default"  # lean: no pre-packed weights
    level: float | None = None  # the CPU share of its device's DVFS level; None: the device's own cpus


class Predicted(BaseModel):
    """Figures the planner expects; null where it has no estimate."""

    model_config = ConfigDict(extra="ignore")
    stage_s: list[float] | None = None
    transfer_s: list[float] | None = None
    throughput_fps: float | None = None
    latency_s: float | None = None
    energy_j: float | None = None  # per inference, modelled (partition/energy.py): the sum of the three below
    energy_compute_j: float | None = None  # the stages' power above idle over their busy time
    energy_idle_j: float | None = None  # the devices taking part, idle over the period
    energy_radio_j: float | None = None  # every hop's bits sent and received
    # the slowest step that is not a stage (a link, the source's relay); kept in memory, so that
    # stage times measured later still give a throughput (see orchestrator.profiling.calibration)
    slowest_other_s: float | None = Field(default=None, exclude=True)
    transfers_total_s: float | None = Field(default=None, exclude=True)  # a request's links, in and out
    source_roundtrip_s: float | None = Field(default=None, exclude=True)  # driver to the source and back


class Plan(BaseModel):
    """The partition plan. `notes` (planner remarks) are kept in memory, not in plan.json."""

    model_config = ConfigDict(extra="ignore")
    model: str
    model_sha256: str
    algorithm: str
    objective: str
    inputs: list[str]  # the model's inputs, cache inputs left out
    outputs: list[str]  # its outputs, cache outputs left out
    stages: list[StagePlan]
    # a decoder's cache, input -> output (generation.decoder): each stage keeps the pairs its own
    # layers read and write, per sequence, on its device; they are in its inputs and outputs, never sent
    state: dict[str, str] = Field(default_factory=dict)
    predicted: Predicted = Predicted()
    notes: list[str] = Field(default_factory=list, exclude=True)
    _dir: Path | None = PrivateAttr(default=None)

    @property
    def dir(self) -> Path:
        """Folder of the plan: stage model paths (and a relative `model`) resolve from here."""
        return self._dir if self._dir is not None else Path(".")

    def stage_path(self, k: int) -> Path:
        return self.dir / self.stages[k].model

    @property
    def model_path(self) -> Path:
        p = Path(self.model)
        return p if p.is_absolute() else self.dir / p

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read plan.json (or the folder holding it); UserError if missing or malformed."""
        p = Path(path)
        if p.is_dir():
            p = p / PLAN_FILE
        if not p.exists():
            raise UserError("file not found", str(p))
        try:
            raw = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"not valid JSON: {e}", str(p)) from None
        if not isinstance(raw, dict):
            raise UserError("expected a JSON object", str(p))
        try:
            plan = cls(**raw)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            msg = "required field is missing" if err["type"] == "missing" else err["msg"]
            raise UserError(msg, str(p), loc or None) from None
        for i, s in enumerate(plan.stages):
            if s.index != i:
                raise UserError(f"stage index {s.index} at position {i}", str(p), f"stages[{i}].index")
        plan._dir = p.parent
        return plan

    def save(self, directory: str | Path) -> Path:
        """Write DIR/plan.json; the plan's folder becomes DIR."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        out = d / PLAN_FILE
        out.write_text(json.dumps(self.model_dump(), indent=2) + "\n")
        self._dir = d
        return out

    def stage_state(self, k: int) -> dict[str, str]:
        """The cache pairs stage k keeps."""
        return {past: present for past, present in self.state.items() if past in self.stages[k].inputs}

    def forward_after(self, k: int) -> list[str]:
        """Tensors that must travel on after stage k (k = -1: the model inputs stage 0.. need).

        That is what is available after stage k (model inputs, outputs of stages <= k) and is
        needed by a later stage, plus the model outputs already produced.
        """
        have: dict[str, None] = {x: None for x in self.inputs}
        for s in self.stages[: k + 1]:
            for o in s.outputs:
                have[o] = None
        need: set[str] = {x for s in self.stages[k + 1 :] for x in s.inputs}
        produced_outputs = set(self.outputs) - set(self.inputs)
        return [x for x in have if x in need or (k >= 0 and x in produced_outputs and x not in self.inputs)]
