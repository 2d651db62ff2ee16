"""A user's own partition algorithm (`--algorithm my_module:my_partition`), checked before use.

Two signatures are accepted:

* ours: `f(problem: Problem) -> Placement`;
* Ianvs multi-edge: `partition(initial_model) -> (models_dir, map_info)`, where `initial_model`
  is the model's path and `map_info` maps stage model file names (in `models_dir`) to device
  names. The stage files are only read for their inputs and outputs; they are translated into
  cut positions and cut again by us, so every stage gets the shared weights file and a complete
  live set.

Whatever comes back is validated (devices exist, stages chain, outputs reachable) and any
problem is a UserError naming the algorithm, before anything is deployed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from orchestrator.errors import UserError
from orchestrator.partition.graph import ModelGraph
from orchestrator.partition.problem import Algorithm, Placement, Problem

_IANVS_PARAMS = {"initial_model", "model", "model_path", "model_file", "path"}


def _error(name: str, msg: str) -> UserError:
    return UserError(f"algorithm {name!r}: {msg}", None, "algorithm")


def _wants_problem(fn: Callable[..., Any]) -> bool:
    """Ours unless the first parameter looks like a model path (by name or annotation)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    if not params:
        return True
    p = params[0]
    ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
    if "Problem" in str(ann):
        return True
    return not (p.name in _IANVS_PARAMS or str(ann) in ("str", "Path", "PathLike"))


def _stage_io(path: Path, name: str) -> tuple[list[str], list[str]]:
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise _error(name, f"stage model {path} does not load: {e}") from None
    inits = {t.name for t in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits], [o.name for o in m.graph.output]


def from_ianvs(name: str, g: ModelGraph, problem: Problem, models_dir: Any, map_info: Any) -> Placement:
    """Translate Ianvs's (models_dir, {stage file: device}) into cut positions, checking the chain."""
    if not isinstance(map_info, dict) or not map_info:
        raise _error(name, f"map_info must be a non-empty dict of stage model file -> device, got {map_info!r}")
    base = Path(str(models_dir))
    stages: list[tuple[int, str, str, list[str], list[str]]] = []
    for fname, dev in map_info.items():
        path = Path(str(fname))
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise _error(name, f"stage model {path} does not exist")
        ins, outs = _stage_io(path, name)
        unknown = [x for x in ins + outs if x not in g.prod and x not in g.const_producer and x not in g.initializers]
        if unknown:
            raise _error(name, f"{path.name}: {unknown[0]!r} is not a tensor of the model")
        end = max([g.prod[x] for x in outs if x in g.prod], default=-1) + 1
        stages.append((end, str(fname), str(dev), ins, outs))
    stages.sort(key=lambda s: s[0])  # a pipeline runs in production order, whatever the dict order
    have = set(g.inputs) | set(g.const_producer) | set(g.initializers)
    for end, fname, _, ins, outs in stages:
        missing = [x for x in ins if x not in have]
        if missing:
            raise _error(name, f"{fname} needs {missing[0]!r}, which no earlier stage or model input provides")
        if end <= 0:
            raise _error(name, f"{fname} computes nothing")
        have.update(outs)
    unreached = [o for o in g.outputs if o not in have]
    if unreached:
        raise _error(name, f"the model output {unreached[0]!r} is produced by no stage")
    ends = [s[0] for s in stages]
    if len(set(ends)) != len(ends):
        raise _error(name, "two stages end at the same node: they do not form a chain")
    cuts = ends[:-1]
    placement = Placement(
        cuts,
        [s[2] for s in stages],
        [f"{name}: Ianvs stage files {', '.join(s[1] for s in stages)} translated to cuts {cuts}"],
    )
    return placement


def validate(name: str, problem: Problem, placement: Any) -> Placement:
    """A Placement that names known devices and well-formed cuts, or a UserError naming `name`."""
    if not isinstance(placement, Placement):
        raise _error(name, f"returned {type(placement).__name__}, expected a Placement")
    n = problem.graph.n
    c = placement.cuts
    if any(not isinstance(p, int) or isinstance(p, bool) for p in c) or c != sorted(set(c)):
        raise _error(name, f"cut positions must be increasing integers, got {c}")
    if any(p < 1 or p >= n for p in c):
        raise _error(name, f"cut positions must lie in 1..{n - 1}, got {c}")
    if len(placement.devices) != len(c) + 1:
        raise _error(name, f"{len(c) + 1} stages but {len(placement.devices)} devices")
    known = {d.name for d in problem.devices}
    for k, dev in enumerate(placement.devices):
        if dev not in known:
            raise _error(name, f"stage {k}: unknown device {dev!r} (known: {', '.join(sorted(known))})")
    if problem.stages is not None and len(placement.devices) != problem.stages:
        raise _error(name, f"asked for {problem.stages} stages, got {len(placement.devices)}")
    return placement


def wrap_user_algorithm(name: str, fn: Callable[..., Any]) -> Algorithm:
    """An Algorithm that calls the user's function in its own form and checks what it returns."""
    ours = _wants_problem(fn)

    def run(problem: Problem) -> Placement:
        try:
            out = fn(problem) if ours else fn(str(problem.graph.path))
        except UserError:
            raise
        except Exception as e:
            raise _error(name, f"failed: {type(e).__name__}: {e}") from None
        if not ours or (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
            if not (isinstance(out, tuple) and len(out) == 2):
                raise _error(name, f"an Ianvs partition must return (models_dir, map_info), got {out!r}")
            out = from_ianvs(name, problem.graph, problem, out[0], out[1])
        return validate(name, problem, out)

    run.__name__ = getattr(fn, "__name__", "user_algorithm")
    run.__doc__ = getattr(fn, "__doc__", None)
    return run
