"""The scenario file: a timeline of link, CPU and device changes, checked against the testbed
before anything starts, so that a typo ends the run in one line instead of at second 40."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.config import Testbed, read_yaml
from orchestrator.errors import UserError
from orchestrator.scenario.traces import Trace, TraceFormat, read_trace
from orchestrator.units import parse_delay, parse_rate, shown

Action = Literal["leave", "crash", "join"]
ACTIONS: tuple[str, ...] = get_args(Action)
EVERY_PEER = "*"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True, allow_inf_nan=False)


def _time(v: Any) -> float:
    if isinstance(v, str) and v.strip().startswith("-"):
        raise ValueError(f"{shown(v)}: a time cannot be negative")
    t = parse_delay(v)
    if t < 0:
        raise ValueError(f"{shown(v)}: a time cannot be negative")
    return t


class LinkRef(_Strict):
    """A directed link; `to: "*"` is every other device."""

    from_: str = Field(alias="from")
    to: str


class Event(_Strict):
    """One change, of exactly one kind: a link step (bandwidth and/or delay), a link trace, a CPU
    change, or a device action."""

    at: float  # seconds from the first measured request
    link: LinkRef | None = None
    device: str | None = None
    bandwidth: int | None = None  # bit/s
    delay: float | None = None  # seconds, one way
    trace: str | None = None  # a path, relative to the scenario file
    trace_format: TraceFormat | None = None  # default: told by the content
    cpus: float | None = Field(default=None, gt=0)
    action: Action | None = None

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, v: Any) -> float:
        return _time(v)

    @field_validator("bandwidth", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> int | None:
        return None if v is None else parse_rate(v)

    @field_validator("delay", mode="before")
    @classmethod
    def _delay(cls, v: Any) -> float | None:
        return None if v is None else _time(v)

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, v: Any) -> Any:
        if v is not None and v not in ACTIONS:
            raise ValueError(f"unknown action {shown(v)} (use {', '.join(ACTIONS)})")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> Event:
        # messages start with the field to blame: the loader turns that into `events[i].field`
        step = self.bandwidth is not None or self.delay is not None
        if self.link is not None and self.device is not None:
            raise ValueError("device: an event changes a link or a device, not both")
        if self.trace_format is not None and self.trace is None:
            raise ValueError("trace_format: only with a trace")
        if self.link is not None:
            for name in ("cpus", "action"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: a link event takes bandwidth and/or delay, or a trace")
            if self.trace is not None and step:
                raise ValueError("trace: a trace sets the rate itself: give bandwidth or delay in another event")
            if self.trace is None and not step:
                raise ValueError("link: a link event needs bandwidth and/or delay, or a trace")
        elif self.device is not None:
            for name in ("bandwidth", "delay", "trace"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: a device event takes cpus or an action (for a link, give `link`)")
            if self.cpus is not None and self.action is not None:
                raise ValueError("action: one kind per event: cpus or an action, not both")
            if self.cpus is None and self.action is None:
                raise ValueError("device: a device event needs cpus or an action")
        else:
            raise ValueError("an event changes a link (`link`) or a device (`device`)")
        return self

    @property
    def kind(self) -> str:
        """'trace', 'link', 'cpus' or the action."""
        if self.link is not None:
            return "trace" if self.trace is not None else "link"
        return "cpus" if self.cpus is not None else str(self.action)


_EVENT_FIELDS = tuple(Event.model_fields) + ("from", "to")


class Scenario(_Strict):
    """A checked scenario. `traces` holds each trace event's trace, read once, by event index."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        arbitrary_types_allowed=True,
        defer_build=True,
        allow_inf_nan=False,
    )

    loop: bool = False
    # with `loop`: the time after which it repeats; default the end of the last event (of its trace)
    period: float | None = Field(default=None, gt=0)
    events: list[Event] = Field(min_length=1)
    file: str = ""  # the scenario file, or the job file when inline: for messages
    base_dir: str = "."  # relative trace paths resolve from here
    traces: dict[int, Trace] = {}

    @field_validator("period", mode="before")
    @classmethod
    def _period(cls, v: Any) -> float | None:
        return None if v is None else _time(v)

    def trace(self, index: int) -> Trace:
        """The trace of event `index` (a trace event)."""
        return self.traces[index]

    def trace_path(self, event: Event) -> Path:
        assert event.trace is not None
        p = Path(event.trace)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def end_s(self) -> float:
        """When the last event happens, or its trace ends."""
        ends = [e.at + (self.traces[i].duration_s if i in self.traces else 0.0) for i, e in enumerate(self.events)]
        return max(ends)

    def period_s(self) -> float:
        return self.period if self.period is not None else self.end_s()

    def in_time_order(self) -> list[tuple[int, Event]]:
        """(index, event) by time; events at the same time keep the file's order."""
        return sorted(enumerate(self.events), key=lambda ie: ie[1].at)


# --- loading --------------------------------------------------------------------------------


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _join(prefix: str | None, loc: str) -> str | None:
    if not prefix:
        return loc or None
    if not loc:
        return prefix
    return prefix + ("" if loc.startswith("[") else ".") + loc


def _first_error(e: ValidationError) -> tuple[str, str]:
    err = e.errors()[0]
    loc = [p for p in err["loc"]]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "too_short" and loc == ["events"]:
        msg = "a scenario needs at least one event"
    # a model-level check of an event names the field to blame at the start of its message
    head, sep, rest = msg.partition(": ")
    if sep and head in _EVENT_FIELDS and len(loc) == 2 and loc[0] == "events":
        loc.append(head)
        msg = rest
    return _loc(tuple(loc)), msg


def _check_against(
    scn: Scenario, testbed: Testbed, fail: Callable[[str, str], UserError], prefix: str | None
) -> dict[int, Trace]:
    """Device names, links, traces and the order of leaves and joins; returns the traces read."""
    names = [d.name for d in testbed.devices]
    known = f"({', '.join(names)})"
    traces: dict[int, Trace] = {}
    for i, e in enumerate(scn.events):
        f = f"events[{i}]"
        if e.link is not None:
            if e.link.from_ == EVERY_PEER:
                raise fail(f"'{EVERY_PEER}' is only for `to`: name the sending device", f"{f}.link.from")
            if e.link.from_ not in names:
                raise fail(f"unknown device {e.link.from_!r} {known}", f"{f}.link.from")
            if e.link.to != EVERY_PEER and e.link.to not in names:
                raise fail(f"unknown device {e.link.to!r} {known}", f"{f}.link.to")
            if e.link.to == e.link.from_:
                raise fail("a link joins two different devices", f"{f}.link.to")
            if e.link.to == EVERY_PEER and len(names) < 2:
                raise fail(f"{e.link.from_!r} has no peer", f"{f}.link.to")
        if e.device is not None and e.device not in names:
            raise fail(f"unknown device {e.device!r} {known}", f"{f}.device")
        if e.trace is not None:
            traces[i] = read_trace(scn.trace_path(e), e.trace_format, file=scn.file, field=_join(prefix, f"{f}.trace"))
    gone: dict[str, int] = {}  # device -> the event that took it away
    for i, e in scn.in_time_order():
        f = f"events[{i}]"
        if e.device is None:
            continue
        if e.action in ("leave", "crash"):
            if e.device in gone:
                raise fail(f"{e.device!r} is already gone (events[{gone[e.device]}])", f"{f}.action")
            gone[e.device] = i
        elif e.action == "join":
            if e.device not in gone:
                raise fail(f"{e.device!r} joins but never left (leave or crash it first)", f"{f}.action")
            del gone[e.device]
        elif e.cpus is not None and e.device in gone:
            raise fail(f"{e.device!r} is gone at {e.at:g} s (events[{gone[e.device]}])", f"{f}.cpus")
    if scn.loop and gone:
        dev, i = next(iter(gone.items()))
        raise fail(f"{dev!r} leaves (events[{i}]) and never joins: the scenario cannot repeat", "loop")
    return traces


def load_scenario(
    spec: str | dict, *, base_dir: Path, testbed: Testbed, file: str, field: str = "scenario"
) -> Scenario:
    """A scenario from a path (relative to base_dir) or the mapping itself (inline in a job),
    checked against the testbed. Errors name the scenario file and the field (`events[2].link.to`),
    or the job file and `scenario.events[2]...` when inline."""
    if isinstance(spec, dict):
        raw, where, prefix, folder = spec, file, field, Path(base_dir)
    elif isinstance(spec, (str, Path)):
        path = Path(spec) if Path(spec).is_absolute() else Path(base_dir) / spec
        try:
            found = path.exists()
        except (OSError, ValueError) as e:  # a NUL byte, an over-long name
            raise UserError(f"scenario file cannot be read: {e}", file, field) from None
        if not found:
            raise UserError(f"scenario file not found: {path}", file, field)
        raw, where, prefix, folder = read_yaml(path), str(path), None, path.parent
    else:
        raise UserError("expected a scenario file or the scenario's mapping", file, field)
    if not isinstance(raw, dict):
        raise UserError("expected a mapping with an 'events' list", where, prefix)
    for key in ("file", "base_dir", "traces"):
        if key in raw:
            raise UserError("unknown field", where, _join(prefix, key))
    if "events" not in raw:
        raise UserError("required field is missing", where, _join(prefix, "events"))
    if not isinstance(raw["events"], list):
        raise UserError("expected a list of events", where, _join(prefix, "events"))

    def fail(msg: str, loc: str) -> UserError:
        return UserError(msg, where, _join(prefix, loc))

    try:
        scn = Scenario.model_validate({**raw, "file": where, "base_dir": str(folder)})  # a key may not be text
    except ValidationError as e:
        loc, msg = _first_error(e)
        raise fail(msg, loc) from None
    except TypeError as e:  # a key that is not a string
        raise UserError(str(e), where, prefix) from None
    traces = _check_against(scn, testbed, fail, prefix)
    scn = scn.model_copy(update={"traces": traces})
    if scn.loop and scn.period_s() <= 0:
        raise fail("a scenario that loops needs a period: events after 0 s, a trace, or `period`", "loop")
    if scn.loop and scn.period is not None:
        late = [i for i, e in enumerate(scn.events) if e.at >= scn.period]
        if late:
            raise fail(
                f"at {scn.events[late[0]].at:g} s, not before the period ({scn.period:g} s)", f"events[{late[0]}].at"
            )
    return scn
