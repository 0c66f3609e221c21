"""Thrift's compact protocol, read and written generically: enough to take a Parquet footer or
page header apart and put it back together byte for byte.

A struct is a ``dict`` from field id to ``(type, value)``, in the order the fields came; a list is
``(element type, [values])``. Booleans are ``(BOOL, True | False)``. Writing emits fields in the
dict's order, so a struct read and written unchanged gives back the same bytes. A value may be
given as :class:`Raw`: bytes already encoded, written as they are."""

from __future__ import annotations

__all__ = [
    "BINARY",
    "BOOL",
    "I32",
    "I64",
    "LIST",
    "STRUCT",
    "Raw",
    "Struct",
    "ThriftError",
    "read_struct",
    "varint",
    "write_fields",
    "write_struct",
    "write_value",
]

import struct as _struct
from collections.abc import Callable
from typing import Any

BOOL, BOOL_FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)
Struct = dict[int, tuple[int, Any]]


class Raw(bytes):
    """A value's compact-protocol bytes, written as they are."""


class ThriftError(ValueError):
    """Bytes that are not a compact-protocol struct (cut short, or a type it cannot hold)."""


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview, pos: int) -> None:
        self.data = data
        self.pos = pos

    def byte(self) -> int:
        try:
            b = self.data[self.pos]
        except IndexError:
            raise ThriftError("cut short") from None
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ThriftError("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, t: int) -> Any:
        if t in (I16, I32, I64):
            return self.zigzag()
        if t == BINARY:
            n = self.varint()
            end = self.pos + n
            if end > len(self.data):
                raise ThriftError("cut short")
            out = bytes(self.data[self.pos : end])
            self.pos = end
            return out
        if t == STRUCT:
            return self.struct()
        if t in (LIST, SET):
            return self.sequence()
        if t == BYTE:
            b = self.byte()
            return b - 256 if b > 127 else b
        if t == DOUBLE:
            end = self.pos + 8
            if end > len(self.data):
                raise ThriftError("cut short")
            (d,) = _struct.unpack_from("<d", self.data, self.pos)
            self.pos = end
            return d
        raise ThriftError(f"type {t} not supported")

    def sequence(self) -> tuple[int, list[Any]]:
        head = self.byte()
        size, et = head >> 4, head & 0x0F
        if size == 15:
            size = self.varint()
        if et in (BOOL, BOOL_FALSE):
            return (BOOL, [self.byte() == 1 for _ in range(size)])
        return (et, [self.value(et) for _ in range(size)])

    def struct(self) -> Struct:
        out: Struct = {}
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return out
            t, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            if t in (BOOL, BOOL_FALSE):
                out[fid] = (BOOL, t == BOOL)
            else:
                out[fid] = (t, self.value(t))


def read_struct(data: bytes | memoryview, pos: int = 0) -> tuple[Struct, int]:
    """The struct at ``pos`` and the offset just past it."""
    reader = _Reader(data, pos)
    return reader.struct(), reader.pos


def _varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _value(out: bytearray, t: int, v: Any) -> None:
    if type(v) is Raw:
        out += v
    elif t in (I16, I32, I64):
        _varint(out, (v << 1) ^ (v >> 63))
    elif t == BINARY:
        _varint(out, len(v))
        out += v
    elif t == STRUCT:
        _struct_into(out, v)
    elif t in (LIST, SET):
        _list_into(out, *v)
    elif t == BYTE:
        out.append(v & 0xFF)
    elif t == DOUBLE:
        out += _struct.pack("<d", v)
    else:
        raise ThriftError(f"type {t} not supported")


def _list_into(out: bytearray, et: int, items: list[Any]) -> None:
    if len(items) < 15:
        out.append(len(items) << 4 | et)
    else:
        out.append(0xF0 | et)
        _varint(out, len(items))
    if et == BOOL:
        out += bytes(1 if x else 0 for x in items)
    else:
        for x in items:
            _value(out, et, x)


def _fields_into(out: bytearray, s: Struct, last: int) -> None:
    for fid, (t, v) in s.items():
        wire = (BOOL if v else BOOL_FALSE) if t == BOOL else t
        delta = fid - last
        if 0 < delta <= 15:
            out.append(delta << 4 | wire)
        else:
            out.append(wire)
            _varint(out, (fid << 1) ^ (fid >> 63))
        last = fid
        if t != BOOL:
            _value(out, t, v)


def _struct_into(out: bytearray, s: Struct) -> None:
    _fields_into(out, s, 0)
    out.append(0)


def _written(fill: Callable[..., None], *args: Any) -> bytearray:
    out = bytearray()
    fill(out, *args)
    return out


def write_fields(s: Struct, last: int = 0) -> Raw:
    """The bytes of the fields of ``s``, the field before them being ``last``, with no stop: a
    piece of a struct, to be joined to the others."""
    return Raw(_written(_fields_into, s, last))


def varint(n: int) -> bytes:
    """``n`` (not negative) as an unsigned LEB128 varint, as Thrift and Parquet's RLE write it."""
    return bytes(_written(_varint, n))


def write_value(t: int, v: Any) -> Raw:
    """The compact-protocol bytes of a value of type ``t``."""
    return Raw(_written(_value, t, v))


def write_struct(s: Struct) -> bytes:
    """The compact-protocol bytes of ``s``."""
    return bytes(_written(_struct_into, s))
