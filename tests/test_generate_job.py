"""A generation job's keys, its prompts, and a bad generation job ending in one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from orchestrator.config import Job, load_job
from orchestrator.errors import UserError
from orchestrator.generation.decoder import DecoderIO
from orchestrator.generation.job import GenerationSetup, prepare
from orchestrator.generation.prompts import cache_tokens, load_prompts

ROOT = Path(__file__).resolve().parents[1]
VOCAB, CONTEXT = 97, 64
DEVICES = "devices:\n  - {name: phone, cpus: 0.5, memory: 1GiB}\n  - {name: laptop, cpus: 1, memory: 2GiB}\n"


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> Path:
    from orchestrator.models.gpt import build_gpt

    out = tmp_path_factory.mktemp("gpt") / "gpt.onnx"
    return build_gpt(out, layers=2, hidden=64, heads=4, mlp=128, vocab=VOCAB, context=CONTEXT, seed=0)


@pytest.fixture(scope="module")
def io(gpt) -> DecoderIO:
    return DecoderIO.of(onnx.load(str(gpt), load_external_data=False), str(gpt))


def no_cache_model(path: Path) -> Path:
    """A model with the decoder's names but no past_key_values: input_ids -> Gather -> logits."""
    table = numpy_helper.from_array(np.eye(VOCAB, dtype=np.float32), "embedding")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embedding", "input_ids"], ["logits"])],
        "no_cache",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "tokens", VOCAB])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_job(tmp: Path, body: str) -> Path:
    p = tmp / "job.yaml"
    p.write_text("name: j\nmodel: m.onnx\ndevices: d.yaml\n" + textwrap.dedent(body))
    return p


def job_error(tmp: Path, body: str) -> str:
    path = write_job(tmp, body)
    with pytest.raises(UserError) as e:
        load_job(path)
    return str(e.value)


def gen_job(tmp: Path, **keys) -> Job:
    return Job(name="j", model="m.onnx", devices="d.yaml", task="generate", base_dir=str(tmp), **keys)


# --- job keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value", [("prompts", "p.txt"), ("prompt_tokens", 8), ("max_new_tokens", 4), ("sequences", 2)]
)
@pytest.mark.parametrize("task", ["", "task: infer\n"])
def test_generation_key_refused_in_an_inference_job(tmp_path, key, value, task):
    err = job_error(tmp_path, f"{task}{key}: {value}\n")
    job = tmp_path / "job.yaml"
    assert err == f"{job}: {key}: prompts, prompt_tokens, max_new_tokens and sequences are keys of task: generate"


@pytest.mark.parametrize(
    "key,value",
    [("rate_hz", "5"), ("duration_s", "10"), ("batch", "2"), ("dataset", "{kind: synthetic}")],
)
def test_inference_key_refused_in_a_generation_job(tmp_path, key, value):
    err = job_error(tmp_path, f"task: generate\n{key}: {value}\n")
    assert err.startswith(f"{tmp_path / 'job.yaml'}: {key}: a generation job"), err
    assert "\n" not in err


def test_generation_job_loads_its_keys(tmp_path):
    job = load_job(
        write_job(
            tmp_path,
            "task: generate\nprompts: p.txt\nprompt_tokens: 8\nmax_new_tokens: 4\nsequences: 3\nbatch: 1\n"
            "requests: 6\nwarmup: 1\n",
        )
    )
    keys = (job.task, job.prompts, job.prompt_tokens, job.max_new_tokens, job.sequences)
    assert keys == ("generate", "p.txt", 8, 4, 3)
    plain = load_job(write_job(tmp_path, "requests: 3\n"))
    assert (plain.task, plain.prompts, plain.max_new_tokens, plain.sequences) == ("infer", "synthetic", 32, 1)


@pytest.mark.parametrize(
    "body,field",
    [
        ("task: chat\n", "task"),
        ("task: generate\nmax_new_tokens: 0\n", "max_new_tokens"),
        ("task: generate\nsequences: -1\n", "sequences"),
        ("task: generate\nprompt_tokens: 0\n", "prompt_tokens"),
        ("task: generate\nprompts: ''\n", "prompts"),
        ("task: generate\ncompare:\n  - {max_new_tokens: 8}\n", "compare.0.max_new_tokens"),
    ],
)
def test_bad_generation_values_name_the_field(tmp_path, body, field):
    err = job_error(tmp_path, body)
    assert err.startswith(f"{tmp_path / 'job.yaml'}: {field}: "), err


# --- prompts --------------------------------------------------------------------------------


def test_prompts_file_with_commas_blanks_and_comments(tmp_path, io):
    (tmp_path / "p.txt").write_text("# two prompts\n\n1 2 3\n   \n4,5, 6  # the second\n7\t8\n")
    prompts, notes = load_prompts(gen_job(tmp_path, prompts="p.txt", warmup=0, requests=3), "job.yaml", io)
    assert prompts == [[1, 2, 3], [4, 5, 6], [7, 8]]
    assert notes == []


def test_fewer_prompts_than_sequences_are_used_again_in_order(tmp_path, io):
    (tmp_path / "p.txt").write_text("1 2\n3\n")
    prompts, notes = load_prompts(gen_job(tmp_path, prompts="p.txt", warmup=1, requests=4), "job.yaml", io)
    assert prompts == [[1, 2], [3], [1, 2], [3], [1, 2]]
    assert len(notes) == 1 and "used again in order" in notes[0] and "2 in" in notes[0]


@pytest.mark.parametrize(
    "text,line,fragment",
    [
        ("1 2\n1 x 3\n", 2, "'x' is not a token id"),
        ("1 2.5\n", 1, "'2.5' is not a token id"),
        ("# ids\n5 97\n", 2, "token id 97 is outside the model's vocabulary [0, 97)"),
        ("-1\n", 1, "token id -1 is outside"),
        ("1" * 5000 + "\n", 1, "is outside"),
    ],
)
def test_bad_prompt_line_names_file_and_line(tmp_path, io, text, line, fragment):
    p = tmp_path / "p.txt"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_prompts(gen_job(tmp_path, prompts="p.txt"), "job.yaml", io)
    assert str(e.value).startswith(f"{p}: line {line}: "), str(e.value)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_prompt_too_long_for_the_context(tmp_path, io):
    p = tmp_path / "p.txt"
    p.write_text("1 2\n" + " ".join(["3"] * 60) + "\n")
    with pytest.raises(UserError) as e:
        load_prompts(gen_job(tmp_path, prompts="p.txt", max_new_tokens=8), "job.yaml", io)
    assert str(e.value) == (
        f"{p}: line 2: prompt of 60 tokens and max_new_tokens 8 need 68 positions, the model's context is {CONTEXT}"
    )
    # exactly the context fits
    prompts, _ = load_prompts(gen_job(tmp_path, prompts="p.txt", max_new_tokens=4, requests=2, warmup=0), "j", io)
    assert [len(q) for q in prompts] == [2, 60]


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n\n"])
def test_no_prompt_in_the_file(tmp_path, io, text):
    p = tmp_path / "p.txt"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_prompts(gen_job(tmp_path, prompts="p.txt"), "job.yaml", io)
    assert str(e.value).startswith(f"{p}: no prompt")


def test_missing_prompts_file_names_the_job_key(tmp_path, io):
    with pytest.raises(UserError) as e:
        load_prompts(gen_job(tmp_path, prompts="absent.txt"), "job.yaml", io)
    assert str(e.value).startswith("job.yaml: prompts: prompts file not found")


def test_synthetic_prompts_are_seeded(tmp_path, io):
    job = gen_job(tmp_path, prompt_tokens=12, warmup=2, requests=5)
    first, notes = load_prompts(job, "job.yaml", io)
    again, _ = load_prompts(job, "job.yaml", io)
    assert first == again
    assert len(first) == 7 and all(len(p) == 12 for p in first)
    assert all(0 <= t < VOCAB for p in first for t in p)
    assert len({tuple(p) for p in first}) == 7  # each sequence its own prompt
    assert notes == ["synthetic prompts: 7 of 12 tokens"]


def test_synthetic_prompt_too_long_names_prompt_tokens(tmp_path, io):
    with pytest.raises(UserError) as e:
        load_prompts(gen_job(tmp_path, prompt_tokens=60, max_new_tokens=8), "job.yaml", io)
    assert str(e.value) == (
        "job.yaml: prompt_tokens: prompt of 60 tokens and max_new_tokens 8 need 68 positions, "
        f"the model's context is {CONTEXT}"
    )


def test_cache_tokens_is_the_longest_prompt_and_its_new_tokens():
    assert cache_tokens([[1, 2], [1, 2, 3, 4], [5]], 5) == 9


# --- prepare --------------------------------------------------------------------------------


def test_prepare_reads_the_decoder_and_prompts(tmp_path, gpt):
    job = gen_job(tmp_path, prompt_tokens=10, max_new_tokens=6, sequences=2, warmup=1, requests=3)
    setup = prepare(job, "job.yaml", gpt)
    assert isinstance(setup, GenerationSetup)
    assert setup.io.vocab == VOCAB and setup.io.context == CONTEXT and len(setup.io.state) == 4
    assert len(setup.prompts) == 4 and setup.warmup == 1
    assert (setup.max_new_tokens, setup.sequences, setup.cache_tokens) == (6, 2, 16)
    assert setup.notes == ["synthetic prompts: 4 of 10 tokens"]


def test_prepare_refuses_a_model_without_cache_inputs(tmp_path):
    model = no_cache_model(tmp_path / "m.onnx")
    with pytest.raises(UserError) as e:
        prepare(gen_job(tmp_path), "job.yaml", model)
    assert str(e.value).startswith(f"{model}: model: ") and "cache inputs" in str(e.value)


def test_prepare_refuses_a_file_that_is_not_onnx(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\xff\x00 not a model")
    with pytest.raises(UserError, match="not an ONNX model"):
        prepare(gen_job(tmp_path), "job.yaml", model)


# --- the command line -----------------------------------------------------------------------


def run_job(tmp: Path, body: str) -> subprocess.CompletedProcess:
    (tmp / "d.yaml").write_text(DEVICES)
    job = write_job(tmp, "runtime: local\nfidelity_check: false\nrequests: 2\nwarmup: 0\n" + body)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--job", str(job), "--out", str(tmp / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_refused_before_start(r: subprocess.CompletedProcess, tmp: Path, fragment: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert fragment in lines[0]
    assert "runtime:" not in r.stdout  # no runtime chosen, so no node started
    assert not (tmp / "run").exists()


def test_cli_prompt_longer_than_the_context(tmp_path, gpt):
    (tmp_path / "m.onnx").write_bytes(gpt.read_bytes())
    r = run_job(tmp_path, "task: generate\nprompt_tokens: 60\nmax_new_tokens: 8\n")
    assert_refused_before_start(r, tmp_path, "job.yaml: prompt_tokens: prompt of 60 tokens")


def test_cli_model_without_cache_inputs(tmp_path):
    no_cache_model(tmp_path / "m.onnx")
    r = run_job(tmp_path, "task: generate\n")
    assert_refused_before_start(r, tmp_path, "cache inputs")


def test_cli_a_stage_whose_cache_cannot_fit(tmp_path, gpt):
    """The model fits; 8000 sequences of 64 tokens' cache do not: refused at plan time, in one line."""
    (tmp_path / "m.onnx").write_bytes(gpt.read_bytes())
    small = "devices:\n  - {name: a, cpus: 1, memory: 200MiB}\n  - {name: b, cpus: 1, memory: 200MiB}\n"
    job = write_job(
        tmp_path,
        "runtime: local\nrequests: 2\nwarmup: 0\ntask: generate\nalgorithm: even\nstages: 2\n"
        "prompt_tokens: 32\nmax_new_tokens: 32\nsequences: 8000\n",
    )
    (tmp_path / "d.yaml").write_text(small)
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--job", str(job), "--out", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "devices[0].memory" in lines[0] and "KV cache 250.0 MiB for 8000 sequences of 64 tokens" in lines[0]


def test_partition_command_counts_a_decoder_s_cache(tmp_path, gpt):
    """`orchestrator partition --context T --sequences N`: the caches count in memory there too."""
    devices = tmp_path / "d.yaml"
    devices.write_text("devices:\n  - {name: a, cpus: 1, memory: 200MiB}\n  - {name: b, cpus: 1, memory: 200MiB}\n")

    def cut(sequences: int) -> subprocess.CompletedProcess:
        args = ["--model", str(gpt), "--devices", str(devices), "--stages", "2", "--out", str(tmp_path / "p")]
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "partition",
                *args,
                "--context",
                "64",
                "--sequences",
                str(sequences),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = cut(8000)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "KV cache 250.0 MiB for 8000 sequences of 64 tokens" in r.stderr
    r = cut(2)
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert len(plan["state"]) == 2 * 2 and not any(x.startswith("past_key_values") for x in plan["inputs"])
