"""The Node service on the wire: every Frame travels in the frame codec (common/tensors.py).

The generated stub and add_NodeServicer_to_server (de)serialize Frames through protobuf, which
copies each tensor several times. These helpers serve and call the same service, same method
names, but a Frame stream is a stream of frame-codec messages that gRPC passes through as
bytes (identity serializers); they are encoded from and decoded into TensorFrames around the
gRPC call, so that one frame may span several messages (chunks). The servicer's Push and Drive
take an iterator of TensorFrames, Drive yields TensorFrames, and so do the stub's calls."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message_factory import GetMessageClass

from common import testbed_pb2 as pb
from common import testbed_pb2_grpc as pb_grpc
from common.tensors import decode_stream, encode_stream

SERVICE = pb.DESCRIPTOR.services_by_name["Node"]
_FRAME = pb.Frame.DESCRIPTOR.full_name

_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _is_frame(message_type: Any) -> bool:
    return message_type.full_name == _FRAME


def _frame_method(m: Any) -> bool:
    """Frames only ever travel as streams: a frame may take several messages."""
    frame_in, frame_out = _is_frame(m.input_type), _is_frame(m.output_type)
    if (frame_in and not m.client_streaming) or (frame_out and not m.server_streaming):
        raise TypeError(f"{m.name}: a Frame argument or result must be a stream")
    return frame_in or frame_out


def _wrap_servicer(method: Callable[..., Any], frame_in: bool, frame_out: bool) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        # a frame that cannot be read comes to the servicer refused (`invalid`): it answers an
        # error for that frame and keeps the stream
        result = method(decode_stream(request, refused=True) if frame_in else request, context)
        return encode_stream(result) if frame_out else result

    return handler


def add_node_servicer(servicer: pb_grpc.NodeServicer, server: grpc.Server) -> None:
    """Register the Node service like add_NodeServicer_to_server, Frames in the frame codec."""
    handlers = {}
    for m in SERVICE.methods:
        method = getattr(servicer, m.name)
        make = _HANDLERS[(m.client_streaming, m.server_streaming)]
        if _frame_method(m):
            frame_in, frame_out = _is_frame(m.input_type), _is_frame(m.output_type)
            handlers[m.name] = make(
                _wrap_servicer(method, frame_in, frame_out),
                request_deserializer=None if frame_in else GetMessageClass(m.input_type).FromString,
                response_serializer=None if frame_out else GetMessageClass(m.output_type).SerializeToString,
            )
        else:
            handlers[m.name] = make(
                method,
                request_deserializer=GetMessageClass(m.input_type).FromString,
                response_serializer=GetMessageClass(m.output_type).SerializeToString,
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None:
        register(SERVICE.full_name, handlers)


class _FrameCall:
    """A streaming call's result with its messages decoded into TensorFrames; everything else
    (cancel, code, details, ...) is the call's own."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._frames = decode_stream(call)

    def __iter__(self) -> Iterator[Any]:
        return self._frames

    def __next__(self) -> Any:
        return next(self._frames)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _FrameMethod:
    """A stub method whose Frame requests are encoded and Frame responses decoded."""

    def __init__(self, callable_: Any, frame_in: bool, frame_out: bool) -> None:
        self._callable = callable_
        self._in, self._out = frame_in, frame_out

    def _request(self, request: Any) -> Any:
        return encode_stream(request) if self._in else request

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        result = self._callable(self._request(request), *args, **kwargs)
        return _FrameCall(result) if self._out else result

    def future(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._callable.future(self._request(request), *args, **kwargs)

    def with_call(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._callable.with_call(self._request(request), *args, **kwargs)


def node_stub(channel: grpc.Channel) -> pb_grpc.NodeStub:
    """The generated stub with its Frame-carrying methods (Push, Drive) in the frame codec:
    they take and return TensorFrames."""
    stub = pb_grpc.NodeStub(channel)
    for m in SERVICE.methods:
        if not _frame_method(m):
            continue
        frame_in, frame_out = _is_frame(m.input_type), _is_frame(m.output_type)
        path = f"/{SERVICE.full_name}/{m.name}"
        req_ser = None if frame_in else GetMessageClass(m.input_type).SerializeToString
        resp_des = None if frame_out else GetMessageClass(m.output_type).FromString
        make = {
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }[(m.client_streaming, m.server_streaming)]
        callable_ = make(path, request_serializer=req_ser, response_deserializer=resp_des)
        setattr(stub, m.name, _FrameMethod(callable_, frame_in, frame_out))
    return stub
