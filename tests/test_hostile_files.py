"""Hostile files on disk: every devices.yaml, job.yaml, scenario and trace file either loads into
sane values or ends in one UserError line naming the file; never another exception, never a hang.

Documents are generated from valid ones (keys dropped or added, values of the wrong type, huge,
negative or non-finite numbers, bad units, unicode, deep nesting, non-mapping roots), then some are
damaged as text (YAML tokens spliced in, truncation, alias bombs) or replaced by binary garbage.
HOSTILE_FILES_EXAMPLES=N explores N random examples per property instead of the fixed seeded set.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from orchestrator.config import Job, load_devices, load_job
from orchestrator.config import Testbed as DeviceSet  # (a Test* name would be collected)
from orchestrator.errors import UserError
from orchestrator.run import configurations
from orchestrator.scenario import Scenario, load_job_scenarios, load_scenario

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)

_EXPLORE = int(os.environ.get("HOSTILE_FILES_EXAMPLES", "0"))
HOSTILE = settings(
    max_examples=_EXPLORE or 300,
    derandomize=not _EXPLORE,  # the suite replays one fixed set; exploring draws fresh ones
    database=None,  # nothing written into the repository
    deadline=timedelta(seconds=10),  # a busy 2-core host; loads_or_one_line checks 5 s
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no explain: it traces deep parses slowly
)

# --- valid documents, the starting points ---------------------------------------------------

DEVICES: dict[str, Any] = {
    "devices": [
        {
            "name": "phone",
            "type": "phone",
            "cpus": 0.5,
            "memory": "1GiB",
            "gpu": None,
            "power": {"idle_w": 0.6, "max_w": 4.5},
            "bandwidth": "20mbit",
            "delay": "10ms",
        },
        {
            "name": "laptop",
            "cpus": 1,
            "memory": "2GiB",
            "gpu": {"index": 0, "memory": "2GiB", "share": 0.25},
            "bandwidth": "100mbit",
            "delay": "2ms",
        },
    ],
    "links": [{"from": "phone", "to": "laptop", "bandwidth": "50mbit", "delay": "5ms"}],
    "partition_points": [{"input_names": ["x"], "output_names": ["y"], "device_name": "phone"}],
}

IANVS_DEVICES: dict[str, Any] = {
    "devices": [
        {"name": "Edge_1", "type": "pi", "memory": "1024", "freq": "1.5", "bandwith": "100"},
        {"name": "edge2", "type": "pi", "memory": "2048", "freq": "1.5", "bandwith": "20"},
    ],
    "partition_points": [{"input_names": ["x"], "output_names": ["y"], "device_name": "Edge_1"}],
}

SCENARIO: dict[str, Any] = {
    "loop": True,
    "period": "60s",
    "events": [
        {"at": "0s", "link": {"from": "phone", "to": "laptop"}, "trace": "trace.txt"},
        {"at": "1s", "link": {"from": "laptop", "to": "*"}, "trace": "trace.mahi", "trace_format": "mahimahi"},
        {"at": "2s", "link": {"from": "phone", "to": "*"}, "bandwidth": "2mbit", "delay": "40ms"},
        {"at": "3s", "device": "laptop", "cpus": 0.2},
        {"at": "4s", "device": "phone", "action": "leave"},
        {"at": "5s", "device": "phone", "action": "join"},
    ],
}

JOB: dict[str, Any] = {
    "name": "hostile",
    "model": "model.onnx",
    "devices": "devices.yaml",
    "runtime": "local",
    "algorithm": "even",
    "objective": "throughput",
    "stages": 2,
    "source": "phone",
    "requests": 10,
    "warmup": 1,
    "concurrency": 2,
    "batch": 1,
    "timeout_s": 60,
    "dataset": {"kind": "synthetic", "seed": 0, "preprocessing": {"size": 224}},
    "scenario": {"events": [{"at": "1s", "link": {"from": "phone", "to": "laptop"}, "bandwidth": "2mbit"}]},
    "adapt": "failover",
    "compare": [
        {"name": "file-scenario", "adapt": "static", "scenario": "scenario.yaml"},
        {"name": "same-devices", "devices": "devices.yaml", "stages": 1},
    ],
}

TWO_COLUMN = "0.000 1.7975\n1.608 1.7051\n4.323 3.1464\n"
MAHIMAHI = "6\n13\n20\n26\n33\n"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with valid neighbours for every document: devices, scenario, traces, a model file."""
    d = tmp_path_factory.mktemp("hostile")
    (d / "devices.yaml").write_text(yaml.safe_dump(DEVICES, sort_keys=False))
    (d / "scenario.yaml").write_text(yaml.safe_dump(SCENARIO, sort_keys=False))
    (d / "trace.txt").write_text(TWO_COLUMN)
    (d / "trace.mahi").write_text(MAHIMAHI)
    (d / "model.onnx").write_bytes(b"not read before the run starts")
    return d


# --- hostile values ---------------------------------------------------------------------------

NUMBER_TEXT = st.one_of(
    st.sampled_from(
        ["0", "-1", "-5", "1e400", "1e308", "1e-400", "0.0000001", "nan", "inf", "-inf", "1_000", "9" * 400]
        + ["٣", "²", "0x10", "1e", ".5", "5.", "+3", "1/2", "20", "0.5", "1024"]
    ),
    st.floats().map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
UNIT = st.sampled_from(
    ["", "bit", "kbit", "mbit", "gbit", "tbit", "bps", "KiB", "MiB", "GiB", "KB", "GB", "B", "k"]
    + ["ns", "us", "µs", "ms", "s", "sec", "min", "h", "parsecs", "mbit/s", "²", "MİB", "ﬀ"]
)
UNIT_TEXT = st.builds(lambda n, sp, u: f"{n}{sp}{u}", NUMBER_TEXT, st.sampled_from(["", " ", "\t", "\u3000"]), UNIT)
NASTY_TEXT = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "phone\n", "a\nb", "a\rb", "\u2028", "\x85", "\ufeff", "*", "~", "-", "..", "/"]
    + ["../../etc/passwd", "/dev/null", "/proc/self/mem", "x" * 300, ("d" * 200 + "/") * 30, "\udcff", "$HOME"]
    + ["{{ x }}", "%s%n", "phone", "laptop", "PHONE", "ｐｈｏｎｅ", "a" * 100_000]
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63, 2**64, 10**300]),  # longer ints: "9" * 5000 among the TOKENS
    st.floats(),  # nan, inf, subnormals, -0.0 among them
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    UNIT_TEXT,
    NASTY_TEXT,
    st.text(max_size=30),
    st.binary(max_size=20),  # written as !!binary
    st.dates(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4),
    ),
    max_leaves=8,
)
FIELD_NAMES = [
    "name", "type", "cpus", "memory", "gpu", "power", "bandwidth", "bandwith", "delay", "links", "devices",
    "partition_points", "from", "to", "at", "link", "device", "trace", "trace_format", "action", "events", "loop",
    "period", "file", "base_dir", "traces", "model", "scenario", "compare", "dataset", "requests", "source", "<<",
]  # fmt: skip
KEYS = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12), st.integers(), st.none(), st.booleans())

# Text spliced into a rendered document: YAML syntax, tags that construct (or refuse) objects, bad dates
TOKENS = [
    "&a ", "*a", "*undefined", "!!binary ", "!!python/object/apply:os.system ['true'] ", "!!int ", "!!float ",
    "!!timestamp ", "!!bool ", "!!null ", "!!int ''", "!!timestamp null", "!!set ", "!!omap ", "!!str ", "!foo ",
    "<<: ", "<<: *a", "[", "]", "{", "}", ": ", "- ", "? ",
    "\t", "'", '"', "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "|", ">", "\x00", "\ufeff", "\x85",
    "2001-13-45", "2001-02-30 25:61:61", "\\", "#", ",", "\n  ", "\n", "9" * 5000, "0o99", "0x", ".nan", ".inf",
]  # fmt: skip


def _nested(depth: int, flow: bool) -> str:
    if flow:
        return "[" * depth + "]" * depth
    return "".join("  " * i + "- \n" for i in range(min(depth, 400)))  # indented: 3000 levels is 9 MB


def alias_bomb(width: int, depth: int) -> str:
    """A flow list whose last element expands to width**depth leaves (billion laughs)."""
    levels = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, depth)]
    return "[" + ", ".join(levels) + "]"


# --- generated documents -----------------------------------------------------------------------


def _slots(doc: Any, at: tuple = ()) -> list[tuple]:
    """Every place in a document: the root, each mapping value and each list item."""
    out = [at]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _slots(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _slots(v, (*at, i))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _like(old: Any) -> st.SearchStrategy:
    """Hostile values of the old value's kind: a value with a unit gets other numbers and units, a
    number other numbers, a name other text (the checks that parse are reached more often)."""
    if isinstance(old, str) and old[:1].isdigit():
        return st.one_of(UNIT_TEXT, NUMBERS)
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        return st.one_of(NUMBERS, NUMBER_TEXT)
    if isinstance(old, str):
        return st.one_of(NASTY_TEXT, st.text(max_size=30))
    return VALUES


def _mutate(data: st.DataObject, doc: Any) -> Any:
    """One to three structural changes at places drawn in the document."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        path = data.draw(st.sampled_from(_slots(doc)), label="at")
        op = data.draw(st.sampled_from(["replace"] * 4 + ["drop", "add", "wrap", "text", "duplicate"]), label="op")
        if not path:  # the root itself
            if op in ("replace", "drop", "text"):
                doc = None if op == "drop" else data.draw(VALUES) if op == "replace" else str(doc)[:200]
            elif op == "wrap":
                doc = [doc]
            elif op == "add" and isinstance(doc, dict):
                doc[data.draw(KEYS)] = data.draw(VALUES)
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == "replace":
            parent[key] = data.draw(st.one_of(_like(parent[key]), VALUES), label="value")
        elif op == "drop":
            del parent[key]
        elif op == "wrap":
            parent[key] = data.draw(st.sampled_from([[parent[key]], {"x": parent[key]}]))
        elif op == "text":
            parent[key] = str(parent[key])
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif op == "add" and isinstance(parent[key], dict):
            parent[key][data.draw(KEYS, label="key")] = data.draw(VALUES, label="value")
        elif op == "add" and isinstance(parent[key], list):
            parent[key].append(data.draw(VALUES, label="value"))
    return doc


def _render(data: st.DataObject, doc: Any) -> bytes:
    """The document as YAML bytes, sometimes damaged as text."""
    text = yaml.safe_dump(
        doc,
        sort_keys=False,
        allow_unicode=data.draw(st.booleans(), label="unicode"),
        default_flow_style=data.draw(st.sampled_from([False, True, None]), label="flow"),
    )
    damage = data.draw(st.sampled_from(["none", "none", "splice", "truncate", "bomb", "nest", "encoding"]))
    if damage == "splice":
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(text)))
            text = text[:at] + data.draw(st.sampled_from(TOKENS), label="token") + text[at:]
    elif damage == "truncate":
        text = text[: data.draw(st.integers(0, len(text)))]
    elif damage in ("bomb", "nest"):
        # replace one value (or the whole document) by an alias bomb or deep nesting
        lines = text.splitlines(keepends=True) or [""]
        i = data.draw(st.integers(0, len(lines) - 1))
        if damage == "bomb":
            value = alias_bomb(data.draw(st.integers(2, 6)), data.draw(st.integers(2, 6)))
        else:
            value = _nested(data.draw(st.sampled_from([50, 70, 400, 3000])), flow=data.draw(st.booleans()))
        head, sep, _ = lines[i].partition(": ")
        lines[i] = (head + sep + value + "\n") if sep else value + "\n"
        text = "".join(lines)
    elif damage == "encoding":
        enc = data.draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252", "utf-8-sig"]))
        return text.encode(enc, errors="replace")
    return text.encode("utf-8", errors="surrogatepass")


def hostile_file(seed: Any) -> st.SearchStrategy[bytes]:
    """A damaged version of `seed`, or garbage."""

    @st.composite
    def build(draw: Callable) -> bytes:
        kind = draw(st.sampled_from(["mutated"] * 6 + ["garbage", "text"]))
        if kind == "garbage":
            return draw(st.binary(max_size=2000))
        if kind == "text":
            return draw(st.text(max_size=300)).encode("utf-8", errors="surrogatepass")
        data = draw(st.data())
        return _render(data, _mutate(data, seed))

    return build()


# --- what every outcome must look like -------------------------------------------------------


def _finite(*values: float | None) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def sane_testbed(tb: DeviceSet) -> None:
    assert tb.devices
    for d in tb.devices:
        assert d.cpus > 0 and math.isfinite(d.cpus), d
        assert d.memory > 0 and (d.bandwidth is None or d.bandwidth > 0), d
        assert d.delay >= 0 and _finite(d.delay, d.power.idle_w, d.power.max_w), d
        assert d.gpu is None or (d.gpu.memory is None or d.gpu.memory > 0), d
        assert "\n" not in d.name
    for link in tb.links:
        assert (link.bandwidth is None or link.bandwidth > 0) and (link.delay is None or link.delay >= 0), link
        assert _finite(link.delay), link


def sane_scenario(scn: Scenario) -> None:
    for e in scn.events:
        assert e.at >= 0 and _finite(e.at, e.delay, e.cpus), e
        assert e.bandwidth is None or e.bandwidth > 0, e
    assert math.isfinite(scn.period_s())
    for trace in scn.traces.values():
        assert trace.steps and math.isfinite(trace.duration_s) and trace.duration_s > 0, trace
        assert all(math.isfinite(t) and t >= 0 and r >= 0 for t, r in trace.steps), trace


def sane_job(job: Job) -> None:
    assert _finite(job.duration_s, job.rate_hz, job.timeout_s), job
    assert job.name and "/" not in job.name and "\n" not in job.name, job.name


def loads_or_one_line(load: Callable[[], Any], names: list[str]) -> UserError | Any:
    """Run a loader: it returns, or raises a UserError of one line that names one of `names`.
    Anything else (another exception, a slow load) fails the property."""
    t0 = time.perf_counter()
    try:
        out = load()
    except UserError as e:
        text = str(e)
        assert len(text.splitlines()) == 1 and "\n" not in text and "\r" not in text, repr(text)
        assert e.file, repr(text)
        assert any(n in text for n in names), (names, text)
        out = e
    assert time.perf_counter() - t0 < 5.0, "a small file took seconds to load"
    return out


# --- properties --------------------------------------------------------------------------------


@HOSTILE
@given(raw=st.one_of(hostile_file(DEVICES), hostile_file(IANVS_DEVICES)))
def test_devices_file_loads_or_says_one_line(work: Path, raw: bytes) -> None:
    path = work / "hostile_devices.yaml"
    path.write_bytes(raw)
    out = loads_or_one_line(lambda: load_devices(path), [path.name])
    if isinstance(out, DeviceSet):
        sane_testbed(out)


@HOSTILE
@given(raw=hostile_file(SCENARIO))
def test_scenario_file_loads_or_says_one_line(work: Path, raw: bytes) -> None:
    path = work / "hostile_scenario.yaml"
    path.write_bytes(raw)
    testbed = load_devices(work / "devices.yaml")
    out = loads_or_one_line(
        lambda: load_scenario(path.name, base_dir=work, testbed=testbed, file=str(work / "job.yaml")),
        [path.name],
    )
    if isinstance(out, Scenario):
        sane_scenario(out)


def load_for_run(job_file: Path) -> Job:
    """What `orchestrator run` reads and checks before it starts anything: the job, the devices of
    each configuration, the scenarios and their traces, the model's path."""
    job = load_job(job_file)
    job.path(job.model).resolve().exists()
    configs = configurations(job, str(job_file))
    load_job_scenarios(job, str(job_file), configs)
    return job


@HOSTILE
@given(raw=hostile_file(JOB))
def test_job_file_loads_or_says_one_line(work: Path, raw: bytes) -> None:
    path = work / "hostile_job.yaml"
    path.write_bytes(raw)
    # a job names other files: a message may name one of them (a devices file that is not there)
    out = loads_or_one_line(lambda: load_for_run(path), [path.name, "devices", ".yaml", "/"])
    if isinstance(out, Job):
        sane_job(out)


def _trace_rows(data: st.DataObject, mahimahi: bool) -> str:
    """Rows of a trace, mostly of the right shape, with hostile numbers and separators."""
    if mahimahi:
        cell = st.one_of(st.integers(0, 10**4).map(str), st.sampled_from(["9" * 30, "9" * 5000, "²", "٣", "-1", "1.5"]))
        rows = data.draw(st.lists(st.tuples(cell), max_size=40))
    else:
        cell = st.one_of(NUMBER_TEXT, st.floats(0, 100).map(str))
        rows = data.draw(st.lists(st.lists(cell, min_size=1, max_size=3).map(tuple), max_size=40))
    sep = data.draw(st.sampled_from([" ", "\t", "  ", ",", "\u2003"]))
    eol = data.draw(st.sampled_from(["\n", "\r\n", "\r", "\x85", "\u2028"]))
    lines = [sep.join(r) for r in rows]
    if data.draw(st.booleans()):
        lines.insert(data.draw(st.integers(0, len(lines))), data.draw(st.sampled_from(["# a comment", "", "  "])))
    return eol.join(lines)


@HOSTILE
@given(data=st.data())
def test_trace_file_loads_or_says_one_line(work: Path, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["two-column", "mahimahi", "garbage"]))
    path = work / "hostile_trace.txt"
    if kind == "garbage":
        path.write_bytes(data.draw(st.binary(max_size=500)))
    else:
        path.write_bytes(_trace_rows(data, kind == "mahimahi").encode("utf-8", errors="surrogatepass"))
    fmt = data.draw(st.sampled_from([None, "two-column", "mahimahi"]))
    event = {"at": "0s", "link": {"from": "phone", "to": "laptop"}, "trace": path.name}
    if fmt:
        event["trace_format"] = fmt
    scenario = work / "trace_scenario.yaml"
    scenario.write_text(yaml.safe_dump({"events": [event]}))
    testbed = load_devices(work / "devices.yaml")
    out = loads_or_one_line(
        lambda: load_scenario(scenario.name, base_dir=work, testbed=testbed, file="job.yaml"), [scenario.name]
    )
    if isinstance(out, Scenario):
        sane_scenario(out)


# --- explicit cases: the big bombs, and the command line ---------------------------------------


@pytest.mark.parametrize("seed", ["devices", "ianvs", "scenario", "job"])
def test_big_alias_bomb_anywhere_is_not_expanded(work: Path, seed: str) -> None:
    """A 43-million-leaf alias bomb at every place of a valid document loads or fails fast."""
    doc = {"devices": DEVICES, "ianvs": IANVS_DEVICES, "scenario": SCENARIO, "job": JOB}[seed]
    marker = "BOMB_HERE"
    bomb = alias_bomb(9, 8)
    testbed = load_devices(work / "devices.yaml")
    path = work / f"bomb_{seed}.yaml"
    for at in _slots(doc):
        d = copy.deepcopy(doc)
        if at:
            _get(d, at[:-1])[at[-1]] = marker
        else:
            d = marker
        path.write_text(yaml.safe_dump(d, sort_keys=False).replace(marker, bomb))
        if seed == "scenario":
            load = lambda: load_scenario(path.name, base_dir=work, testbed=testbed, file="job.yaml")  # noqa: E731
        elif seed == "job":
            load = lambda: load_for_run(path)  # noqa: E731
        else:
            load = lambda: load_devices(path)  # noqa: E731
        loads_or_one_line(load, [path.name])


CLI_CASES = [
    ("binary-garbage", bytes(range(256)) * 4),
    ("deep-nesting", b"devices: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    ("bad-date", b"devices:\n  - {name: phone, memory: 2001-13-45}\n"),
    ("huge-rate", b"devices:\n  - {name: phone, bandwidth: 1e400mbit}\n"),
    ("newline-key", b'devices:\n  - {name: phone, "cpu\\ns": 1}\n'),
    ("alias-bomb", ("devices: " + alias_bomb(9, 8) + "\n").encode()),
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def _one_line_exit_2(r: subprocess.CompletedProcess, name: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert name in r.stderr, r.stderr


@pytest.mark.parametrize("case,raw", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_partition_bad_devices(tmp_path: Path, case: str, raw: bytes) -> None:
    devices = tmp_path / "bad_devices.yaml"
    devices.write_bytes(raw)
    model = ROOT / "tests" / "fixtures" / "squeezenet1_1.onnx"
    r = _cli("partition", "--model", str(model), "--devices", str(devices), "--out", str(tmp_path / "out"))
    _one_line_exit_2(r, devices.name)
    assert not (tmp_path / "out" / "plan.json").exists()


_JOB_HEAD = "name: x\nmodel: model.onnx\ndevices: devices.yaml\n"
JOB_CLI_CASES = [
    ("bad-yaml", "name: x\nmodel: [\n"),
    ("name-escapes-runs", "name: ../../escaped\nmodel: model.onnx\ndevices: devices.yaml\n"),
    ("nul-in-path", 'name: x\nmodel: model.onnx\ndevices: "devices\\0.yaml"\n'),
    ("inline-scenario-overflow", _JOB_HEAD + "scenario: {events: [{at: 1e999s, device: phone, cpus: 1}]}\n"),
    ("bad-trace", _JOB_HEAD + "scenario: {events: [{at: 0s, link: {from: phone, to: laptop}, trace: t.mahi}]}\n"),
]


@pytest.mark.parametrize("case,text", JOB_CLI_CASES, ids=[c[0] for c in JOB_CLI_CASES])
def test_cli_run_bad_job(work: Path, tmp_path: Path, case: str, text: str) -> None:
    for name in ("devices.yaml", "model.onnx"):
        (tmp_path / name).write_bytes((work / name).read_bytes())
    (tmp_path / "t.mahi").write_text("1\n" + "9" * 5000 + "\n")
    job = tmp_path / "bad_job.yaml"
    job.write_text(text)
    r = _cli("run", "--job", str(job), "--runtime", "local", "--out", str(tmp_path / "run"))
    _one_line_exit_2(r, job.name)
    assert not (tmp_path / "run").exists() and not (ROOT.parent / "escaped").exists()
