from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data", "nbytes", "offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    nbytes: int
    offset: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., nbytes: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "device", "recv_ns", "start_ns", "end_ns", "send_ns", "bytes_out", "serialize_ns", "deserialize_ns")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    RECV_NS_FIELD_NUMBER: _ClassVar[int]
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    SEND_NS_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    SERIALIZE_NS_FIELD_NUMBER: _ClassVar[int]
    DESERIALIZE_NS_FIELD_NUMBER: _ClassVar[int]
    stage: int
    device: str
    recv_ns: int
    start_ns: int
    end_ns: int
    send_ns: int
    bytes_out: int
    serialize_ns: int
    deserialize_ns: int
    def __init__(self, stage: _Optional[int] = ..., device: _Optional[str] = ..., recv_ns: _Optional[int] = ..., start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., send_ns: _Optional[int] = ..., bytes_out: _Optional[int] = ..., serialize_ns: _Optional[int] = ..., deserialize_ns: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("request_id", "stage", "tensors", "timings", "sent_ns", "deliver_after_ns", "error", "hold_ns", "probe", "lost", "epoch", "sequence", "step", "last_step", "payload", "payload_size")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    DELIVER_AFTER_NS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HOLD_NS_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    stage: int
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    sent_ns: int
    deliver_after_ns: int
    error: str
    hold_ns: int
    probe: bool
    lost: bool
    epoch: int
    sequence: int
    step: int
    last_step: bool
    payload: bytes
    payload_size: int
    def __init__(self, request_id: _Optional[int] = ..., stage: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., sent_ns: _Optional[int] = ..., deliver_after_ns: _Optional[int] = ..., error: _Optional[str] = ..., hold_ns: _Optional[int] = ..., probe: _Optional[bool] = ..., lost: _Optional[bool] = ..., epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., step: _Optional[int] = ..., last_step: _Optional[bool] = ..., payload: _Optional[bytes] = ..., payload_size: _Optional[int] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("device", "address", "rate_bps", "delay_s", "ip", "tc_rate_bps", "tc_delay_s", "dead_after_s")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    DELAY_S_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    TC_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    TC_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    DEAD_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    device: str
    address: str
    rate_bps: int
    delay_s: float
    ip: str
    tc_rate_bps: int
    tc_delay_s: float
    dead_after_s: float
    def __init__(self, device: _Optional[str] = ..., address: _Optional[str] = ..., rate_bps: _Optional[int] = ..., delay_s: _Optional[float] = ..., ip: _Optional[str] = ..., tc_rate_bps: _Optional[int] = ..., tc_delay_s: _Optional[float] = ..., dead_after_s: _Optional[float] = ...) -> None: ...

class StageSpec(_message.Message):
    __slots__ = ("index", "model_path", "inputs", "outputs", "forward", "next_device", "memory_mode", "state_inputs", "state_outputs")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    NEXT_DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MODE_FIELD_NUMBER: _ClassVar[int]
    STATE_INPUTS_FIELD_NUMBER: _ClassVar[int]
    STATE_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    model_path: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    forward: _containers.RepeatedScalarFieldContainer[str]
    next_device: str
    memory_mode: str
    state_inputs: _containers.RepeatedScalarFieldContainer[str]
    state_outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[int] = ..., model_path: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[str]] = ..., forward: _Optional[_Iterable[str]] = ..., next_device: _Optional[str] = ..., memory_mode: _Optional[str] = ..., state_inputs: _Optional[_Iterable[str]] = ..., state_outputs: _Optional[_Iterable[str]] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("device", "num_stages", "source_device", "stages", "peers", "first_device", "threads", "queue_depth", "epoch")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUM_STAGES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    FIRST_DEVICE_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    device: str
    num_stages: int
    source_device: str
    stages: _containers.RepeatedCompositeFieldContainer[StageSpec]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    first_device: str
    threads: int
    queue_depth: int
    epoch: int
    def __init__(self, device: _Optional[str] = ..., num_stages: _Optional[int] = ..., source_device: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageSpec, _Mapping]]] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., first_device: _Optional[str] = ..., threads: _Optional[int] = ..., queue_depth: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class LoadReply(_message.Message):
    __slots__ = ("ok", "error", "threads", "cpu_quota", "providers", "shaping", "netem")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    CPU_QUOTA_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    SHAPING_FIELD_NUMBER: _ClassVar[int]
    NETEM_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    threads: int
    cpu_quota: float
    providers: str
    shaping: str
    netem: bool
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ..., threads: _Optional[int] = ..., cpu_quota: _Optional[float] = ..., providers: _Optional[str] = ..., shaping: _Optional[str] = ..., netem: _Optional[bool] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("device", "loaded", "status", "now_ns")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NOW_NS_FIELD_NUMBER: _ClassVar[int]
    device: str
    loaded: bool
    status: str
    now_ns: int
    def __init__(self, device: _Optional[str] = ..., loaded: _Optional[bool] = ..., status: _Optional[str] = ..., now_ns: _Optional[int] = ...) -> None: ...

class LinkHold(_message.Message):
    __slots__ = ("device", "frames", "asked_ns", "held_ns", "max_late_ns")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ASKED_NS_FIELD_NUMBER: _ClassVar[int]
    HELD_NS_FIELD_NUMBER: _ClassVar[int]
    MAX_LATE_NS_FIELD_NUMBER: _ClassVar[int]
    device: str
    frames: int
    asked_ns: int
    held_ns: int
    max_late_ns: int
    def __init__(self, device: _Optional[str] = ..., frames: _Optional[int] = ..., asked_ns: _Optional[int] = ..., held_ns: _Optional[int] = ..., max_late_ns: _Optional[int] = ...) -> None: ...

class LinkProbe(_message.Message):
    __slots__ = ("device", "bytes", "sent_ns", "arrived_ns")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    ARRIVED_NS_FIELD_NUMBER: _ClassVar[int]
    device: str
    bytes: int
    sent_ns: int
    arrived_ns: int
    def __init__(self, device: _Optional[str] = ..., bytes: _Optional[int] = ..., sent_ns: _Optional[int] = ..., arrived_ns: _Optional[int] = ...) -> None: ...

class LinkLoad(_message.Message):
    __slots__ = ("device", "sent_bytes", "backlog", "at_ns")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    device: str
    sent_bytes: int
    backlog: int
    at_ns: int
    def __init__(self, device: _Optional[str] = ..., sent_bytes: _Optional[int] = ..., backlog: _Optional[int] = ..., at_ns: _Optional[int] = ...) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ("device", "bytes")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    device: str
    bytes: int
    def __init__(self, device: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("device", "frames_in", "frames_out", "bytes_in", "bytes_out", "rss_bytes", "peak_rss_bytes", "cpu_seconds", "cpu_quota", "threads", "holds", "held_ids", "probes", "links", "cgroup", "kv_cache_bytes", "peak_kv_cache_bytes", "sequences")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_IN_FIELD_NUMBER: _ClassVar[int]
    FRAMES_OUT_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CPU_QUOTA_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    HELD_IDS_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    device: str
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    rss_bytes: int
    peak_rss_bytes: int
    cpu_seconds: float
    cpu_quota: float
    threads: int
    holds: _containers.RepeatedCompositeFieldContainer[LinkHold]
    held_ids: _containers.RepeatedScalarFieldContainer[int]
    probes: _containers.RepeatedCompositeFieldContainer[LinkProbe]
    links: _containers.RepeatedCompositeFieldContainer[LinkLoad]
    cgroup: CgroupStats
    kv_cache_bytes: int
    peak_kv_cache_bytes: int
    sequences: int
    def __init__(self, device: _Optional[str] = ..., frames_in: _Optional[int] = ..., frames_out: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., peak_rss_bytes: _Optional[int] = ..., cpu_seconds: _Optional[float] = ..., cpu_quota: _Optional[float] = ..., threads: _Optional[int] = ..., holds: _Optional[_Iterable[_Union[LinkHold, _Mapping]]] = ..., held_ids: _Optional[_Iterable[int]] = ..., probes: _Optional[_Iterable[_Union[LinkProbe, _Mapping]]] = ..., links: _Optional[_Iterable[_Union[LinkLoad, _Mapping]]] = ..., cgroup: _Optional[_Union[CgroupStats, _Mapping]] = ..., kv_cache_bytes: _Optional[int] = ..., peak_kv_cache_bytes: _Optional[int] = ..., sequences: _Optional[int] = ...) -> None: ...

class CgroupStats(_message.Message):
    __slots__ = ("has_cgroup", "cpu_usage_s", "periods", "throttled_periods", "throttled_s", "cpu_quota", "memory_bytes", "memory_limit", "memory_peak_bytes", "memory_anon_bytes", "memory_cache_bytes", "net_rx_bytes", "net_tx_bytes", "net_rx_packets", "net_tx_packets", "at_ns")
    HAS_CGROUP_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_S_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_PERIODS_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_S_FIELD_NUMBER: _ClassVar[int]
    CPU_QUOTA_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ANON_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_RX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    NET_TX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    has_cgroup: bool
    cpu_usage_s: float
    periods: int
    throttled_periods: int
    throttled_s: float
    cpu_quota: float
    memory_bytes: int
    memory_limit: int
    memory_peak_bytes: int
    memory_anon_bytes: int
    memory_cache_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    net_rx_packets: int
    net_tx_packets: int
    at_ns: int
    def __init__(self, has_cgroup: _Optional[bool] = ..., cpu_usage_s: _Optional[float] = ..., periods: _Optional[int] = ..., throttled_periods: _Optional[int] = ..., throttled_s: _Optional[float] = ..., cpu_quota: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., memory_limit: _Optional[int] = ..., memory_peak_bytes: _Optional[int] = ..., memory_anon_bytes: _Optional[int] = ..., memory_cache_bytes: _Optional[int] = ..., net_rx_bytes: _Optional[int] = ..., net_tx_bytes: _Optional[int] = ..., net_rx_packets: _Optional[int] = ..., net_tx_packets: _Optional[int] = ..., at_ns: _Optional[int] = ...) -> None: ...

class MeasureRequest(_message.Message):
    __slots__ = ("probe", "args", "detach", "timeout_s")
    PROBE_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    probe: str
    args: _containers.RepeatedScalarFieldContainer[str]
    detach: bool
    timeout_s: float
    def __init__(self, probe: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., detach: _Optional[bool] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class MeasureReply(_message.Message):
    __slots__ = ("ok", "json", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    json: str
    error: str
    def __init__(self, ok: _Optional[bool] = ..., json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("name", "size", "sha256", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class FileReply(_message.Message):
    __slots__ = ("ok", "path", "bytes", "error", "had")
    OK_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HAD_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    path: str
    bytes: int
    error: str
    had: bool
    def __init__(self, ok: _Optional[bool] = ..., path: _Optional[str] = ..., bytes: _Optional[int] = ..., error: _Optional[str] = ..., had: _Optional[bool] = ...) -> None: ...
