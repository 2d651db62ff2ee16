"""Schemas of devices.yaml and job.yaml, with units resolved and every field checked.

Both our own devices format and the Ianvs multi-edge one (string values, `bandwith`,
`partition_points` with `input_names`/`output_names`/`device_name`) load into `Testbed`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import UserError
from orchestrator.runtimes import RUNTIMES
from orchestrator.units import parse_delay, parse_rate, parse_size, shown

_DNS = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# What a plan can minimise: the bottleneck step (throughput), a request's end-to-end time, or
# the energy per inference within a latency budget and/or a throughput floor (DESIGN: Energy)
Objective = Literal["throughput", "latency", "energy"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
TIME_OBJECTIVES: tuple[str, ...] = ("throughput", "latency")  # what the time-only search minimises
# What a run does when the world changes under it (scenarios): keep the plan, re-plan when a
# device is lost, also re-plan on measured conditions, or re-plan on the scenario's truth
AdaptPolicy = Literal["static", "failover", "adaptive", "oracle"]
ADAPT_POLICIES: tuple[str, ...] = get_args(AdaptPolicy)
# Where a job runs: a runtime by name, or "auto" (docker where an engine and the node image are there)
RuntimeChoice = Literal[("auto", *RUNTIMES)]


class _Strict(BaseModel):
    # schemas built on first use: a fast CLI; no field takes NaN or infinity (`.inf` is valid YAML)
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)


class Level(_Strict):
    """A DVFS level: a CPU share (a clock: slower and more frugal per unit of work lower down) and
    the power drawn at full use of it."""

    cpus: float = Field(gt=0)
    max_w: float = Field(ge=0)


class Power(_Strict):
    """Power at idle and at full use of the device's `cpus`; optional DVFS `levels`; radio energy
    per bit sent and received (nanojoules)."""

    idle_w: float = Field(ge=0)
    max_w: float = Field(ge=0)
    levels: list[Level] = []
    tx_nj_per_bit: float = Field(default=0.0, ge=0)
    rx_nj_per_bit: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _order(self) -> Power:
        if self.max_w < self.idle_w:
            raise ValueError("max_w must be at least idle_w")
        for i, lv in enumerate(self.levels):
            if lv.max_w < self.idle_w:
                raise ValueError(f"levels[{i}]: max_w {lv.max_w:g} is below idle_w {self.idle_w:g}")
        shares = [lv.cpus for lv in self.levels]
        if len(set(shares)) != len(shares):
            raise ValueError("levels: two levels with the same cpus")
        return self


class Gpu(_Strict):
    index: int = Field(ge=0)
    memory: int | None = None  # bytes
    share: float = Field(default=1.0, gt=0, le=1)

    @field_validator("memory", mode="before")
    @classmethod
    def _mem(cls, v: Any) -> int | None:
        return None if v is None else parse_size(v)


class Device(_Strict):
    name: str
    type: str = "device"
    cpus: float = Field(default=1.0, gt=0)
    memory: int = 1024**3  # bytes
    gpu: Gpu | None = None
    power: Power = Power(idle_w=1.0, max_w=5.0)
    bandwidth: int | None = None  # bit/s, default egress rate; None: not shaped
    delay: float = 0.0  # seconds, default one-way egress delay
    cpuset: str | None = None
    # swarm runtime: the swarm node that runs this device, by hostname or `label=value`
    host: str | None = None
    # "lean": its stages open ONNX Runtime without pre-packed weights (less resident memory, slower)
    memory_mode: Literal["default", "lean"] = "default"

    @model_validator(mode="after")
    def _levels_within_cap(self) -> Device:
        for i, lv in enumerate(self.power.levels):
            if lv.cpus > self.cpus + 1e-9:
                raise ValueError(f"power.levels[{i}]: cpus {lv.cpus:g} is more than the device's cpus {self.cpus:g}")
            if abs(lv.cpus - self.cpus) <= 1e-9 and lv.max_w != self.power.max_w:
                raise ValueError(f"power.levels[{i}]: at the device's own cpus its max_w must be power.max_w")
        return self

    def levels(self) -> list[Level]:
        """The device's DVFS levels, fastest first: its own `cpus` at `power.max_w`, and those listed."""
        own = Level(cpus=self.cpus, max_w=self.power.max_w)
        listed = [lv for lv in self.power.levels if abs(lv.cpus - self.cpus) > 1e-9]
        return sorted([own, *listed], key=lambda lv: -lv.cpus)

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not _DNS.fullmatch(v):  # match() would let a trailing newline through ($)
            raise ValueError(f"{shown(v)} is not a DNS-safe name (lower-case letters, digits, '-')")
        return v

    @field_validator("memory", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        return parse_size(v)

    @field_validator("bandwidth", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> int | None:
        return None if v is None else parse_rate(v)

    @field_validator("delay", mode="before")
    @classmethod
    def _delay(cls, v: Any) -> float:
        return parse_delay(v)


class Link(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True, allow_inf_nan=False)
    src: str = Field(alias="from")
    dst: str = Field(alias="to")
    bandwidth: int | None = None
    delay: float | None = None

    @field_validator("bandwidth", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> int | None:
        return None if v is None else parse_rate(v)

    @field_validator("delay", mode="before")
    @classmethod
    def _delay(cls, v: Any) -> float | None:
        return None if v is None else parse_delay(v)


class PartitionPoint(_Strict):
    """One stage of a manual plan, as in Ianvs: the tensors it takes and gives, and its device."""

    input_names: list[str] = []
    output_names: list[str]
    device_name: str | None = None


class LinkParams(_Strict):
    rate_bps: int  # 0: not shaped
    delay_s: float


class Testbed(_Strict):
    devices: list[Device]
    links: list[Link] = []
    partition_points: list[PartitionPoint] = []
    source: str | None = None  # path of the file, for messages

    @model_validator(mode="after")
    def _check(self) -> Testbed:
        if not self.devices:
            raise ValueError("no devices: at least one is needed")
        names = [d.name for d in self.devices]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate device name {dup[0]!r}")
        for i, link in enumerate(self.links):
            for end in (link.src, link.dst):
                if end not in names:
                    raise ValueError(f"links[{i}]: unknown device {end!r}")
            if link.src == link.dst:
                raise ValueError(f"links[{i}]: a link joins two different devices")
        for i, p in enumerate(self.partition_points):
            if p.device_name is not None and p.device_name not in names:
                raise ValueError(f"partition_points[{i}].device_name: unknown device {p.device_name!r}")
        return self

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def link(self, src: str, dst: str) -> LinkParams:
        """Directed link parameters: the sender's defaults, overridden by a `links` entry."""
        d = self.device(src)
        rate, delay = d.bandwidth, d.delay
        for link in self.links:
            if link.src == src and link.dst == dst:
                rate = link.bandwidth if link.bandwidth is not None else rate
                delay = link.delay if link.delay is not None else delay
        return LinkParams(rate_bps=rate or 0, delay_s=delay)


# --- job.yaml -------------------------------------------------------------------------------

_NAME_MAX = 200  # bytes: a name becomes part of a folder name (runs/<time>_<name>)
_PART_MAX = 255  # bytes in one part of a path, as file systems take
_PATH_MAX = 4000


def _check_path(v: Any) -> Any:
    """A path field the run opens later: refused here when no file system could open it (a NUL byte,
    an over-long part), so that the error names the field instead of a traceback naming the OS."""
    if not isinstance(v, str):
        return v
    if not v:
        raise ValueError("an empty path")
    if "\x00" in v:
        raise ValueError("a path cannot contain a NUL byte")
    try:
        raw = os.fsencode(v)
    except UnicodeError:
        raise ValueError(f"{shown(v)} is not a valid path") from None
    if len(raw) > _PATH_MAX or any(len(part) > _PART_MAX for part in raw.split(b"/")):
        raise ValueError(f"{shown(v)}: path too long")
    return v


def _check_folder_name(v: Any) -> Any:
    """A job or configuration name: the run folder (and compare/<name>) is named after it."""
    if not isinstance(v, str):
        return v
    if v in ("", ".", "..") or any(c in v for c in "/\\") or not v.isprintable() or len(v.encode()) > _NAME_MAX:
        raise ValueError(f"{shown(v)} cannot name a run folder: printable, no '/' or '\\', at most {_NAME_MAX} bytes")
    return v


class DatasetSpec(_Strict):
    """Where the images come from; `synthetic` makes seeded random inputs of the model's shape."""

    kind: Literal["synthetic", "imagenet", "imagenet-tar", "imagefolder", "list"] = "synthetic"
    path: str | None = None  # the val tar (or its folder), the ImageFolder root, or the list file
    devkit: str | None = None  # ILSVRC2012_devkit_t12.tar.gz, default: beside the tar
    classes: str | None = None  # ImageFolder: a class list file
    limit: int | None = Field(default=None, gt=0)  # a class-balanced subset of this many images
    seed: int = 0
    preprocessing: dict[str, Any] | None = None  # {size, mode: resize | resize-crop, mean, std}
    workers: int = Field(default=2, ge=0)  # decoding threads running ahead of the pipeline

    _paths = field_validator("path", "devkit", "classes")(_check_path)


def _latency_budget(v: Any) -> float | None:
    """A latency budget: a delay with its unit (`300ms`), more than zero."""
    if v is None:
        return None
    t = parse_delay(v)
    if t <= 0:
        raise ValueError(f"{shown(v)}: a latency budget must be more than 0")
    return t


class Variant(_Strict):
    """One configuration of a comparison: what differs from the job's own."""

    name: str | None = None
    algorithm: str | None = None
    objective: Objective | None = None
    latency_budget: float | None = None  # seconds (a delay: `300ms`); objective energy
    throughput_floor: float | None = Field(default=None, gt=0)  # inferences/s; objective energy
    stages: int | None = Field(default=None, gt=0)
    devices: str | None = None
    source: str | None = None
    scenario: str | dict[str, Any] | None = None  # a scenario file, or the same mapping inline
    adapt: AdaptPolicy | None = None

    _name = field_validator("name")(_check_folder_name)
    _paths = field_validator("devices", "scenario")(_check_path)
    _budget = field_validator("latency_budget", mode="before")(_latency_budget)


GENERATION_KEYS: tuple[str, ...] = ("prompts", "prompt_tokens", "max_new_tokens", "sequences")
# keys of an inference job that a generation job refuses: it runs `requests` sequences, `sequences`
# of them in flight, each driven a step at a time (closed loop), on prompts rather than images
_NOT_GENERATION = {
    "rate_hz": "a generation job is driven a sequence at a time, closed loop: `sequences` sets how many in flight",
    "duration_s": "a generation job runs `requests` sequences, closed loop: give requests, not a duration",
    "batch": "a generation job is driven a sequence at a time: `sequences` sets how many in flight, not batch",
    "dataset": "a generation job's inputs are its `prompts`, not a dataset",
}


class Job(_Strict):
    name: str
    model: str
    devices: str
    runtime: RuntimeChoice = "auto"
    algorithm: str = "even"
    objective: Objective = "throughput"
    latency_budget: float | None = None  # seconds (a delay: `300ms`): objective energy's end-to-end limit
    throughput_floor: float | None = Field(default=None, gt=0)  # inferences/s: objective energy's floor
    stages: int | None = Field(default=None, gt=0)
    source: str | None = None  # device where frames originate and results return
    requests: int = Field(default=50, gt=0)  # measured requests, after the warm-up ones
    duration_s: float | None = Field(default=None, gt=0)  # or: send for this long (warm-up excluded)
    warmup: int = Field(default=5, ge=0)
    concurrency: int = Field(default=2, gt=0)  # closed loop: requests in flight
    rate_hz: float | None = Field(default=None, gt=0)  # open loop: a fixed arrival rate instead
    batch: int = Field(default=1, gt=0)
    repeat: int = Field(default=1, ge=1)  # measure this many times; figures give median and spread
    agreement: int = Field(default=32, ge=0)  # images checked against the whole model in one process
    dataset: DatasetSpec = DatasetSpec()
    compare: list[Variant] = []  # further configurations, run and reported side by side
    fidelity_check: bool = True  # measure links and CPU caps before the run (docker)
    # measure each planned stage as a whole on its device before the run (a few seconds) and
    # predict throughput from those step times instead of the sum of the profiled blocks
    measure_stages: bool = True
    # a stage the memory model says cannot fit its device: refused at plan time, or run with a warning
    memory_check: Literal["refuse", "warn"] = "refuse"
    timeout_s: float = Field(default=600.0, gt=0)
    # a timeline of link, CPU and device changes applied while requests flow (DESIGN: Scenarios)
    scenario: str | dict[str, Any] | None = None
    adapt: AdaptPolicy = "static"
    # one-shot inference (a frame in, a result out) or token-by-token generation (DESIGN: Generation)
    task: Literal["infer", "generate"] = "infer"
    prompts: str = "synthetic"  # a file of token-id lines (one prompt each), or `synthetic`
    prompt_tokens: int = Field(default=16, gt=0)  # the length of each synthetic prompt
    max_new_tokens: int = Field(default=32, gt=0)
    sequences: int = Field(default=1, gt=0)  # sequences in flight at once
    base_dir: str = "."  # folder of the job file: relative paths resolve from here

    _name = field_validator("name")(_check_folder_name)
    _paths = field_validator("model", "devices", "scenario", "prompts")(_check_path)
    _budget = field_validator("latency_budget", mode="before")(_latency_budget)

    @model_validator(mode="after")
    def _limits_need_energy(self) -> Job:
        if self.objective != "energy" and (self.latency_budget is not None or self.throughput_floor is not None):
            raise ValueError("latency_budget and throughput_floor are limits of objective: energy")
        return self

    @model_validator(mode="after")
    def _keys_of_task(self) -> Job:
        # a key of the other task would be silently ignored: refused instead, naming it ("KEY: why")
        if self.task == "infer":
            given = [k for k in GENERATION_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f"{given[0]}: prompts, prompt_tokens, max_new_tokens and sequences are keys of task: generate"
                )
            return self
        given = {
            "rate_hz": self.rate_hz is not None,
            "duration_s": self.duration_s is not None,
            "batch": self.batch > 1,
            "dataset": "dataset" in self.model_fields_set,
        }
        for key, why in _NOT_GENERATION.items():
            if given[key]:
                raise ValueError(f"{key}: {why}")
        return self

    def path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else Path(self.base_dir) / q


# --- loading --------------------------------------------------------------------------------

_MAX_DEPTH = 64  # nesting levels; our files use five or six


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting early: PyYAML composes recursively (a RecursionError
    past a few hundred levels) and its scanner slows quadratically with the depth of [ and {."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > _MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {_MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    try:
        if not p.exists():
            raise UserError("file not found", str(p))
        if p.is_dir():
            raise UserError("is a folder, not a YAML file", str(p))
        text = p.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:  # unreadable, a NUL byte or an over-long name, not UTF-8
        reason = "not a text file" if isinstance(e, UnicodeDecodeError) else f"cannot read: {e}"
        raise UserError(reason, str(p)) from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        problem = getattr(e, "problem", None) or (str(e).splitlines() or ["unreadable"])[0]
        raise UserError(f"not valid YAML: {problem}", str(p), where) from None
    except RecursionError:
        raise UserError("not valid YAML: nested too deeply", str(p)) from None
    except (ValueError, OverflowError, TypeError, AttributeError, KeyError, IndexError) as e:
        # a value PyYAML's constructors refuse without a YAMLError: 2001-13-45, !!int '', !!bool maybe,
        # !!timestamp null, an int of more than 4300 digits
        reason = "a value does not parse as its tag's type"
        if isinstance(e, (ValueError, OverflowError)):
            reason = str(e)[:200]
        raise UserError(f"not valid YAML: {reason}", str(p)) from None


def _first_error(e: ValidationError) -> tuple[str, str]:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    return loc, msg


def _is_ianvs(raw: dict) -> bool:
    devs = raw.get("devices") or []
    return any(isinstance(d, dict) and ("bandwith" in d or "freq" in d) for d in devs) or any(
        isinstance(d, dict) and isinstance(d.get("memory"), str) and d["memory"].strip().isdigit() for d in devs
    )


def _from_ianvs(raw: dict) -> dict:
    """Ianvs multi-edge devices.yaml: memory in MB and bandwith in Mbit/s, as bare strings."""

    def text(v: Any) -> Any:  # Ianvs writes values as strings; a number of sane size reads as one too
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e15
        return str(v) if ok else v

    def bare(v: Any) -> bool:  # a bare number, as Ianvs writes memory and bandwith
        v = text(v)
        return isinstance(v, str) and v.strip().replace(".", "", 1).isdigit()

    def label(v: Any) -> Any:  # a name as Ianvs writes it; anything else is left for the schema to refuse
        v = text(v)
        return v.lower().replace("_", "-") if isinstance(v, str) else v

    out = []
    for d in raw.get("devices") or []:
        if not isinstance(d, dict):
            out.append(d)
            continue
        d = dict(d)
        dev = {"name": label(d.pop("name", "")), "type": text(d.pop("type", "device"))}
        mem = d.pop("memory", None)
        if mem is not None:
            dev["memory"] = f"{mem}MB" if bare(mem) else mem
        bw = d.pop("bandwith", d.pop("bandwidth", None))
        if bw is not None:
            dev["bandwidth"] = f"{bw}mbit" if bare(bw) else bw
        d.pop("freq", None)  # a label in Ianvs; the CPU share is what we emulate
        dev.update(d)
        out.append(dev)
    pts = raw.get("partition_points") or []
    if isinstance(pts, list):
        pts = [
            {**p, "device_name": label(p["device_name"])} if isinstance(p, dict) and "device_name" in p else p
            for p in pts
        ]
    res = {k: v for k, v in raw.items() if k not in ("devices", "partition_points")}
    res["devices"] = out
    res["partition_points"] = pts
    return res


def load_devices(path: str | Path) -> Testbed:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError("expected a mapping with a 'devices' list", str(path))
    if "devices" not in raw:
        raise UserError("required field is missing", str(path), "devices")
    if not isinstance(raw["devices"], list):
        raise UserError("expected a list of devices", str(path), "devices")
    if "source" in raw:  # set from the path, not the file
        raise UserError("unknown field", str(path), "source")
    if _is_ianvs(raw):
        raw = _from_ianvs(raw)
    try:
        return Testbed.model_validate({**raw, "source": str(path)})  # not **raw: a key may not be text
    except ValidationError as e:
        loc, msg = _first_error(e)
        # a model-level check reports its own location inside the message
        if not loc and ":" in msg and msg.split(":", 1)[0].startswith(("links", "partition_points")):
            loc, msg = msg.split(":", 1)[0], msg.split(":", 1)[1].strip()
        raise UserError(msg, str(path), loc or None) from None
    except TypeError as e:
        raise UserError(str(e), str(path)) from None


def load_job(path: str | Path) -> Job:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError("expected a mapping of job fields", str(path))
    if "base_dir" in raw:  # set from the path, not the file
        raise UserError("unknown field", str(path), "base_dir")
    raw = dict(raw)
    raw.setdefault("name", Path(path).stem)
    raw["base_dir"] = str(Path(path).resolve().parent)
    try:
        return Job.model_validate(raw)  # not **raw: a key may not be text
    except ValidationError as e:
        loc, msg = _first_error(e)
        # a model-level check naming one key puts it first ("KEY: why"): reported as the field
        key, _, why = msg.partition(": ")
        if not loc and why and key in Job.model_fields:
            loc, msg = key, why
        raise UserError(msg, str(path), loc or None) from None
