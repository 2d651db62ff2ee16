"""numpy <-> protobuf Tensor. Encoding copies once (protobuf owns its bytes); decoding reads the
bytes field once (each read copies) and wraps it with np.frombuffer (no further copy)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from common import testbed_pb2 as pb

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer


def to_tensor(name: str, array: np.ndarray) -> pb.Tensor:
    """One numpy array as a Tensor message (C-order raw bytes, numpy dtype name)."""
    a = np.ascontiguousarray(array)
    return pb.Tensor(name=name, dtype=a.dtype.name, shape=a.shape, data=a.tobytes())


def from_tensor(tensor: pb.Tensor) -> np.ndarray:
    """A read-only numpy view over one copy of the tensor's bytes."""
    data = tensor.data  # read once: every access to a bytes field copies
    return np.frombuffer(data, dtype=np.dtype(tensor.dtype)).reshape(tuple(tensor.shape))


def add_tensor(
    tensors: RepeatedCompositeFieldContainer[pb.Tensor], name: str, array: np.ndarray
) -> pb.Tensor:
    """Append an array to a repeated Tensor field in place (append() of a built Tensor copies it)."""
    a = np.ascontiguousarray(array)
    return tensors.add(name=name, dtype=a.dtype.name, shape=a.shape, data=a.tobytes())


def to_tensors(arrays: Mapping[str, np.ndarray]) -> list[pb.Tensor]:
    return [to_tensor(k, v) for k, v in arrays.items()]


def from_tensors(tensors: Iterable[pb.Tensor]) -> dict[str, np.ndarray]:
    return {t.name: from_tensor(t) for t in tensors}


def tensor_nbytes(tensors: Iterable[pb.Tensor]) -> int:
    """Raw data bytes from dtype and shape. Not ByteSize(): upb computes that by serializing."""
    total = 0
    for t in tensors:
        n = np.dtype(t.dtype).itemsize
        for d in t.shape:
            n *= d
        total += n
    return total


def frame_nbytes(frame: pb.Frame) -> int:
    """Approximate wire size of a frame, cheaply: tensor data plus a small allowance per header."""
    return tensor_nbytes(frame.tensors) + 64 * len(frame.tensors) + 64 * len(frame.timings) + 32
