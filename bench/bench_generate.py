"""Token-by-token generation across the default Docker testbed: `optimal` against exo's
memory-weighted split.

Builds the default decoder (`orchestrator model gpt`: GPT-2 small's geometry, 12 layers, hidden
768, vocabulary 50257, context 1024, seeded weights) unless it is there, and runs one generation job
(`orchestrator run`, docker runtime, devices/edge4.yaml, source laptop) with five configurations:
`optimal` (objective throughput: the most tokens per second with the job's sequences in flight, that
is the least time per output token at that count; profiled decode steps, the KV cache counted in
memory), `exo` (each device a share of the layers in proportion to its memory, as exo's
"ring memory weighted" strategy does), and `even` cuts into 2, 3 and 4 stages. Prints, side by
side, each plan's time to first token, time per output token, tokens per second in total and per
sequence, the predicted TPOT and TTFT and their errors, then checks the targets: optimal's TPOT at
most exo's, and their predicted TPOT within 15% of measured. Every configuration must generate
exactly the whole model's greedy tokens (`tokens_match`) and send no cache tensor: a decode step's
hop between stages carries less than one layer's key over the prompt, its hop home one position's
logits.

Run: .venv/bin/python bench/bench_generate.py [--sequences 2] [--requests 4] [--new 32] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchlib import ROOT, run_job_reports, verdict

MODEL = ROOT / "models" / "gpt2_small.onnx"
DEVICES = ROOT / "devices" / "edge4.yaml"
TOLERANCE = 0.15


def build_model(path: Path) -> None:
    if not path.exists():
        print(f"building {path.name} (GPT-2 small geometry, seeded weights)...", flush=True)
        subprocess.run([sys.executable, "-m", "orchestrator", "model", "gpt", "--out", str(path)], cwd=ROOT, check=True)


def job(args: argparse.Namespace) -> dict:
    return {
        "name": "bench_generate",
        "model": str(MODEL),
        "devices": str(DEVICES),
        "runtime": "docker",
        "task": "generate",
        "algorithm": "optimal",
        "objective": "throughput",
        "source": "laptop",
        "prompts": "synthetic",
        "prompt_tokens": args.prompt_tokens,
        "max_new_tokens": args.new,
        "sequences": args.sequences,
        "requests": args.requests,
        "warmup": 1,
        "compare": [
            {"name": "exo", "algorithm": "exo"},
            *[{"name": f"even{k}", "algorithm": "even", "stages": k} for k in (2, 3, 4)],
        ],
    }


VOCAB = 50257
HIDDEN = 768


def hop_check(name: str, rep: dict, prompt_tokens: int) -> list[tuple[bool, str]]:
    """No cache tensor in any hop of a decode step: a hop between stages carries less than one
    layer's key over the prompt alone (prompt x hidden x 4 bytes), the hop home exactly one
    position's logits (vocabulary x 4 bytes)."""
    stages = [s["device"] for s in rep.get("stages") or []]
    source = rep.get("source") or "laptop"
    smallest_cache = prompt_tokens * HIDDEN * 4
    out = []
    for h in (rep.get("decode") or {}).get("hops") or []:
        home = h["to"] == source and stages and h["from"] == stages[-1]
        b = h.get("bytes_per_step") or h["bytes"]
        ok = b == VOCAB * 4 if home else b < smallest_cache
        want = f"== {VOCAB * 4} (one position's logits)" if home else f"< {smallest_cache} (one layer's key)"
        out.append((ok, f"{name}: decode hop {h['from']} -> {h['to']} carries {b:.0f} B a step, {want}"))
    return out


def row(name: str, rep: dict) -> dict:
    pg = rep.get("predicted_generation") or {}
    return {
        "plan": name,
        "stages": " > ".join(s["device"] for s in rep.get("stages") or []) or "?",
        "ttft": (rep.get("ttft_ms") or {}).get("p50"),
        "tpot": (rep.get("tpot_ms") or {}).get("mean"),
        "tpot_p50": (rep.get("tpot_ms") or {}).get("p50"),
        "tokens_s": (rep.get("tokens_per_s") or {}).get("total"),
        "per_seq": ((rep.get("tokens_per_s") or {}).get("per_sequence") or {}).get("p50"),
        "pred_tpot": pg.get("tpot_ms"),
        "err": pg.get("tpot_error_pct"),
        "ttft_mean": (rep.get("ttft_ms") or {}).get("mean"),
        "pred_ttft": pg.get("ttft_ms"),
        "ttft_err": pg.get("ttft_error_pct"),
        "match": rep.get("tokens_match"),
        "kv": rep.get("kv_cache_bytes"),
    }


def fmt(v: float | None, f: str = ".1f") -> str:
    return "-" if v is None else format(v, f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=2, help="sequences in flight at once")
    ap.add_argument("--requests", type=int, default=4, help="measured sequences (after one warm-up)")
    ap.add_argument("--new", type=int, default=32, help="tokens generated per sequence")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--keep", type=Path, default=None, help="leave the run folder here")
    args = ap.parse_args()
    build_model(MODEL)
    status, reports = run_job_reports(job(args), keep=args.keep)
    if "static" not in reports or "exo" not in reports:  # the figures compared; the even runs check the cuts
        print(f"the job did not report both configurations (exit status {status})")
        return verdict(False, "optimal and exo both generate")
    named = {"static": "optimal (tokens/s)", "exo": "exo (memory-weighted)"} | {
        f"even{k}": f"even, {k} stages" for k in (2, 3, 4)
    }
    rows = [row(label, reports[key]) for key, label in named.items() if key in reports]
    print(
        f"\ndefault GPT ({MODEL.name}) on {DEVICES.name}, docker; {args.requests} sequences after 1 warm-up, "
        f"{args.sequences} in flight, prompts of {args.prompt_tokens} tokens, {args.new} new tokens each\n"
    )
    head = (
        "plan stages TTFT_p50_ms TPOT_mean_ms TPOT_p50_ms tokens/s per_sequence_p50 predicted_TPOT_ms error "
        "TTFT_mean_ms predicted_TTFT_ms TTFT_error match"
    )
    print("| " + " | ".join(h.replace("_", " ") for h in head.split()) + " |")
    print("|" + "---|" * len(head.split()))
    for r in rows:
        print(
            f"| {r['plan']} | {r['stages']} | {fmt(r['ttft'])} | {fmt(r['tpot'])} | {fmt(r['tpot_p50'])} | "
            f"{fmt(r['tokens_s'], '.2f')} | {fmt(r['per_seq'], '.2f')} | {fmt(r['pred_tpot'])} | "
            f"{fmt(r['err'], '+.1f')}% | {fmt(r['ttft_mean'])} | {fmt(r['pred_ttft'])} | "
            f"{fmt(r['ttft_err'], '+.1f')}% | {r['match']} |"
        )
    for r in rows:
        print(f"KV cache bytes per device, {r['plan']}: {r['kv']}")
    opt, exo = rows[:2]
    ok = len(rows) == len(named)
    checks = [
        (
            opt["tpot"] is not None and exo["tpot"] is not None and opt["tpot"] <= exo["tpot"],
            f"optimal's TPOT {fmt(opt['tpot'])} ms <= exo's {fmt(exo['tpot'])} ms",
        ),
        *[
            (
                r["err"] is not None and abs(r["err"]) <= TOLERANCE * 100,
                f"{r['plan']}: predicted TPOT within 15% ({fmt(r['err'], '+.1f')}%)",
            )
            for r in rows[:2]
        ],
        *[(r["match"] is True, f"{r['plan']}: tokens_match") for r in rows],
        *[
            c
            for key, label in named.items()
            if key in reports
            for c in hop_check(label, reports[key], args.prompt_tokens)
        ],
    ]
    for good, what in checks:
        print(("pass: " if good else "MISSED: ") + what)
        ok = ok and good
    return verdict(ok, "optimal TPOT <= exo's, predicted TPOT within 15%, tokens match in 2-4 stages, no cache sent")


if __name__ == "__main__":
    sys.exit(main())
