"""Check a plan: chain its stages in one process and compare with the whole model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.ort_session import open_session
from orchestrator.errors import UserError
from orchestrator.partition.chain import run_chain
from orchestrator.partition.plan import Plan
from orchestrator.partition.seeded_inputs import seeded_inputs, session_inputs


@dataclass
class VerifyResult:
    """Largest absolute difference over all outputs, and the share of rows whose argmax agrees."""

    max_abs_diff: float
    top1_agreement: float
    outputs: list[str]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= 1e-4 and self.top1_agreement == 1.0


def run_stages(plan: Plan, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The plan's outputs from its stages chained on `feeds`; a missing stage file, or an input
    that nothing earlier gives, is named before anything runs."""
    have = set(feeds)
    for s in plan.stages:
        path = plan.dir / s.model
        if not path.exists():
            raise UserError("stage model not found", str(path), f"stages[{s.index}].model")
        missing = [x for x in s.inputs if x not in have]
        if missing:
            raise UserError(
                f"stage {s.index} needs {', '.join(missing)}, which nothing earlier gives",
                str(plan.dir / "plan.json"),
                f"stages[{s.index}].inputs",
            )
        have.update(s.outputs)
    env = run_chain(plan.dir, plan.stages, feeds)
    return {o: env[o] for o in plan.outputs}


def compare(whole: dict[str, np.ndarray], staged: dict[str, np.ndarray]) -> VerifyResult:
    """Max |a-b| over outputs; top-1 agreement over the rows of float outputs of rank >= 2."""
    diff, agree, rows = 0.0, 0, 0
    for name, a in whole.items():
        b = staged[name]
        if a.shape != b.shape:
            return VerifyResult(float("inf"), 0.0, list(whole))
        if a.size:
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
        if np.issubdtype(a.dtype, np.floating) and a.ndim >= 2 and a.shape[-1] > 1:
            x, y = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
            agree += int(np.sum(np.argmax(x, -1) == np.argmax(y, -1)))
            rows += x.shape[0]
    top1 = agree / rows if rows else (1.0 if diff == 0.0 else float(diff <= 1e-4))
    return VerifyResult(diff, top1, list(whole))


def verify_plan(plan_path: str | Path, batch: int = 4, seed: int = 0) -> VerifyResult:
    """Compare chained stages with the whole model on seeded random inputs (batch >= 2 for top-1)."""
    plan = Plan.load(plan_path)
    model = plan.model_path
    if not model.exists():
        raise UserError("model of the plan not found", str(model), "model")
    sess = open_session(model)
    feeds = seeded_inputs(session_inputs(sess), batch, seed)
    names = [o.name for o in sess.get_outputs()]
    whole = dict(zip(names, sess.run(names, feeds), strict=True))
    del sess
    return compare(whole, run_stages(plan, feeds))
