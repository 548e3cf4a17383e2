"""One declaration per on-disk structure, two ways to decode it (shared by every format).

Each structure is declared once, as a ``construct.Struct`` whose field names are the
format's own (``s_inodes_count``, ``inode_number``, ``BPB_BytsPerSec``, ``HeaderCRC32``).
construct is pleasant to read and good for tests and tooling, but parsing one inode
with it costs tens of microseconds, and a directory listing parses thousands.
:class:`Layout` therefore derives a :class:`struct.Struct` from the same declaration and
decodes with ``unpack_from``, two orders of magnitude cheaper.  Only fixed-size fields
are allowed (little-endian integers, byte strings, padding, arrays of integers); anything
else is a programming error caught at import time.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any

import construct

__all__ = ["Layout"]


def _format_of(subcon: Any) -> tuple[str, int]:
    """The struct format of one fixed-size construct and how many values it unpacks to."""
    if isinstance(subcon, construct.FormatField):
        fmt: str = subcon.fmtstr
        if fmt[0] != "<" and subcon.length != 1:
            raise TypeError(f"on-disk fields here are little-endian, not {fmt!r}")
        return fmt[1:], 1
    if isinstance(subcon, construct.Bytes) and isinstance(subcon.length, int):
        return f"{subcon.length}s", 1
    if isinstance(subcon, construct.Padded) and isinstance(subcon.length, int):
        return f"{subcon.length}x", 0
    if isinstance(subcon, construct.Array) and isinstance(subcon.count, int):
        inner, n = _format_of(subcon.subcon)
        if n != 1 or inner.endswith("s"):
            raise TypeError("only arrays of integers are supported")
        return f"{subcon.count}{inner}", subcon.count
    raise TypeError(f"unsupported construct for a fixed layout: {subcon!r}")


class Layout:
    """A fixed-size little-endian structure: its construct declaration and a fast decoder.

    * ``unpack_record(buf, offset)``: a named tuple with the declaration's field names
      (layouts without arrays);
    * ``unpack(buf, offset)``: ``{field name: value}``, arrays as tuples;
    * ``packer``: the derived :class:`struct.Struct` for the hottest loops, whose values
      come in declaration order (``index`` gives a field's position among them);
    * ``pack(**fields)``: encoding through construct, for tests and tools;
    * ``offset_of(name)``, ``size_of(name)``: where a field is, counted from ``base``
      (for a structure that continues another one in the same sector).
    """

    __slots__ = (
        "_groups",
        "_make_record",
        "construct",
        "index",
        "names",
        "offsets",
        "packer",
        "size",
        "sizes",
    )

    def __init__(self, name: str, declaration: construct.Struct, base: int = 0) -> None:
        self.construct = declaration
        fmt = "<"
        names: list[str] = []
        groups: list[int] = []  # values per name, for arrays
        offsets: dict[str, int] = {}
        sizes: dict[str, int] = {}
        offset = base
        for sub in declaration.subcons:
            inner = sub.subcon if isinstance(sub, construct.Renamed) else sub
            part, count = _format_of(inner)
            size = struct.calcsize("<" + part)
            if count:
                if not sub.name:
                    raise TypeError("every value-carrying field needs a name")
                names.append(sub.name)
                groups.append(count if isinstance(inner, construct.Array) else 0)
                offsets[sub.name] = offset
                sizes[sub.name] = size
            fmt += part
            offset += size
        self.packer = struct.Struct(fmt)
        self.size = self.packer.size
        if self.size != declaration.sizeof():
            raise TypeError("derived format disagrees with the construct declaration")
        self.names = tuple(names)
        self.offsets = offsets
        self.sizes = sizes
        self._groups = tuple(groups) if any(groups) else None
        self.index = {n: i for i, n in enumerate(names)} if self._groups is None else {}
        self._make_record: Any = None
        if self._groups is None:
            record: Any = namedtuple(name, names)  # type: ignore[misc]
            self._make_record = record._make

    def unpack_record(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> Any:
        """Decode into a named tuple (``rec.i_mode``); struct.error if it does not fit."""
        if self._make_record is None:
            raise TypeError("unpack_record needs a layout without arrays")
        return self._make_record(self.packer.unpack_from(buf, offset))

    def unpack(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any]:
        """Decode the structure at ``offset`` of ``buf`` (struct.error if it does not fit)."""
        values = self.packer.unpack_from(buf, offset)
        if self._groups is None:
            return dict(zip(self.names, values, strict=True))
        out: dict[str, Any] = {}
        pos = 0
        for name, count in zip(self.names, self._groups, strict=True):
            if count:
                out[name] = tuple(values[pos : pos + count])
                pos += count
            else:
                out[name] = values[pos]
                pos += 1
        return out

    def pack(self, **fields: Any) -> bytes:
        """Encode from field values (through construct: for tests and tools, not hot paths)."""
        data: bytes = self.construct.build(fields)
        return data

    def offset_of(self, name: str) -> int:
        return self.offsets[name]

    def size_of(self, name: str) -> int:
        return self.sizes[name]
