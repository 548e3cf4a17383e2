"""Metadata blocks: reading (block, offset) positions of a table, across block boundaries.

Inodes, directories and the id, fragment and xattr tables live in metadata blocks: a
2-byte length word (bit 15 set: stored uncompressed; low 15 bits: bytes on disk, at most
8192) followed by the block, which inflates to at most 8192 bytes.  A position is the
on-disk start of a block and an offset into its decompressed bytes; a structure may
continue into the next block, which starts right after this one on disk.

As the kernel's cache.c and block.c: an offset at or past the end of its decompressed
block is an error, and nothing is read past ``bytes_used``.  In addition each table is a
:class:`Region` and its blocks must lie wholly inside it, so a chain of blocks cannot
wander from one table into the next.  Positions only move forward and every block read
consumes at least one requested byte, so a read of ``n`` bytes crosses at most ``n``
blocks: no loop, however crafted the image.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.base import BlockReader, BoundedCache, CorruptImage
from drivers.squashfs.compression import Codec
from drivers.squashfs.layout import (
    SQUASHFS_BLOCK_OFFSET,
    SQUASHFS_COMPRESSED_BIT,
    SQUASHFS_METADATA_SIZE,
)

__all__ = ["Device", "MetadataReader", "Region"]

#: Bookkeeping charged per cached block on top of its bytes.
_ENTRY_OVERHEAD = 100


@dataclass(frozen=True, slots=True)
class Region:
    """The bytes ``[start, end)`` of the image one table's metadata blocks must lie in."""

    name: str
    start: int
    end: int


class Device:
    """The image up to ``bytes_used`` and its compressor: raw reads and block inflation."""

    __slots__ = ("block_size", "bytes_used", "codec", "reader")

    def __init__(self, reader: BlockReader, bytes_used: int, codec: Codec, block_size: int):
        self.reader = reader
        self.bytes_used = bytes_used
        self.codec = codec
        self.block_size = block_size

    def read(self, pos: int, length: int, what: str) -> bytes:
        """``length`` bytes at ``pos``, which must end within ``bytes_used``."""
        if pos < 0 or length < 0 or pos + length > self.bytes_used:
            raise CorruptImage(
                f"{what}: {length} bytes at {pos} run past the end of the file system"
                f" ({self.bytes_used} bytes used)"
            )
        return self.reader.read(pos, length)

    def inflate(self, raw: bytes, cap: int) -> bytes:
        return self.codec.decompress(raw, cap)


Block = tuple[bytes, int]  # decompressed bytes, on-disk position of the next block


class MetadataReader:
    """Decompressed metadata blocks (cached, bounded in bytes) and reads across them."""

    __slots__ = ("_cache", "_last", "_last_pos", "device")

    def __init__(self, device: Device, cache_bytes: int) -> None:
        self.device = device
        self._cache: BoundedCache[int, Block] = BoundedCache(cache_bytes)
        self._last_pos = -1  # the block asked for last: most requests ask for it again
        self._last: Block = (b"", 0)

    def block(self, region: Region, pos: int) -> Block:
        """The metadata block at ``pos`` of ``region``: its bytes and where the next starts."""
        cached = self._last if pos == self._last_pos else self._cache.get(pos)
        if cached is not None:
            self._last_pos, self._last = pos, cached
            if pos < region.start or cached[1] > region.end:
                raise self._outside(region, pos)
            return cached
        if pos < region.start or pos + SQUASHFS_BLOCK_OFFSET > region.end:
            raise self._outside(region, pos)
        room = min(SQUASHFS_BLOCK_OFFSET + SQUASHFS_METADATA_SIZE, region.end - pos)
        chunk = self.device.read(pos, room, f"{region.name} metadata block")
        word = chunk[0] | chunk[1] << 8
        length = word & (SQUASHFS_COMPRESSED_BIT - 1)
        if not 0 < length <= SQUASHFS_METADATA_SIZE:
            raise CorruptImage(f"{region.name} metadata block at {pos}: bad length {length}")
        if SQUASHFS_BLOCK_OFFSET + length > room:
            raise self._outside(region, pos)
        raw = chunk[SQUASHFS_BLOCK_OFFSET : SQUASHFS_BLOCK_OFFSET + length]
        data = raw if word & SQUASHFS_COMPRESSED_BIT else self._inflate(region, pos, raw)
        block = (data, pos + SQUASHFS_BLOCK_OFFSET + length)
        self._last_pos, self._last = pos, block
        return self._cache.put(pos, block, len(data) + _ENTRY_OVERHEAD)

    def _inflate(self, region: Region, pos: int, raw: bytes) -> bytes:
        try:
            return self.device.inflate(raw, SQUASHFS_METADATA_SIZE)
        except CorruptImage as exc:
            raise CorruptImage(f"{region.name} metadata block at {pos}: {exc}") from exc

    @staticmethod
    def _outside(region: Region, pos: int) -> CorruptImage:
        return CorruptImage(
            f"{region.name} metadata block at {pos} is outside its table"
            f" [{region.start}, {region.end})"
        )

    def read_upto(self, region: Region, pos: int, offset: int, length: int) -> bytes:
        """Like :meth:`read`, but what can be read: it stops where the table stops making sense.

        For block lists whose owner claims more blocks than were written: the kernel reads
        only the words it needs, so the readable ones must stay readable.
        """
        parts: list[bytes] = []
        remaining = length
        try:
            while remaining > 0:  # each turn consumes >= 1 byte of ``remaining``
                data, next_pos = self.block(region, pos)
                if not 0 <= offset < len(data):
                    break
                take = min(remaining, len(data) - offset)
                parts.append(data[offset : offset + take])
                remaining -= take
                pos, offset = next_pos, 0
        except CorruptImage:
            pass
        return b"".join(parts)

    def skip(self, region: Region, pos: int, offset: int, length: int) -> tuple[int, int]:
        """The position ``length`` bytes after (``pos``, ``offset``), nothing kept."""
        remaining = length
        while remaining > 0:  # each turn consumes >= 1 byte of ``remaining``
            data, next_pos = self.block(region, pos)
            size = len(data)
            if not 0 <= offset < size:
                raise CorruptImage(
                    f"{region.name}: offset {offset} outside the {size}-byte block at {pos}"
                )
            take = min(remaining, size - offset)
            remaining -= take
            offset += take
            if offset == size:
                pos, offset = next_pos, 0
        return pos, offset

    def read(self, region: Region, pos: int, offset: int, length: int) -> tuple[bytes, int, int]:
        """``length`` bytes from (``pos``, ``offset``) and the position just after them.

        As the kernel's squashfs_read_metadata, a position at the very end of a block is
        returned as the start of the next one.
        """
        if length <= 0:
            return b"", pos, offset
        data, next_pos = self.block(region, pos)
        end = offset + length
        if offset < end < len(data) and offset >= 0:  # the common case: inside one block
            return data[offset:end], pos, end
        parts: list[bytes] = []
        remaining = length
        while True:  # each turn consumes >= 1 byte of ``remaining``
            size = len(data)
            if not 0 <= offset < size:
                raise CorruptImage(
                    f"{region.name}: offset {offset} outside the {size}-byte block at {pos}"
                )
            take = min(remaining, size - offset)
            parts.append(data[offset : offset + take])
            remaining -= take
            offset += take
            if offset == size:
                pos, offset = next_pos, 0
            if not remaining:
                return b"".join(parts), pos, offset
            data, next_pos = self.block(region, pos)
