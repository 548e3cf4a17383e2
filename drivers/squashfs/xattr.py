"""Extended attributes: the xattr table's name/value pairs of one inode.

An inode with xattrs names an xattr id; the id table entry (see :mod:`tables`) gives a
reference into the xattr table and a count.  From there, ``count`` pairs follow: a type
(the name's prefix: 0 ``user.``, 1 ``trusted.``, 2 ``security.``; bit 0x100 = value out
of line), the name without its prefix, then the value's size and bytes.  An out-of-line
value (mksquashfs stores each value once, and points repeated ones at the first) is an
8-byte reference to where its size and bytes are.

As the kernel's xattr.c: listxattr skips pairs of an unknown type; getxattr compares
the prefix (``type & 0xff``) and the name.  Bounds: values of at most 64 KiB and name
lists of at most 64 KiB (what the syscalls can return); ``count`` pairs, each at least
8 bytes of the table, read forward only.
"""

from __future__ import annotations

from collections.abc import Iterator

from drivers.base import CorruptImage, NoSuchAttribute
from drivers.squashfs.inode import Inode
from drivers.squashfs.layout import (
    SQUASHFS_XATTR_PREFIX_MASK,
    SQUASHFS_XATTR_SECURITY,
    SQUASHFS_XATTR_TRUSTED,
    SQUASHFS_XATTR_USER,
    SQUASHFS_XATTR_VALUE_OOL,
    XATTR_ENTRY,
    XATTR_VAL,
)
from drivers.squashfs.metadata import MetadataReader, Region

__all__ = ["XattrTable"]

PREFIXES = {
    SQUASHFS_XATTR_USER: b"user.",
    SQUASHFS_XATTR_TRUSTED: b"trusted.",
    SQUASHFS_XATTR_SECURITY: b"security.",
}
XATTR_SIZE_MAX = 1 << 16
XATTR_LIST_MAX = 1 << 16
_KNOWN_TYPE_BITS = SQUASHFS_XATTR_PREFIX_MASK | SQUASHFS_XATTR_VALUE_OOL

#: (type, name without prefix, position of the value's size word)
Pair = tuple[int, bytes, tuple[int, int]]


def split_name(name: bytes) -> tuple[int, bytes] | None:
    """(prefix index, rest) of a full xattr name, or None for another namespace."""
    for index, prefix in PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return index, name[len(prefix) :]
    return None


class XattrTable:
    """The xattr pairs of inodes, read from the xattr table's metadata blocks."""

    __slots__ = ("meta", "region")

    def __init__(self, meta: MetadataReader, region: Region) -> None:
        self.meta = meta
        self.region = region

    def _position(self, ref: int) -> tuple[int, int]:
        return self.region.start + (ref >> 16), ref & 0xFFFF

    def _pairs(self, inode: Inode) -> Iterator[Pair]:
        """Each pair's type and name; the caller may read the value before the next."""
        pos, offset = self._position(inode.xattr_ref)
        for _ in range(inode.xattr_count):  # each pair is >= 8 bytes of a bounded table
            raw, pos, offset = self.meta.read(self.region, pos, offset, XATTR_ENTRY.size)
            entry_type, size = XATTR_ENTRY.packer.unpack(raw)
            name, pos, offset = self.meta.read(self.region, pos, offset, size)
            yield entry_type, name, (pos, offset)
            raw, pos, offset = self.meta.read(self.region, pos, offset, XATTR_VAL.size)
            pos, offset = self.meta.skip(self.region, pos, offset, XATTR_VAL.packer.unpack(raw)[0])

    def _value(self, entry_type: int, where: tuple[int, int]) -> bytes:
        pos, offset = where
        if entry_type & SQUASHFS_XATTR_VALUE_OOL:
            _, pos, offset = self.meta.read(self.region, pos, offset, XATTR_VAL.size)
            raw, _, _ = self.meta.read(self.region, pos, offset, 8)
            pos, offset = self._position(int.from_bytes(raw, "little"))
        raw, pos, offset = self.meta.read(self.region, pos, offset, XATTR_VAL.size)
        vsize = XATTR_VAL.packer.unpack(raw)[0]
        if vsize > XATTR_SIZE_MAX:
            raise CorruptImage(f"xattr value of {vsize} bytes (at most {XATTR_SIZE_MAX})")
        value, _, _ = self.meta.read(self.region, pos, offset, vsize)
        return value

    def names(self, inode: Inode) -> list[bytes]:
        out: list[bytes] = []
        total = 0
        for entry_type, name, _ in self._pairs(inode):
            prefix = PREFIXES.get(entry_type & SQUASHFS_XATTR_PREFIX_MASK)
            if prefix is None or entry_type & ~_KNOWN_TYPE_BITS:
                continue  # the kernel ignores unrecognised types
            out.append(prefix + name)
            total += len(prefix) + len(name) + 1
            if total > XATTR_LIST_MAX:
                raise CorruptImage(f"inode {inode.ino}: xattr names exceed {XATTR_LIST_MAX}")
        return out

    def get(self, inode: Inode, name: bytes) -> bytes:
        key = split_name(name)
        if key is not None:
            for entry_type, entry_name, where in self._pairs(inode):
                if (entry_type & SQUASHFS_XATTR_PREFIX_MASK, entry_name) == key:
                    return self._value(entry_type, where)
        raise NoSuchAttribute(name.decode(errors="replace"))
