"""How right the pipeline's answers are: agreement with the whole model, accuracy on labels."""

from __future__ import annotations

import numpy as np

from orchestrator.driving.driver import Record


def agreement(records: list[Record], reference: dict[int, dict[str, np.ndarray]]) -> dict:
    """Largest absolute difference and top-1 agreement against the whole model run in one process,
    over the requests whose inputs were kept for it (`reference` is keyed like Record.key)."""
    max_diff = 0.0
    same = total = checked = 0
    for r in records:
        ref = reference.get(r.key)
        if ref is None or r.outputs is None:
            continue
        checked += 1
        for name, want in ref.items():
            got = r.outputs.get(name)
            if got is None or got.shape != want.shape:
                return {
                    "max_abs_diff": None,
                    "top1": 0.0,
                    "checked": checked,
                    "error": f"output {name} missing or misshapen",
                }
            max_diff = max(max_diff, float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0)))
        first = next(iter(ref))
        w, g = ref[first], r.outputs[first]
        if w.ndim >= 2 and np.issubdtype(w.dtype, np.floating):
            same += int(np.sum(np.argmax(w.reshape(w.shape[0], -1), 1) == np.argmax(g.reshape(g.shape[0], -1), 1)))
            total += w.shape[0]
    if not checked:
        return {"max_abs_diff": None, "top1": None, "checked": 0}
    return {"max_abs_diff": max_diff, "top1": (same / total) if total else None, "checked": total or checked}


def accuracy(records: list[Record], labels: dict[int, np.ndarray], output: str) -> dict:
    """Top-1 and top-5 of the pipeline's `output` logits against the dataset's labels."""
    top1 = top5 = n = 0
    for r in records:
        y = labels.get(r.key)
        if y is None or r.outputs is None or output not in r.outputs:
            continue
        logits = r.outputs[output].reshape(len(y), -1)
        k = min(5, logits.shape[1])
        best = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        top1 += int(np.sum(np.argmax(logits, 1) == y))
        top5 += int(np.sum(np.any(best == y[:, None], axis=1)))
        n += len(y)
    if not n:
        return {"top1": None, "top5": None, "images": 0}
    return {"top1": round(top1 / n, 5), "top5": round(top5 / n, 5), "images": n}
