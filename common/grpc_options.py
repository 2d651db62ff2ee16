"""gRPC channel and server options shared by nodes and the orchestrator.

Activations are large (a batch-32 ViT block output is ~19 MB), far above gRPC's 4 MiB default,
and the streams are long-lived, so keepalive notices a dead peer without killing idle streams."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 1 << 30  # 1 GiB

_COMMON: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *_COMMON,
    ("grpc.enable_retries", 0),
    # a device that comes back (a revive, a join) is reached at once: without these a channel
    # to it, or a new one sharing its subchannel, waits out a reconnect backoff of up to 2 min
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
]

SERVER_OPTIONS: list[tuple[str, int]] = [
    *_COMMON,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]
