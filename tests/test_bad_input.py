"""Bad input ends in one line naming the file and the field, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.cli import main

GOOD_DEVICES = """
devices:
  - {name: phone, cpus: 0.5, memory: 1GiB, bandwidth: 20mbit, delay: 10ms}
  - {name: laptop, cpus: 1, memory: 2GiB}
"""


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(textwrap.dedent(text))
    return p


def devices_case(body: str):
    return ("devices", body)


# (case id, devices.yaml text, fragments the one-line message must contain)
DEVICE_CASES = [
    ("broken-yaml", "devices:\n  - {name: phone, cpus: [1\n", ["devices.yaml", "not valid YAML"]),
    (
        "unknown-link-device",
        GOOD_DEVICES + "links:\n  - {from: phone, to: tv, bandwidth: 1mbit}\n",
        ["links[0]", "unknown device 'tv'"],
    ),
    ("bad-rate-unit", "devices:\n  - {name: phone, bandwidth: 20furlongs}\n", ["devices.0.bandwidth", "unit"]),
    ("rate-without-unit", "devices:\n  - {name: phone, bandwidth: 20}\n", ["devices.0.bandwidth", "no unit"]),
    ("bad-size", "devices:\n  - {name: phone, memory: lots}\n", ["devices.0.memory"]),
    ("bad-delay", "devices:\n  - {name: phone, delay: 10parsecs}\n", ["devices.0.delay", "time unit"]),
    ("zero-devices", "devices: []\n", ["no devices"]),
    ("duplicate-names", "devices:\n  - {name: phone}\n  - {name: phone}\n", ["duplicate device name 'phone'"]),
    ("unknown-field", "devices:\n  - {name: phone, cpu: 2}\n", ["devices.0.cpu", "unknown field"]),
    ("not-dns-name", "devices:\n  - {name: My_Phone}\n", ["devices.0.name", "DNS-safe"]),
    ("negative-cpus", "devices:\n  - {name: phone, cpus: -1}\n", ["devices.0.cpus"]),
    ("self-link", GOOD_DEVICES + "links:\n  - {from: phone, to: phone}\n", ["links[0]", "two different"]),
    ("no-devices-key", "hosts: []\n", ["devices", "missing"]),
    ("devices-not-a-list", "devices: phone\n", ["devices", "list"]),
    ("not-a-mapping", "- phone\n- laptop\n", ["mapping"]),
    (
        "partition-device-unknown",
        GOOD_DEVICES + "partition_points:\n  - {input_names: [x], output_names: [y], device_name: tv}\n",
        ["partition_points[0].device_name", "unknown device 'tv'"],
    ),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("case,text,fragments", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_bad_devices_file(tmp_path, capsys, fixture_copy, case, text, fragments):
    devices = write(tmp_path, "devices.yaml", text)
    model = fixture_copy("squeezenet1_1.onnx")
    out = tmp_path / "out"
    code, err = run_cli(["partition", "--model", str(model), "--devices", str(devices), "--out", str(out)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "devices.yaml" in err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert not (out / "plan.json").exists()


def test_missing_devices_file(tmp_path, capsys, fixture_copy):
    code, err = run_cli(
        [
            "partition",
            "--model",
            str(fixture_copy("squeezenet1_1.onnx")),
            "--devices",
            str(tmp_path / "nope.yaml"),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "nope.yaml" in err and "not found" in err


def test_missing_model(tmp_path, capsys):
    devices = write(tmp_path, "devices.yaml", GOOD_DEVICES)
    code, err = run_cli(
        [
            "partition",
            "--model",
            str(tmp_path / "missing.onnx"),
            "--devices",
            str(devices),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "missing.onnx" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"devices: []\n", bytes(range(256)) * 10], ids=["yaml", "random-bytes"])
def test_not_an_onnx_file(tmp_path, capsys, content):
    devices = write(tmp_path, "devices.yaml", GOOD_DEVICES)
    model = tmp_path / "model.onnx"
    model.write_bytes(content)
    code, err = run_cli(
        ["partition", "--model", str(model), "--devices", str(devices), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "model.onnx" in err and len(err.strip().splitlines()) == 1


def test_partition_point_not_in_graph(tmp_path, capsys, fixture_copy):
    devices = write(
        tmp_path,
        "devices.yaml",
        GOOD_DEVICES
        + textwrap.dedent("""
        partition_points:
          - {input_names: [input], output_names: [no_such_tensor], device_name: phone}
          - {input_names: [no_such_tensor], output_names: [output], device_name: laptop}
        """),
    )
    code, err = run_cli(
        [
            "partition",
            "--model",
            str(fixture_copy("squeezenet1_1.onnx")),
            "--devices",
            str(devices),
            "--algorithm",
            "manual",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2
    assert "partition_points[0].output_names" in err and "no_such_tensor" in err


def test_unknown_algorithm(tmp_path, capsys, fixture_copy):
    devices = write(tmp_path, "devices.yaml", GOOD_DEVICES)
    code, err = run_cli(
        [
            "partition",
            "--model",
            str(fixture_copy("squeezenet1_1.onnx")),
            "--devices",
            str(devices),
            "--algorithm",
            "clairvoyant",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "clairvoyant" in err and "even" in err


def test_more_stages_than_devices(tmp_path, capsys, fixture_copy):
    devices = write(tmp_path, "devices.yaml", GOOD_DEVICES)
    code, err = run_cli(
        [
            "partition",
            "--model",
            str(fixture_copy("squeezenet1_1.onnx")),
            "--devices",
            str(devices),
            "--stages",
            "5",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "stages" in err


def test_stage_cannot_fit_memory(tmp_path, capsys, fixture_copy):
    tiny = "devices:\n  - {name: watch, memory: 1MiB}\n  - {name: ring, memory: 1MiB}\n"
    devices = write(tmp_path, "devices.yaml", tiny)
    code, err = run_cli(
        [
            "partition",
            "--model",
            str(fixture_copy("squeezenet1_1.onnx")),
            "--devices",
            str(devices),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "memory" in err and len(err.strip().splitlines()) == 1


JOB_CASES = [
    ("job-unknown-field", "name: j\nmodel: m.onnx\ndevices: d.yaml\nrequets: 5\n", ["requets", "unknown field"]),
    ("job-missing-model", "name: j\ndevices: d.yaml\n", ["model", "missing"]),
    ("job-zero-requests", "name: j\nmodel: m.onnx\ndevices: d.yaml\nrequests: 0\n", ["requests"]),
    ("job-bad-runtime", "name: j\nmodel: m.onnx\ndevices: d.yaml\nruntime: kubernetes\n", ["runtime"]),
    ("job-model-not-found", "name: j\nmodel: nothing.onnx\ndevices: d.yaml\n", ["model", "nothing.onnx"]),
    ("job-unknown-source", "name: j\nmodel: m.onnx\ndevices: d.yaml\nsource: tv\n", ["source", "tv"]),
]


@pytest.mark.parametrize("case,text,fragments", JOB_CASES, ids=[c[0] for c in JOB_CASES])
def test_bad_job_file(tmp_path, capsys, fixture_copy, case, text, fragments):
    fixture_copy("squeezenet1_1.onnx").rename(tmp_path / "m.onnx")
    write(tmp_path, "d.yaml", GOOD_DEVICES)
    job = write(tmp_path, "job.yaml", text)
    code, err = run_cli(["run", "--job", str(job), "--runtime", "local", "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "job.yaml" in err
    for frag in fragments:
        assert frag in err, (frag, err)


def test_verify_missing_plan(tmp_path, capsys):
    code, err = run_cli(["verify", "--plan", str(tmp_path / "plan.json")], capsys)
    assert code == 2 and "plan.json" in err


def test_real_process_prints_no_traceback(tmp_path):
    """Through the installed console script: one line on stderr, exit 2."""
    devices = write(tmp_path, "devices.yaml", "devices:\n  - {name: phone, bandwidth: 20furlongs}\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "partition",
            "--model",
            "x.onnx",
            "--devices",
            str(devices),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
