"""A small reader for MATLAB v5 .mat files, enough for the ILSVRC2012 devkit's meta.mat.

meta.mat holds the ILSVRC2012_ID -> WNID table that turns the devkit's ground truth into
standard class indices. scipy.io.loadmat reads it and is preferred when installed; this
reader keeps scipy an optional dependency. It covers numeric, char, struct and cell
arrays, compressed or not, either byte order -- not sparse, object or function handles.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np

_NUM = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED, _MI_UTF8, _MI_UTF16, _MI_UTF32 = 14, 15, 16, 17, 18
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_CHAR, _MX_SPARSE = 1, 2, 3, 4, 5


class MatError(ValueError):
    """The bytes are not a MATLAB v5 file this reader understands."""


class _Reader:
    def __init__(self, buf: bytes, endian: str) -> None:
        self.buf = buf
        self.pos = 0
        self.e = endian

    def at_end(self) -> bool:
        return self.pos >= len(self.buf)

    def element(self) -> tuple[int, bytes]:
        """Next data element as (type, payload), handling the small-element form and padding."""
        if self.pos + 8 > len(self.buf):
            raise MatError("truncated data element tag")
        (first,) = struct.unpack_from(self.e + "I", self.buf, self.pos)
        if first >> 16:  # small data element: type and size packed in 4 bytes, data in the next 4
            typ, n = first & 0xFFFF, first >> 16
            data = self.buf[self.pos + 4 : self.pos + 4 + n]
            self.pos += 8
            return typ, data
        typ, n = struct.unpack_from(self.e + "II", self.buf, self.pos)
        start = self.pos + 8
        if start + n > len(self.buf):
            raise MatError("truncated data element")
        data = self.buf[start : start + n]
        self.pos = start + (n if typ == _MI_COMPRESSED else (n + 7) // 8 * 8)
        return typ, data

    def numeric(self, typ: int, data: bytes) -> np.ndarray:
        if typ not in _NUM:
            raise MatError(f"unsupported numeric type {typ}")
        return np.frombuffer(data, dtype=np.dtype(self.e + _NUM[typ]))


def _matrix(payload: bytes, endian: str) -> tuple[str, Any]:
    """Decode one miMATRIX payload into (name, value)."""
    if not payload:
        return "", np.zeros((0, 0))
    r = _Reader(payload, endian)
    flags = r.numeric(*r.element())
    cls, is_complex = int(flags[0]) & 0xFF, bool(int(flags[0]) & 0x800)
    dims = tuple(int(d) for d in r.numeric(*r.element()))
    name = r.element()[1].decode("latin-1")
    count = int(np.prod(dims)) if dims else 0
    if cls == _MX_CHAR:
        typ, data = r.element()
        if typ in (_MI_UTF8, _MI_UTF16, _MI_UTF32):
            codec = {_MI_UTF8: "utf-8", _MI_UTF16: "utf-16", _MI_UTF32: "utf-32"}[typ]
            if typ != _MI_UTF8:
                codec += "-le" if endian == "<" else "-be"
            text = data.decode(codec)
        else:
            text = "".join(map(chr, r.numeric(typ, data)))
        if len(dims) == 2 and dims[0] > 1 and len(text) == count:  # char matrix, stored column-major
            rows = np.array(list(text)).reshape(dims, order="F")
            return name, ["".join(row).rstrip() for row in rows]
        return name, text
    if cls == _MX_CELL:
        return name, [_matrix(r.element()[1], endian)[1] for _ in range(count)]
    if cls == _MX_STRUCT:
        (flen,) = r.numeric(*r.element())
        raw = r.element()[1]
        fields = [raw[k : k + int(flen)].split(b"\0", 1)[0].decode("latin-1") for k in range(0, len(raw), int(flen))]
        items = []
        for _ in range(count):
            items.append({f: _matrix(r.element()[1], endian)[1] for f in fields})
        return name, items
    if cls in (_MX_OBJECT, _MX_SPARSE) or cls > 15:
        raise MatError(f"unsupported MATLAB array class {cls} in {name or 'a field'}")
    real = r.numeric(*r.element())
    if is_complex:
        real = real + 1j * r.numeric(*r.element())
    return name, real.reshape(dims, order="F") if count == real.size else real


def loadmat(data: bytes) -> dict[str, Any]:
    """Variables of a MATLAB v5 file: numeric -> ndarray (Fortran-shaped), char -> str
    (or a list of row strings), struct array -> list of dicts in column-major order,
    cell array -> list."""
    if len(data) < 128:
        raise MatError("too short for a MATLAB v5 file")
    if data[:4] == b"\x89HDF" or data[512:516] == b"\x89HDF":
        raise MatError("MATLAB v7.3 (HDF5) file; only v5 files are supported")
    mark = data[126:128]
    if mark == b"IM":
        endian = "<"
    elif mark == b"MI":
        endian = ">"
    else:
        raise MatError("not a MATLAB v5 file (no endian marker)")
    r = _Reader(data[128:], endian)
    out: dict[str, Any] = {}
    while not r.at_end():
        typ, payload = r.element()
        if typ == _MI_COMPRESSED:
            try:
                inner = zlib.decompress(payload)
            except zlib.error as e:
                raise MatError(f"corrupt compressed element ({e})") from None
            typ, payload = _Reader(inner, endian).element()
        if typ != _MI_MATRIX:
            continue
        name, value = _matrix(payload, endian)
        out[name] = value
    return out
