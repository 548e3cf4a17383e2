"""The indirect lookup tables: ids, fragments, xattr ids and the export (lookup) table.

Each is an array of fixed-size entries packed into metadata blocks, found through an
uncompressed index of 64-bit block positions.  The indexes are read at open with the
checks of the kernel's id.c, fragment.c, xattr_id.c and export.c, in the order
``squashfs_fill_super`` reads them: each table must end where the next one begins
(``next_table``), its blocks must be in increasing order at most one metadata block
apart, and there must be at least one id (and one xattr id when there is an xattr table).
Every lookup is bounds-checked against the table's entry count.

The export table is only checked, as the kernel checks it at mount: this driver maps
inode numbers to inodes through the directories it has read.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from drivers.base import BoundedCache, CorruptImage
from drivers.squashfs.layout import (
    FRAGMENT_ENTRY,
    SQUASHFS_BLOCK_OFFSET,
    SQUASHFS_INVALID_BLK,
    SQUASHFS_METADATA_SIZE,
    XATTR_ID,
    XATTR_ID_TABLE,
)
from drivers.squashfs.metadata import Device, MetadataReader, Region
from drivers.squashfs.superblock import Superblock

__all__ = ["FragmentTable", "IdTable", "Tables", "XattrIdTable", "read_tables"]

_ID_SIZE = 4
_LOOKUP_ENTRY_SIZE = 8
_MAX_STEP = SQUASHFS_METADATA_SIZE + SQUASHFS_BLOCK_OFFSET
_RESOLVED_FRAGMENTS = 4096


def _index_length(count: int, entry_size: int) -> int:
    """Bytes of the index of a table of ``count`` entries (one u64 per metadata block)."""
    return -(-count * entry_size // SQUASHFS_METADATA_SIZE) * 8


def _read_index(device: Device, start: int, length: int, what: str) -> array[int]:
    index = array("Q", device.read(start, length, what))
    if index.itemsize != 8:  # pragma: no cover - every platform CPython runs on
        raise RuntimeError("array('Q') is not 64-bit")
    return index


def _check_chain(index: array[int], table_start: int, what: str) -> None:
    """Blocks strictly increasing, at most one metadata block apart, ending before the index."""
    for n in range(len(index) - 1):
        if not 0 < index[n + 1] - index[n] <= _MAX_STEP:
            raise CorruptImage(f"{what}: index entries {n} and {n + 1} are out of order")
    last = index[-1]
    if last >= table_start or table_start - last > _MAX_STEP:
        raise CorruptImage(f"{what}: last block {last} does not end at the index {table_start}")


class _Table:
    """``count`` entries of ``entry_size`` bytes in the metadata blocks ``index`` lists."""

    __slots__ = ("count", "entry_size", "index", "meta", "region")

    def __init__(
        self,
        meta: MetadataReader,
        region: Region,
        index: array[int],
        count: int,
        entry_size: int,
    ):
        self.meta = meta
        self.region = region
        self.index = index
        self.count = count
        self.entry_size = entry_size

    def entry(self, n: int) -> bytes:
        if not 0 <= n < self.count:
            raise CorruptImage(f"{self.region.name} entry {n} out of range (0..{self.count - 1})")
        block, offset = divmod(n * self.entry_size, SQUASHFS_METADATA_SIZE)
        data, _, _ = self.meta.read(self.region, self.index[block], offset, self.entry_size)
        return data


class IdTable(_Table):
    """uid/gid index -> 32-bit id (id.c's squashfs_get_id), remembered once resolved."""

    __slots__ = ("_resolved",)

    def __init__(self, meta: MetadataReader, region: Region, index: array[int], count: int):
        super().__init__(meta, region, index, count, _ID_SIZE)
        self._resolved: dict[int, int] = {}  # at most no_ids (< 65536) entries

    def get(self, n: int) -> int:
        value = self._resolved.get(n)
        if value is None:
            value = self._resolved[n] = int.from_bytes(self.entry(n), "little")
        return value


class FragmentTable(_Table):
    """Fragment index -> (start block, size word), as fragment.c's squashfs_frag_lookup."""

    __slots__ = ("_resolved",)

    def __init__(self, meta: MetadataReader, region: Region, index: array[int], count: int):
        super().__init__(meta, region, index, count, FRAGMENT_ENTRY.size)
        self._resolved: BoundedCache[int, tuple[int, int]] = BoundedCache(_RESOLVED_FRAGMENTS)

    def lookup(self, n: int) -> tuple[int, int]:
        found = self._resolved.get(n)
        if found is None:
            start_block, size, _ = FRAGMENT_ENTRY.packer.unpack(self.entry(n))
            if size >> 25:  # squashfs_block_size(): only bit 24 may be set above the size
                raise CorruptImage(f"fragment {n}: bad size word {size:#x}")
            found = self._resolved.put(n, (start_block, size))
        return found


class XattrIdTable(_Table):
    """Xattr id -> (reference into the xattr table, count, size), as xattr_id.c."""

    __slots__ = ("xattr_table_start",)

    def __init__(
        self,
        meta: MetadataReader,
        region: Region,
        index: array[int],
        count: int,
        xattr_table_start: int,
    ):
        super().__init__(meta, region, index, count, XATTR_ID.size)
        self.xattr_table_start = xattr_table_start

    def lookup(self, n: int) -> tuple[int, int, int]:
        entry = XATTR_ID.unpack_record(self.entry(n))
        return entry.xattr, entry.count, entry.size


@dataclass(frozen=True, slots=True)
class Tables:
    """The tables of one image and the end of the directory table they imply."""

    ids: IdTable
    fragments: FragmentTable | None
    xattr_ids: XattrIdTable | None
    directory_table_end: int


def _read_xattr_id_table(
    device: Device, meta: MetadataReader, sb: Superblock
) -> tuple[XattrIdTable | None, int]:
    start = sb.xattr_id_table_start
    if start == SQUASHFS_INVALID_BLK:
        return None, sb.bytes_used
    header = XATTR_ID_TABLE.unpack_record(device.read(start, XATTR_ID_TABLE.size, "xattr id table"))
    count = header.xattr_ids
    if count == 0:
        raise CorruptImage("xattr id table: no xattr ids")
    length = _index_length(count, XATTR_ID.size)
    index_start = start + XATTR_ID_TABLE.size
    if length != sb.bytes_used - index_start:
        raise CorruptImage("xattr id table: index size does not match the end of the image")
    index = _read_index(device, index_start, length, "xattr id index")
    _check_chain(index, start, "xattr id table")
    if header.xattr_table_start >= index[0]:
        raise CorruptImage("xattr id table: the xattr table starts after the id blocks")
    region = Region("xattr id table", index[0], start)
    table = XattrIdTable(meta, region, index, count, header.xattr_table_start)
    return table, header.xattr_table_start


def _read_id_table(
    device: Device, meta: MetadataReader, sb: Superblock, next_table: int
) -> tuple[IdTable, int]:
    if sb.no_ids == 0:
        raise CorruptImage("id table: no ids")
    length = _index_length(sb.no_ids, _ID_SIZE)
    if length != next_table - sb.id_table_start:
        raise CorruptImage("id table: index size does not match the next table's start")
    index = _read_index(device, sb.id_table_start, length, "id index")
    _check_chain(index, sb.id_table_start, "id table")
    region = Region("id table", index[0], sb.id_table_start)
    return IdTable(meta, region, index, sb.no_ids), index[0]


def _check_lookup_table(device: Device, sb: Superblock, next_table: int) -> int:
    """export.c's checks of the inode lookup table; its first block bounds what precedes."""
    start = sb.lookup_table_start
    if start == SQUASHFS_INVALID_BLK:
        return next_table
    if sb.inodes == 0:
        raise CorruptImage("inode lookup table: no inodes")
    length = _index_length(sb.inodes, _LOOKUP_ENTRY_SIZE)
    if length != next_table - start:
        raise CorruptImage("inode lookup table: index size does not match the next table")
    index = _read_index(device, start, length, "inode lookup index")
    _check_chain(index, start, "inode lookup table")
    return index[0]


def _read_fragment_table(
    device: Device, meta: MetadataReader, sb: Superblock, next_table: int
) -> tuple[FragmentTable | None, int]:
    if sb.fragments == 0:
        return None, next_table
    start = sb.fragment_table_start
    length = _index_length(sb.fragments, FRAGMENT_ENTRY.size)
    if start + length > next_table:
        raise CorruptImage("fragment table: its index runs into the next table")
    index = _read_index(device, start, length, "fragment index")
    if index[0] >= start:
        raise CorruptImage("fragment table: first block is not before the index")
    region = Region("fragment table", index[0], start)
    return FragmentTable(meta, region, index, sb.fragments), index[0]


def read_tables(device: Device, meta: MetadataReader, sb: Superblock) -> Tables:
    """Read and check every table index, and the inode and directory table positions."""
    xattr_ids, next_table = _read_xattr_id_table(device, meta, sb)
    ids, next_table = _read_id_table(device, meta, sb, next_table)
    next_table = _check_lookup_table(device, sb, next_table)
    fragments, next_table = _read_fragment_table(device, meta, sb, next_table)
    if sb.directory_table_start > next_table:
        raise CorruptImage("squashfs image failed sanity check: directory table after its end")
    if sb.inode_table_start >= sb.directory_table_start:
        raise CorruptImage("squashfs image failed sanity check: inode table after directories")
    return Tables(ids, fragments, xattr_ids, next_table)
