"""Directories: listings in the directory table, and their indexes for big directories.

A listing is a run of headers (``count + 1`` entries sharing a metadata block of the
inode table and a base inode number), each followed by its entries (the inode's offset
in that block, a signed 16-bit delta to the base number, a type, ``size + 1`` bytes of
name).  A directory's stored size is the listing's length plus 3: positions in a listing
count from 3, as the kernel's readdir does after its invented "." and ".." entries.  A
position just after an entry is what :class:`DirEntry` carries as ``next_offset``.

Extended directories carry an index right after their inode: for about every 8 KiB of
listing, the position of a header, the metadata block holding it, and the name of its
first entry.  As the kernel's dir.c and namei.c, readdir from an offset starts at the
last indexed header at or before it, and a lookup starts at the last indexed header
whose name sorts at or before the name wanted, then scans (stopping early, as namei.c
does, at the first entry whose first byte sorts after the name's).  An index entry
that cannot be read ends the index, as in the kernel ("the index isn't essential").

The stretch of listing between two indexed headers is a *segment*, decoded in one pass
with ``struct`` into ``(name, inode_number, reference, next_position)`` tuples and
cached.  Limits: at most 256 entries per header (SQUASHFS_DIR_COUNT), names of at most
256 bytes, entry types at most 7, a segment of at most 1 MiB (mksquashfs starts a new
indexed segment every 8 KiB; a basic directory is at most 64 KiB), and a segment must
end exactly where the index says the next one starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from drivers.base import BoundedCache, CorruptImage
from drivers.squashfs.inode import Inode
from drivers.squashfs.layout import (
    DIR_ENTRY,
    DIR_HEADER,
    DIR_INDEX,
    SQUASHFS_DIR_COUNT,
    SQUASHFS_MAX_DIR_TYPE,
    SQUASHFS_METADATA_SIZE,
    SQUASHFS_NAME_LEN,
)
from drivers.squashfs.metadata import MetadataReader, Region

__all__ = ["LISTING_START", "DirectoryTable", "Entry"]

#: Listing positions start after the kernel's "." (1) and ".." (2).
LISTING_START = 3
MAX_SEGMENT_BYTES = 1 << 20
#: What one decoded entry costs in memory besides its name: a 4-tuple and three ints.
ENTRY_OVERHEAD_BYTES = 220

#: (name, inode number, inode reference, listing position just after the entry)
Entry = tuple[bytes, int, int, int]

_HEADER = DIR_HEADER.packer
_ENTRY = DIR_ENTRY.packer
_HEADER_SIZE = DIR_HEADER.size
_ENTRY_SIZE = DIR_ENTRY.size
_U32 = 0xFFFFFFFF


class SeekPoint(NamedTuple):
    """Where a segment starts: listing position, metadata block and offset; index name."""

    position: int
    block: int
    offset: int
    name: bytes


class Segment(NamedTuple):
    entries: tuple[Entry, ...]
    end: int  # listing position after the last entry


class _Cursor:
    """Bytes of a listing from one metadata position on, pulled in block by block."""

    __slots__ = ("_meta", "_next", "_region")

    def __init__(self, meta: MetadataReader, region: Region, next_block: int) -> None:
        self._meta = meta
        self._region = region
        self._next = next_block

    def start(self, block: int, offset: int) -> tuple[bytes, int]:
        data, self._next = self._meta.block(self._region, block)
        if not 0 <= offset < len(data):
            raise CorruptImage(f"directory listing offset {offset} outside its block at {block}")
        return data, offset

    def refill(self, buf: bytes, p: int, need: int) -> tuple[bytes, int]:
        """``buf[p:]`` extended with following blocks until it holds ``need`` bytes."""
        parts = [buf[p:]]
        have = len(parts[0])
        while have < need:  # each block adds >= 1 byte
            data, self._next = self._meta.block(self._region, self._next)
            parts.append(data)
            have += len(data)
        return b"".join(parts), 0


class DirectoryTable:
    """Listings of the directory table, their indexes, lookups; segments cached."""

    __slots__ = ("_seeks", "_segments", "inode_region", "meta", "region")

    def __init__(
        self, meta: MetadataReader, region: Region, inode_region: Region, cache_bytes: int
    ):
        self.meta = meta
        self.region = region
        self.inode_region = inode_region
        self._segments: BoundedCache[tuple[int, int], Segment] = BoundedCache(cache_bytes)
        self._seeks: BoundedCache[int, tuple[SeekPoint, ...]] = BoundedCache(cache_bytes // 4)

    # -- the index -------------------------------------------------------------------------

    def seek_points(self, inode: Inode) -> tuple[SeekPoint, ...]:
        """The listing's start, then one seek point per usable index entry."""
        seeks = self._seeks.get(inode.ref)
        if seeks is None:
            block = self.region.start + inode.start_block
            first = SeekPoint(LISTING_START, block, inode.start_offset, b"")
            found = [first, *self._index(inode)]
            seeks = self._seeks.put(inode.ref, tuple(found), 64 + 320 * len(found))
        return seeks

    def _index(self, inode: Inode) -> list[SeekPoint]:
        """The usable prefix of an extended directory's index (kernel: stop at a bad one)."""
        out: list[SeekPoint] = []
        pos, offset = inode.tail
        previous = LISTING_START
        for _ in range(inode.index_count):
            try:
                raw, pos, offset = self.meta.read(self.inode_region, pos, offset, DIR_INDEX.size)
                index, start_block, size = DIR_INDEX.packer.unpack(raw)
                if size + 1 > SQUASHFS_NAME_LEN:
                    break
                name, pos, offset = self.meta.read(self.inode_region, pos, offset, size + 1)
            except CorruptImage:
                break
            position = index + LISTING_START
            if not previous < position < inode.size:
                break
            meta_offset = (index + inode.start_offset) % SQUASHFS_METADATA_SIZE
            out.append(SeekPoint(position, self.region.start + start_block, meta_offset, name))
            previous = position
        return out

    # -- segments --------------------------------------------------------------------------

    def segment(self, inode: Inode, seeks: tuple[SeekPoint, ...], k: int) -> Segment:
        key = (inode.ref, k)
        segment = self._segments.get(key)
        if segment is None:
            stop = seeks[k + 1].position if k + 1 < len(seeks) else inode.size
            segment = self._decode(inode, seeks[k], stop)
            if k + 1 < len(seeks) and segment.end != stop:
                raise CorruptImage(
                    f"directory inode {inode.ino}: index entry {k + 1} at listing position"
                    f" {stop} is not where a header starts ({segment.end})"
                )
            cost = 200 + sum(len(e[0]) + ENTRY_OVERHEAD_BYTES for e in segment.entries)
            self._segments.put(key, segment, cost)
        return segment

    def _decode(self, inode: Inode, seek: SeekPoint, stop: int) -> Segment:
        """Headers and entries from ``seek`` until position ``stop`` (or the listing's end).

        One loop on purpose: it runs once per entry of every listing, on ``unpack_from``
        over the decompressed block, pulling in the next block only when a structure
        crosses into it.
        """
        cursor = _Cursor(self.meta, self.region, 0)
        buf, p = cursor.start(seek.block, seek.offset)
        pos = seek.position
        limit = min(stop, inode.size)
        entries: list[Entry] = []
        append = entries.append
        while pos < limit:
            if pos - seek.position > MAX_SEGMENT_BYTES:
                raise CorruptImage(f"directory inode {inode.ino}: unindexed listing too long")
            if len(buf) - p < _HEADER_SIZE:
                buf, p = cursor.refill(buf, p, _HEADER_SIZE)
            count, start_block, base = _HEADER.unpack_from(buf, p)
            p += _HEADER_SIZE
            pos += _HEADER_SIZE
            if count + 1 > SQUASHFS_DIR_COUNT:
                raise CorruptImage(f"directory inode {inode.ino}: header of {count + 1} entries")
            ref_base = start_block << 16
            for _ in range(count + 1):
                if len(buf) - p < _ENTRY_SIZE:
                    buf, p = cursor.refill(buf, p, _ENTRY_SIZE)
                offset, delta, entry_type, size = _ENTRY.unpack_from(buf, p)
                p += _ENTRY_SIZE
                size += 1
                if size > SQUASHFS_NAME_LEN or entry_type > SQUASHFS_MAX_DIR_TYPE:
                    raise CorruptImage(
                        f"directory inode {inode.ino}: entry with name size {size},"
                        f" type {entry_type}"
                    )
                if len(buf) - p < size:
                    buf, p = cursor.refill(buf, p, size)
                name = buf[p : p + size]
                p += size
                pos += _ENTRY_SIZE + size
                append((name, (base + delta) & _U32, ref_base | offset, pos))
        return Segment(tuple(entries), pos)

    # -- the interface ---------------------------------------------------------------------

    def entries(self, inode: Inode, offset: int = 0) -> Iterator[Entry]:
        """Entries after listing position ``offset`` (0: all), in on-disk order."""
        seeks = self.seek_points(inode)
        k = 0
        if offset > LISTING_START:
            for i in range(1, len(seeks)):
                if seeks[i].position > offset:
                    break
                k = i
        for i in range(k, len(seeks)):
            for entry in self.segment(inode, seeks, i).entries:
                if entry[3] > offset:
                    yield entry

    def lookup(self, inode: Inode, name: bytes) -> Entry | None:
        """The entry called ``name``, found as namei.c finds it, or None."""
        seeks = self.seek_points(inode)
        k = 0
        for i in range(1, len(seeks)):
            if seeks[i].name.partition(b"\0")[0] > name:
                break
            k = i
        first = name[0]
        for i in range(k, len(seeks)):
            for entry in self.segment(inode, seeks, i).entries:
                if first < entry[0][0]:
                    return None
                if entry[0] == name:
                    return entry
        return None
