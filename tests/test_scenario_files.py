"""Scenario files: traces in both formats, every bad scenario caught before anything starts (in
one line naming the file and the field), the timeline they unroll into, and the conditions it makes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from orchestrator import config
from orchestrator.cli import main
from orchestrator.config import load_devices, load_job
from orchestrator.errors import UserError
from orchestrator.scenario import (
    HELD_RATE_BPS,
    MAHIMAHI_BIN_S,
    Change,
    Conditions,
    link_changes,
    load_job_scenarios,
    load_scenario,
    read_trace,
    timeline,
)

ROOT = Path(__file__).resolve().parents[1]
EDGE4 = ROOT / "devices" / "edge4.yaml"


@pytest.fixture(scope="module")
def edge4() -> config.Testbed:
    return load_devices(EDGE4)


def write(folder: Path, name: str, text: str) -> Path:
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def scenario_file(folder: Path, text: str, testbed: config.Testbed, name: str = "scn.yaml"):
    write(folder, name, text)
    return load_scenario(name, base_dir=folder, testbed=testbed, file="job.yaml")


# --- traces ---------------------------------------------------------------------------------


def test_two_column_trace_told_by_content(tmp_path):
    p = write(tmp_path, "t.txt", "3.0\t1.5\n4.0 0\n6.0 0.25\n\n7.5 6\n")
    tr = read_trace(p)
    assert tr.format == "two-column"
    # times count from the first line; Mbit/s become bit/s
    assert tr.steps == ((0.0, 1_500_000), (1.0, 0), (3.0, 250_000), (4.5, 6_000_000))
    assert tr.duration_s == pytest.approx(4.5 + 1.5)  # the last step lasts the median step
    assert [tr.rate_at(t) for t in (-1, 0, 0.99, 1.0, 2.9, 3.0, 5.0, 100)] == [
        1_500_000,
        1_500_000,
        1_500_000,
        0,
        0,
        250_000,
        6_000_000,
        6_000_000,
    ]
    assert tr.allowed_bits(0.5, 3.5) == pytest.approx(0.5 * 1.5e6 + 0 + 0.5 * 0.25e6)
    assert tr.allowed_bits(0, tr.duration_s) == pytest.approx(1.5e6 + 0.25e6 * 1.5 + 6e6 * 1.5)
    assert tr.allowed_bits(2, 2) == 0


def test_mahimahi_trace_told_by_content(tmp_path):
    # bin [0, 100 ms): 3 opportunities; [100, 200): none; [200, 300]: 1, plus the period's last line
    p = write(tmp_path, "t.mahi", "0\n0\n50\n250\n300\n")
    tr = read_trace(p)
    assert tr.format == "mahimahi"
    per = 1500 * 8 / MAHIMAHI_BIN_S
    assert tr.steps == ((0.0, int(3 * per)), (0.1, 0), (0.2, int(2 * per)))
    assert tr.duration_s == pytest.approx(0.3)
    assert tr.allowed_bits(0, tr.duration_s) == pytest.approx(5 * 1500 * 8)
    # a last timestamp inside a bin rounds the trace up to the bin's end
    assert read_trace(write(tmp_path, "u.mahi", "10\n120\n")).duration_s == pytest.approx(0.2)


def test_forced_format(tmp_path):
    ints = write(tmp_path, "ints.txt", "0\n20\n40\n")
    assert read_trace(ints).format == "mahimahi"
    with pytest.raises(UserError, match="line 1: expected two numbers"):
        read_trace(ints, "two-column")
    pairs = write(tmp_path, "pairs.txt", "0 1\n1 2\n")
    assert read_trace(pairs, "two-column").steps == ((0.0, 1_000_000), (1.0, 2_000_000))
    with pytest.raises(UserError, match="line 1: expected one timestamp"):
        read_trace(pairs, "mahimahi")


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("", "empty trace"),
        ("# only a comment\n\n", "empty trace"),
        ("0 1\n1 fast\n", "line 2: '1 fast' is not two numbers"),
        ("0 1 2\n", "line 1: expected two numbers"),
        ("0 1\n2 -1\n", "line 2: times and rates cannot be negative"),
        ("0 1\n2 1\n2 3\n", "line 3: time 2 s does not follow 2 s"),
        ("0 1\nnan 1\n", "line 2"),
        ("10\n5\n", "line 2: timestamp 5 ms comes before 10 ms"),
        ("0\n0\n", "the last timestamp must be after 0 ms"),
    ],
)
def test_malformed_traces(tmp_path, text, fragment):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        read_trace(p)
    assert e.value.file == str(p)
    assert fragment in e.value.message


def test_missing_trace_names_the_scenario_when_told(tmp_path):
    with pytest.raises(UserError) as e:
        read_trace(tmp_path / "nope.txt", file="scn.yaml", field="events[0].trace")
    assert (e.value.file, e.value.field) == ("scn.yaml", "events[0].trace")
    assert "nope.txt" in e.value.message and "not found" in e.value.message


def test_repository_traces_have_the_public_sets_shape():
    txt = read_trace(ROOT / "traces" / "train_hsdpa.txt")
    mahi = read_trace(ROOT / "traces" / "train_hsdpa.mahi")
    assert (txt.format, mahi.format) == ("two-column", "mahimahi")
    for tr in (txt, mahi):
        assert 80 <= tr.duration_s <= 100
    rates = [r for _, r in txt.steps]
    gaps = [b[0] - a[0] for a, b in zip(txt.steps, txt.steps[1:], strict=False)]
    assert 100_000 <= min(r for r in rates if r) and max(rates) <= 6_000_000
    assert max(rates) >= 4_000_000
    assert 2 <= rates.count(0) <= 6
    assert 0.2 <= min(gaps) and max(gaps) <= 3.0
    # the same ride: the same bits over the whole and over each 10 s (within one packet a bin)
    assert mahi.allowed_bits(0, mahi.duration_s) == pytest.approx(txt.allowed_bits(0, mahi.duration_s), rel=0.01)
    for t0 in range(0, 80, 10):
        assert mahi.allowed_bits(t0, t0 + 10) == pytest.approx(txt.allowed_bits(t0, t0 + 10), abs=100 * 12_000)
    # mahimahi files are bare numbers
    assert all(line.isdigit() for line in (ROOT / "traces" / "train_hsdpa.mahi").read_text().splitlines())


def test_trace_script_writes_the_same_bytes(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_traces.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("train_hsdpa.txt", "train_hsdpa.mahi"):
        assert (tmp_path / name).read_bytes() == (ROOT / "traces" / name).read_bytes(), name


# --- the repository's scenarios ------------------------------------------------------------


def repo_scenario(name: str, testbed: config.Testbed):
    return load_scenario(f"{name}.yaml", base_dir=ROOT / "scenarios", testbed=testbed, file="job.yaml")


def test_tunnel_timeline(edge4):
    changes = timeline(repo_scenario("tunnel", edge4), edge4)
    got = [(c.at_s, c.kind, c.link or c.device, c.rate_bps, c.delay_s) for c in changes]
    assert got == [
        (8.0, "link", "phone->laptop", 2_000_000, None),
        (8.0, "link", "laptop->phone", 2_000_000, None),
        (10.0, "link", "phone->laptop", 200_000, None),
        (10.0, "link", "laptop->phone", 200_000, None),
        (40.0, "link", "phone->laptop", 2_000_000, None),
        (40.0, "link", "laptop->phone", 2_000_000, None),
        (42.0, "link", "phone->laptop", 50_000_000, pytest.approx(0.010)),
        (42.0, "link", "laptop->phone", 200_000_000, pytest.approx(0.002)),
        (50.0, "leave", "watch", None, None),
    ]
    # back to what devices.yaml configures at 42 s
    cond = Conditions.initial(edge4)
    for c in changes:
        if c.at_s <= 42:
            cond.apply(c)
    now = cond.current_testbed()
    for a, b in (("phone", "laptop"), ("laptop", "phone")):
        assert now.link(a, b) == edge4.link(a, b)


def test_train_and_thermal(edge4):
    train = repo_scenario("train", edge4)
    trace = train.trace(0)
    changes = timeline(train, edge4)
    assert {c.link for c in changes} == {"phone->laptop"}
    assert changes[0].at_s == 0.0 and changes[0].rate_bps == trace.steps[0][1]
    assert sum(1 for c in changes if c.rate_bps == 0) == 3
    thermal = timeline(repo_scenario("thermal", edge4), edge4)
    assert thermal == [Change(10.0, "cpus", 0, device="phone", cpus=0.2)]
    assert edge4.device("phone").cpus == 0.4


# --- bad scenarios --------------------------------------------------------------------------

GOOD_EVENT = "  - {at: 1s, device: phone, cpus: 0.3}\n"

# (case id, scenario text, the field named, a fragment of the message)
BAD = [
    ("unknown-device", "events:\n  - {at: 1s, device: tv, cpus: 1}\n", "events[0].device", "unknown device 'tv'"),
    (
        "unknown-link-to",
        "events:\n" + GOOD_EVENT + "  - {at: 2s, link: {from: phone, to: tv}, bandwidth: 1mbit}\n",
        "events[1].link.to",
        "unknown device 'tv'",
    ),
    (
        "unknown-link-from",
        "events:\n  - {at: 2s, link: {from: tv, to: phone}, delay: 5ms}\n",
        "events[0].link.from",
        "unknown device 'tv'",
    ),
    (
        "star-from",
        "events:\n  - {at: 2s, link: {from: '*', to: phone}, delay: 5ms}\n",
        "events[0].link.from",
        "only for `to`",
    ),
    (
        "self-link",
        "events:\n  - {at: 2s, link: {from: phone, to: phone}, bandwidth: 1mbit}\n",
        "events[0].link.to",
        "two different devices",
    ),
    ("negative-time", "events:\n  - {at: -5s, device: phone, cpus: 1}\n", "events[0].at", "cannot be negative"),
    ("unparsable-time", "events:\n  - {at: soon, device: phone, cpus: 1}\n", "events[0].at", "is not a delay"),
    ("time-without-unit", "events:\n  - {at: 5, device: phone, cpus: 1}\n", "events[0].at", "no unit"),
    ("missing-time", "events:\n  - {device: phone, cpus: 1}\n", "events[0].at", "required field is missing"),
    (
        "missing-trace",
        "events:\n  - {at: 0s, link: {from: phone, to: laptop}, trace: nowhere.txt}\n",
        "events[0].trace",
        "not found",
    ),
    (
        "malformed-trace",
        "events:\n  - {at: 0s, link: {from: phone, to: laptop}, trace: bad.txt}\n",
        "events[0].trace",
        "line 2",
    ),
    (
        "forced-format-mismatch",
        "events:\n  - {at: 0s, link: {from: phone, to: laptop}, trace: good.txt, trace_format: mahimahi}\n",
        "events[0].trace",
        "expected one timestamp",
    ),
    (
        "unknown-trace-format",
        "events:\n  - {at: 0s, link: {from: phone, to: laptop}, trace: good.txt, trace_format: pcap}\n",
        "events[0].trace_format",
        "two-column",
    ),
    ("unknown-action", "events:\n  - {at: 1s, device: phone, action: explode}\n", "events[0].action", "'explode'"),
    (
        "join-never-left",
        "events:\n  - {at: 9s, device: watch, action: leave}\n  - {at: 5s, device: watch, action: join}\n",
        "events[1].action",
        "never left",
    ),
    (
        "leave-twice",
        "events:\n  - {at: 1s, device: watch, action: leave}\n  - {at: 2s, device: watch, action: crash}\n",
        "events[1].action",
        "already gone",
    ),
    (
        "cpus-after-leave",
        "events:\n  - {at: 1s, device: watch, action: crash}\n  - {at: 2s, device: watch, cpus: 0.1}\n",
        "events[1].cpus",
        "gone",
    ),
    (
        "unknown-field",
        "events:\n  - {at: 1s, device: phone, cpus: 1, bandwith: 1mbit}\n",
        "events[0].bandwith",
        "unknown field",
    ),
    ("unknown-top-field", "loops: true\nevents:\n" + GOOD_EVENT, "loops", "unknown field"),
    ("reserved-top-field", "file: x.yaml\nevents:\n" + GOOD_EVENT, "file", "unknown field"),
    ("no-events-key", "loop: false\n", "events", "required field is missing"),
    ("no-events", "events: []\n", "events", "at least one event"),
    ("events-not-a-list", "events: {at: 1s}\n", "events", "list of events"),
    ("zero-cpus", "events:\n  - {at: 1s, device: phone, cpus: 0}\n", "events[0].cpus", "greater than 0"),
    (
        "bad-rate",
        "events:\n  - {at: 1s, link: {from: phone, to: laptop}, bandwidth: fast}\n",
        "events[0].bandwidth",
        "rate",
    ),
    (
        "cpus-and-action",
        "events:\n  - {at: 1s, device: phone, cpus: 1, action: leave}\n",
        "events[0].action",
        "not both",
    ),
    ("device-and-nothing", "events:\n  - {at: 1s, device: phone}\n", "events[0].device", "needs cpus or an action"),
    (
        "link-and-nothing",
        "events:\n  - {at: 1s, link: {from: phone, to: laptop}}\n",
        "events[0].link",
        "needs bandwidth",
    ),
    (
        "link-and-cpus",
        "events:\n  - {at: 1s, link: {from: phone, to: laptop}, cpus: 1}\n",
        "events[0].cpus",
        "a link event takes",
    ),
    (
        "device-and-bandwidth",
        "events:\n  - {at: 1s, device: phone, bandwidth: 1mbit}\n",
        "events[0].bandwidth",
        "a device event",
    ),
    (
        "trace-and-bandwidth",
        "events:\n  - {at: 1s, link: {from: phone, to: laptop}, trace: good.txt, bandwidth: 1mbit}\n",
        "events[0].trace",
        "another event",
    ),
    ("neither", "events:\n  - {at: 1s}\n", "events[0]", "a link (`link`) or a device"),
    (
        "link-and-device",
        "events:\n  - {at: 1s, device: phone, link: {from: phone, to: laptop}, delay: 1ms}\n",
        "events[0].device",
        "not both",
    ),
    (
        "loop-without-join",
        "loop: true\nevents:\n  - {at: 5s, device: watch, action: leave}\n",
        "loop",
        "never joins",
    ),
    ("loop-without-period", "loop: true\nevents:\n  - {at: 0s, device: phone, cpus: 1}\n", "loop", "needs a period"),
    (
        "event-after-period",
        "loop: true\nperiod: 10s\nevents:\n  - {at: 12s, device: phone, cpus: 1}\n",
        "events[0].at",
        "before the period",
    ),
    ("not-a-mapping", "- {at: 1s}\n", None, "expected a mapping"),
]


def trace_files(folder: Path) -> None:
    write(folder, "good.txt", "0 1\n1 2\n")
    write(folder, "bad.txt", "0 1\n1 x\n")


@pytest.mark.parametrize("case,text,field,fragment", BAD, ids=[c[0] for c in BAD])
def test_bad_scenario_file(tmp_path, edge4, case, text, field, fragment):
    trace_files(tmp_path)
    path = write(tmp_path, "scn.yaml", text)
    with pytest.raises(UserError) as e:
        load_scenario("scn.yaml", base_dir=tmp_path, testbed=edge4, file="job.yaml")
    assert e.value.file == str(path)
    assert e.value.field == field
    assert fragment in e.value.message, e.value.message
    assert len(str(e.value).splitlines()) == 1


def test_bad_inline_scenario_names_the_job_file(tmp_path, edge4):
    import yaml

    spec = yaml.safe_load("events:\n  - {at: 2s, link: {from: phone, to: tv}, bandwidth: 1mbit}\n")
    with pytest.raises(UserError) as e:
        load_scenario(spec, base_dir=tmp_path, testbed=edge4, file="job.yaml", field="compare[1].scenario")
    assert (e.value.file, e.value.field) == ("job.yaml", "compare[1].scenario.events[0].link.to")
    spec = {"events": [{"at": "0s", "link": {"from": "phone", "to": "laptop"}, "trace": "t.txt"}]}
    with pytest.raises(UserError) as e:
        load_scenario(spec, base_dir=tmp_path, testbed=edge4, file="job.yaml")
    assert (e.value.file, e.value.field) == ("job.yaml", "scenario.events[0].trace")
    assert str(tmp_path / "t.txt") in e.value.message
    # inline traces resolve from the job's folder
    write(tmp_path, "t.txt", "0 1\n")
    assert load_scenario(spec, base_dir=tmp_path, testbed=edge4, file="job.yaml").trace(0).steps == ((0.0, 1_000_000),)


def test_missing_scenario_file_names_the_job(tmp_path, edge4):
    with pytest.raises(UserError) as e:
        load_scenario("nope.yaml", base_dir=tmp_path, testbed=edge4, file="job.yaml")
    assert (e.value.file, e.value.field) == ("job.yaml", "scenario")
    assert "nope.yaml" in e.value.message


def test_scenario_traces_resolve_from_the_scenario_folder(tmp_path, edge4):
    write(tmp_path, "traces/t.mahi", "0\n100\n")
    write(
        tmp_path,
        "scenarios/s.yaml",
        "events:\n  - {at: 1s, link: {from: phone, to: laptop}, trace: ../traces/t.mahi}\n",
    )
    scn = load_scenario("scenarios/s.yaml", base_dir=tmp_path, testbed=edge4, file="job.yaml")
    assert scn.trace(0).format == "mahimahi"
    assert scn.file == str(tmp_path / "scenarios" / "s.yaml")


# --- timeline -------------------------------------------------------------------------------


def test_star_expands_to_every_other_device(tmp_path, edge4):
    scn = scenario_file(tmp_path, "events:\n  - {at: 3s, link: {from: phone, to: '*'}, delay: 40ms}\n", edge4)
    changes = timeline(scn, edge4)
    assert [(c.src, c.dst, c.delay_s, c.rate_bps) for c in changes] == [
        ("phone", "laptop", 0.04, None),
        ("phone", "tablet", 0.04, None),
        ("phone", "watch", 0.04, None),
    ]
    assert all(c.at_s == 3.0 and c.event == 0 for c in changes)


def test_trace_steps_merged_and_in_time_order(tmp_path, edge4):
    write(tmp_path, "t.txt", "0 1\n1 1\n2 0\n3 0\n4 2\n")
    text = """
    events:
      - {at: 2.5s, device: phone, cpus: 0.3}
      - {at: 10s, link: {from: laptop, to: phone}, trace: t.txt}
      - {at: 0s, link: {from: phone, to: laptop}, trace: t.txt}
    """
    changes = timeline(scenario_file(tmp_path, text, edge4), edge4)
    assert [(c.at_s, c.kind, c.event, c.rate_bps) for c in changes] == [
        (0.0, "link", 2, 1_000_000),
        (2.0, "link", 2, 0),
        (2.5, "cpus", 0, None),
        (4.0, "link", 2, 2_000_000),
        (10.0, "link", 1, 1_000_000),
        (12.0, "link", 1, 0),
        (14.0, "link", 1, 2_000_000),
    ]
    assert link_changes(changes) == [c for c in changes if c.kind != "cpus"]
    assert [c.at_s for c in timeline(scenario_file(tmp_path, text, edge4), edge4, until_s=10.0)] == [0, 2, 2.5, 4]


def test_loop_repeats_until_asked(tmp_path, edge4):
    write(tmp_path, "t.txt", "0 1\n1 3\n")  # lasts 2 s
    text = """
    loop: true
    events:
      - {at: 1s, link: {from: phone, to: laptop}, trace: t.txt}
      - {at: 0.5s, device: watch, action: leave}
      - {at: 2s, device: watch, action: join}
    """
    scn = scenario_file(tmp_path, text, edge4)
    assert scn.period_s() == 3.0  # the trace's end
    with pytest.raises(ValueError, match="until_s"):
        timeline(scn, edge4)
    got = [(c.at_s, c.kind, c.rate_bps) for c in timeline(scn, edge4, until_s=7.0)]
    assert got == [
        (0.5, "leave", None),
        (1.0, "link", 1_000_000),
        (2.0, "link", 3_000_000),
        (2.0, "join", None),
        (3.5, "leave", None),
        (4.0, "link", 1_000_000),
        (5.0, "link", 3_000_000),
        (5.0, "join", None),
        (6.5, "leave", None),
    ]


def test_loop_with_a_period_cuts_a_longer_trace(tmp_path, edge4):
    write(tmp_path, "t.txt", "0 1\n1 2\n2 3\n3 4\n")
    text = "loop: true\nperiod: 2.5s\nevents:\n  - {at: 0s, link: {from: phone, to: laptop}, trace: t.txt}\n"
    got = [(c.at_s, c.rate_bps) for c in timeline(scenario_file(tmp_path, text, edge4), edge4, until_s=5.0)]
    assert got == [(0.0, 1e6), (1.0, 2e6), (2.0, 3e6), (2.5, 1e6), (3.5, 2e6), (4.5, 3e6)]


# --- conditions -----------------------------------------------------------------------------


def test_conditions_follow_the_changes(edge4):
    cond = Conditions.initial(edge4)
    assert cond.links[("laptop", "tablet")] == edge4.link("laptop", "tablet")
    assert cond.current_testbed().link("phone", "laptop") == edge4.link("phone", "laptop")

    cond.apply(Change(1.0, "link", 0, src="phone", dst="laptop", rate_bps=0))
    cond.apply(Change(1.0, "link", 1, src="laptop", dst="phone", delay_s=0.05))
    cond.apply(Change(2.0, "cpus", 2, device="tablet", cpus=0.1))
    cond.apply(Change(3.0, "crash", 3, device="watch"))
    now = cond.current_testbed()
    assert now.link("phone", "laptop").rate_bps == HELD_RATE_BPS  # a trace's zero crawls, never "unshaped"
    assert now.link("phone", "laptop").delay_s == pytest.approx(0.010)
    assert now.link("laptop", "phone").rate_bps == 200_000_000
    assert now.link("laptop", "phone").delay_s == pytest.approx(0.05)
    assert now.link("laptop", "tablet") == edge4.link("laptop", "tablet")  # untouched links stay
    assert now.device("tablet").cpus == 0.1
    assert [d.name for d in now.devices] == ["laptop", "tablet", "phone"]
    assert edge4.device("tablet").cpus == 0.5 and len(edge4.devices) == 4  # the configured testbed is untouched

    cond.apply(Change(4.0, "cpus", 4, device="watch", cpus=0.05))
    cond.apply(Change(4.0, "link", 5, src="watch", dst="phone", rate_bps=1000))
    cond.apply(Change(5.0, "join", 6, device="watch"))
    back = cond.current_testbed()
    assert back.device("watch").cpus == edge4.device("watch").cpus  # back as configured
    assert back.link("watch", "phone") == edge4.link("watch", "phone")
    assert back.link("phone", "laptop").rate_bps == HELD_RATE_BPS


def test_conditions_replay_a_timeline(tmp_path, edge4):
    text = """
    events:
      - {at: 1s, link: {from: tablet, to: '*'}, bandwidth: 3mbit}
      - {at: 2s, device: phone, action: leave}
    """
    cond = Conditions.initial(edge4)
    for c in timeline(scenario_file(tmp_path, text, edge4), edge4):
        cond.apply(c)
    now = cond.current_testbed()
    assert cond.gone == {"phone"}
    assert [d.name for d in now.devices] == ["laptop", "tablet", "watch"]
    assert {now.link("tablet", p).rate_bps for p in ("laptop", "watch")} == {3_000_000}


# --- the job: checked before anything starts ------------------------------------------------

JOB = """
name: scn
model: {model}
devices: {devices}
runtime: local
requests: 2
warmup: 0
"""


def make_job(tmp_path: Path, model: Path, extra: str) -> Path:
    return write(tmp_path, "job.yaml", JOB.format(model=model, devices=EDGE4) + textwrap.dedent(extra))


def job_configs(job_path: Path):
    from orchestrator.run import configurations

    job = load_job(job_path)
    return job, configurations(job, str(job_path))


def test_job_scenarios_by_configuration(tmp_path, fixture_copy):
    model = fixture_copy("squeezenet1_1.onnx")
    write(tmp_path, "scenarios/a.yaml", "events:\n  - {at: 1s, device: phone, cpus: 0.2}\n")
    write(tmp_path, "local2.yaml", "devices:\n  - {name: phone}\n  - {name: laptop}\n")
    extra = """
    scenario: scenarios/a.yaml
    compare:
      - {name: inline, scenario: {events: [{at: 2s, device: watch, action: leave}]}}
      - {name: same, algorithm: even}
    """
    job, configs = job_configs(make_job(tmp_path, model, extra))
    got = load_job_scenarios(job, str(tmp_path / "job.yaml"), configs)
    assert list(got) == ["even", "inline", "same"]
    assert got["even"].events[0].cpus == 0.2 and got["same"].events[0].cpus == 0.2
    assert got["inline"].events[0].action == "leave"
    assert got["inline"].file == str(tmp_path / "job.yaml")

    # the job's scenario checked against a compare entry's own devices
    extra = "scenario: scenarios/a.yaml\ncompare:\n  - {name: small, devices: local2.yaml}\n"
    job, configs = job_configs(make_job(tmp_path, model, extra))
    assert load_job_scenarios(job, "job.yaml", configs)["small"] is not None
    write(tmp_path, "scenarios/a.yaml", "events:\n  - {at: 1s, device: watch, cpus: 0.2}\n")
    with pytest.raises(UserError) as e:
        load_job_scenarios(job, "job.yaml", configs)
    assert e.value.field == "events[0].device" and "compare[0]" in e.value.message

    job, configs = job_configs(make_job(tmp_path, model, ""))
    assert load_job_scenarios(job, "job.yaml", configs) == {"even": None}


def node_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()]


CLI_CASES = [
    ("file", "scenario: scn.yaml\n", "scn.yaml", "events[0].link.to"),
    ("inline", "scenario: {events: [{at: 1s, device: tv, action: leave}]}\n", "job.yaml", "scenario.events[0].device"),
    (
        "compare",
        "compare:\n  - {name: b, scenario: {events: [{at: -1s, device: phone, cpus: 1}]}}\n",
        "job.yaml",
        "compare[0].scenario.events[0].at",
    ),
    ("missing-file", "scenario: none.yaml\n", "job.yaml", "scenario"),
    ("bad-trace", "scenario: trace.yaml\n", "trace.yaml", "events[0].trace"),
]


@pytest.mark.parametrize("case,extra,file,field", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_run_stops_on_a_bad_scenario_before_anything_starts(
    tmp_path, fixture_copy, capsys, case, extra, file, field
):
    model = fixture_copy("squeezenet1_1.onnx")
    write(tmp_path, "scn.yaml", "events:\n  - {at: 8s, link: {from: phone, to: lapto}, bandwidth: 2mbit}\n")
    write(tmp_path, "trace.yaml", "events:\n  - {at: 0s, link: {from: phone, to: laptop}, trace: t.txt}\n")
    write(tmp_path, "t.txt", "0 1\n1 2\n1 3\n")
    job = make_job(tmp_path, model, extra)
    out = tmp_path / "run"
    before = {p.pid for p in node_processes()}
    code = main(["run", "--job", str(job), "--runtime", "local", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    line = err.strip().removeprefix("error: ")
    assert line.startswith(str(tmp_path / file) + ": " + field + ": "), line
    assert not out.exists()
    assert {p.pid for p in node_processes()} - before == set()


def test_cli_run_accepts_the_repository_scenarios_checks_only(tmp_path, fixture_copy, edge4):
    """The shipped scenarios fit the shipped testbed (the check that `run` makes first)."""
    model = fixture_copy("squeezenet1_1.onnx")
    names = ["tunnel", "train", "thermal"]
    extra = "compare:\n" + "".join(
        f"  - {{name: {n}, scenario: {ROOT / 'scenarios' / (n + '.yaml')}}}\n" for n in names
    )
    job, configs = job_configs(make_job(tmp_path, model, extra))
    got = load_job_scenarios(job, "job.yaml", configs)
    assert [got[n].file for n in names] == [str(ROOT / "scenarios" / f"{n}.yaml") for n in names]
