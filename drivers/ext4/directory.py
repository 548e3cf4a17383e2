"""Directories: linear entry blocks, their checksum tails, and htree (dir_index) lookups.

A directory's blocks are chains of ``ext4_dir_entry_2`` records; every record is checked
as the kernel's ``__ext4_check_dir_entry`` does before its name is used (rec_len >= 12,
4-aligned, large enough for the name, inside the block, not too close to its end, inode
number in range), so a zero or wild rec_len is a :class:`CorruptImage` for that directory
and never a loop.  With metadata_csum each leaf block ends in a 12-byte
``ext4_dir_entry_tail`` whose crc32c is verified, and htree nodes end in a ``dx_tail``.

An htree directory is an ordinary linear directory whose block 0 hides the index inside
the ".." record and whose interior index blocks look like one empty record: reading the
blocks in order therefore lists it completely (readdir does that; it does not need the
index).  Lookups use the index when it validates as the kernel's ``dx_probe`` demands and
fall back to a linear scan when it does not, as the kernel does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import construct as c

from drivers.base import BoundedCache, CorruptImage
from drivers.ext4.checksum import ext4_chksum
from drivers.ext4.device import BlockDevice
from drivers.ext4.dirhash import DX_HASH_HALF_MD4, DX_HASH_LEGACY, DX_HASH_TEA, dirhash
from drivers.ext4.inode import EXT4_INDEX_FL, Inode
from drivers.ext4.superblock import COMPAT_DIR_INDEX, INCOMPAT_LARGEDIR, Superblock
from drivers.layout import Layout

log = logging.getLogger("pyfsmount.ext4")

__all__ = [
    "DIRENT",
    "DIRENT_TAIL",
    "DX_COUNTLIMIT",
    "DX_ENTRY",
    "DX_ROOT_INFO",
    "DX_TAIL",
    "Directory",
    "parse_entries",
    "scan_entries",
    "search_block",
]

DIRENT = Layout(
    "dirent",
    c.Struct(
        "inode" / c.Int32ul,
        "rec_len" / c.Int16ul,
        "name_len" / c.Int8ul,
        "file_type" / c.Int8ul,
    ),
)
DIRENT_TAIL = Layout(
    "dirent_tail",
    c.Struct(
        "det_reserved_zero1" / c.Int32ul,
        "det_rec_len" / c.Int16ul,
        "det_reserved_zero2" / c.Int8ul,
        "det_reserved_ft" / c.Int8ul,
        "det_checksum" / c.Int32ul,
    ),
)
DX_ROOT_INFO = Layout(
    "dx_root_info",
    c.Struct(
        "reserved_zero" / c.Int32ul,
        "hash_version" / c.Int8ul,
        "info_length" / c.Int8ul,
        "indirect_levels" / c.Int8ul,
        "unused_flags" / c.Int8ul,
    ),
)
DX_COUNTLIMIT = Layout("dx_countlimit", c.Struct("limit" / c.Int16ul, "count" / c.Int16ul))
DX_ENTRY = Layout("dx_entry", c.Struct("hash" / c.Int32ul, "block" / c.Int32ul))
DX_TAIL = Layout("dx_tail", c.Struct("dt_reserved" / c.Int32ul, "dt_checksum" / c.Int32ul))

EXT4_NAME_LEN = 255
EXT4_FT_DIR_CSUM = 0xDE
EXT4_MAX_REC_LEN = (1 << 16) - 1
_DIRENT = DIRENT.packer
_TAIL = DIRENT_TAIL.packer
_TAIL_SIZE = DIRENT_TAIL.size
_DX_ROOT_INFO_OFFSET = 24  # after the fake "." (12 bytes) and ".." headers (12 bytes)
_DX_NODE_OFFSET = 8  # after the fake empty dirent header of an interior node
HOLE = -1

#: A live entry: (byte position in the directory, name, inode number).
Entry = tuple[int, bytes, int]
#: Logical block -> (physical block or HOLE, run length, unwritten): the block mapping.
Mapper = Callable[[int], tuple[int, int, bool]]


def dir_rec_len(name_len: int) -> int:
    return (name_len + 8 + 3) & ~3


def rec_len_from_disk(dlen: int, block_size: int) -> int:
    """ext4_rec_len_from_disk: 64 KiB blocks encode 65536 as 0 or 65535."""
    if block_size < 65536:
        return dlen
    if dlen in (EXT4_MAX_REC_LEN, 0):
        return block_size
    return (dlen & 65532) | ((dlen & 3) << 16)


def parse_entries(
    buf: bytes,
    start: int,
    end: int,
    pos_base: int,
    block_size: int,
    inodes_count: int,
    where: str,
) -> list[Entry]:
    """The live entries of the record chain ``buf[start:end]``, each checked.

    Positions are ``pos_base + offset`` (offset from ``start``), so that a listing can
    resume at the position just after any entry.  A bad record is CorruptImage.
    """
    entries, damage = scan_entries(buf, start, end, pos_base, block_size, inodes_count, where)
    if damage:
        raise CorruptImage(damage)
    return entries


#: What a cached leaf block costs (measured with tracemalloc on the benchmark's ext4
#: image: 100 blocks of 100 entries took 16.5 KiB each, where the block size, 4 KiB, was
#: charged): the DirBlock and its tuple, then per entry its (position, name, inode) tuple
#: and the name.
_LEAF_BYTES, _ENTRY_BYTES = 512, 150


def _leaf_cost(entries: list[Entry]) -> int:
    return _LEAF_BYTES + sum(_ENTRY_BYTES + len(name) for _, name, _ in entries)


def scan_entries(
    buf: bytes,
    start: int,
    end: int,
    pos_base: int,
    block_size: int,
    inodes_count: int,
    where: str,
) -> tuple[list[Entry], str]:
    """The live entries up to the first bad record, and what is wrong with it ("" if none).

    As __ext4_check_dir_entry: the kernel's readdir lists the entries before a bad record
    and skips the rest of its block; a lookup that reaches it fails.
    """
    out: list[Entry] = []
    size = end - start
    off = 0
    unpack = _DIRENT.unpack_from
    while off < size:
        if size - off < 12:
            return out, f"{where}: directory entry overrun at offset {off}"
        ino, dlen, name_len, _ = unpack(buf, start + off)
        rlen = rec_len_from_disk(dlen, block_size)
        error = None
        if rlen < 12:
            error = f"rec_len is smaller than minimal ({rlen})"
        elif rlen % 4:
            error = f"rec_len % 4 != 0 ({rlen})"
        elif rlen < dir_rec_len(name_len):
            error = f"rec_len is too small for name_len ({rlen} < {name_len})"
        elif off + rlen > size:
            error = "directory entry overrun"
        elif off + rlen > size - 12 and off + rlen != size:
            error = "directory entry too close to block end"
        elif ino > inodes_count:
            error = f"inode out of bounds ({ino})"
        if error is not None:
            return out, f"{where}: bad entry at offset {off}: {error}"
        if ino:
            name = buf[start + off + 8 : start + off + 8 + name_len]
            if off + rlen == size and name == b".":
                return out, f"{where}: directory entry overrun ('.' fills the block)"
            out.append((pos_base + off, name, ino))
        off += rlen
    return out, ""


def _dirent_tail(block: bytes, block_size: int) -> int | None:
    """The stored checksum if the block ends in a well-formed ext4_dir_entry_tail."""
    zero1, dlen, zero2, ft, csum = _TAIL.unpack_from(block, block_size - _TAIL_SIZE)
    if zero1 or rec_len_from_disk(dlen, block_size) != _TAIL_SIZE or zero2 or ft != 0xDE:
        return None
    return int(csum)


def _dx_countlimit_offset(block: bytes, block_size: int) -> int | None:
    """Where a dx node's count/limit sits (the kernel's get_dx_countlimit), or None."""
    rlen = rec_len_from_disk(_DIRENT.unpack_from(block, 0)[1], block_size)
    if rlen == block_size:
        return _DX_NODE_OFFSET
    if rlen == 12:
        if rec_len_from_disk(_DIRENT.unpack_from(block, 12)[1], block_size) != block_size - 12:
            return None
        reserved, _, info_length, _, _ = DX_ROOT_INFO.packer.unpack_from(block, 24)
        if reserved or info_length != DX_ROOT_INFO.size:
            return None
        return _DX_ROOT_INFO_OFFSET + DX_ROOT_INFO.size
    return None


def dx_checksum_ok(block: bytes, block_size: int, seed: int) -> bool:
    """ext4_dx_csum_verify for a root or interior htree block."""
    count_offset = _dx_countlimit_offset(block, block_size)
    if count_offset is None:
        return False
    limit, count = DX_COUNTLIMIT.packer.unpack_from(block, count_offset)
    tail = count_offset + limit * DX_ENTRY.size
    if tail > block_size - DX_TAIL.size or count > limit:
        return False
    csum = ext4_chksum(seed, block[: count_offset + count * DX_ENTRY.size])
    csum = ext4_chksum(csum, block[tail : tail + 4])
    csum = ext4_chksum(csum, b"\0\0\0\0")
    return bool(csum == DX_TAIL.packer.unpack_from(block, tail)[1])


@dataclass(frozen=True, slots=True)
class DirBlock:
    """A parsed directory block: its live entries, or for an htree node its index.

    ``damage`` says why the entries stop short of the block's end ("" when they do not).
    """

    entries: tuple[Entry, ...]
    dx: tuple[tuple[int, int], ...] = ()  # (hash, logical block); entry 0's hash is 0
    dx_info: tuple[int, int, int] = (0, 0, 0)  # root only: hash_version, levels, flags
    damage: str = ""


class _BadDx(Exception):
    """The htree does not validate: fall back to a linear scan (ERR_BAD_DX_DIR)."""


class Directory:
    """Reads one directory inode's blocks (not for inline directories)."""

    __slots__ = (
        "cache",
        "dev",
        "indexed",
        "inode",
        "is_dx",
        "map",
        "nblocks",
        "sb",
        "strict_holes",
        "where",
    )

    def __init__(
        self,
        sb: Superblock,
        dev: BlockDevice,
        cache: BoundedCache[tuple[int, int], DirBlock],
        inode: Inode,
        mapper: Mapper,
    ) -> None:
        self.sb = sb
        self.dev = dev
        self.cache = cache
        self.inode = inode
        self.map = mapper
        self.nblocks = (inode.size + sb.block_size - 1) >> sb.block_bits
        self.indexed = bool(inode.flags & EXT4_INDEX_FL)
        # is_dx(): the kernel looks names up through the index
        self.is_dx = self.indexed and sb.has_compat(COMPAT_DIR_INDEX)
        # is_dx_dir(): the kernel lists through ext4_dx_readdir, where a hole is an error
        self.strict_holes = sb.has_compat(COMPAT_DIR_INDEX) and (self.indexed or self.nblocks == 1)
        self.where = f"directory inode {inode.ino}"

    # -- blocks ---------------------------------------------------------------------------

    def _physical(self, lblk: int) -> int:
        return self.map(lblk)[0]

    def block(self, lblk: int, pblk: int) -> DirBlock:
        """The checked live entries of logical block ``lblk`` (at ``pblk``)."""
        key = (self.inode.ino, pblk)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        bs = self.sb.block_size
        data = self.dev.meta_block(pblk, "directory block")
        where = f"{self.where} block {lblk}"
        end = bs
        first_ino, first_len = _DIRENT.unpack_from(data, 0)[:2]
        dx_like = self.indexed and (
            lblk == 0 or (first_ino == 0 and rec_len_from_disk(first_len, bs) == bs)
        )
        if self.sb.metadata_csum:
            stored = _dirent_tail(data, bs)
            if stored is not None:
                if ext4_chksum(self.inode.csum_seed, data[: bs - _TAIL_SIZE]) != stored:
                    raise CorruptImage(f"{where}: directory block checksum invalid")
                end = bs - _TAIL_SIZE
            elif dx_like:
                if not dx_checksum_ok(data, bs, self.inode.csum_seed):
                    raise CorruptImage(f"{where}: htree block checksum invalid")
            else:
                raise CorruptImage(f"{where}: no space for directory leaf checksum")
        entries, damage = scan_entries(
            data, 0, end, lblk << self.sb.block_bits, bs, self.sb.inodes_count, where
        )
        if damage:
            log.warning("%s; the rest of the block is skipped, as the kernel's readdir", damage)
        result = DirBlock(tuple(entries), damage=damage)
        self.cache.put(key, result, _leaf_cost(entries))
        return result

    def blocks(self, first: int = 0) -> Iterator[tuple[int, DirBlock]]:
        """Every mapped block from logical block ``first``, in order (holes skipped)."""
        lblk = first
        while lblk < self.nblocks:
            pblk, run, _ = self.map(lblk)
            if pblk == HOLE:
                if self.strict_holes:
                    # ext4_read_dirblock (DIRENT_HTREE): no holes where the kernel lists by hash
                    raise CorruptImage(f"{self.where}: directory hole found at block {lblk}")
                lblk += run
                continue
            for i in range(min(run, self.nblocks - lblk)):
                yield lblk + i, self.block(lblk + i, pblk + i)
            lblk += run

    # -- readdir and lookup -----------------------------------------------------------------

    def entries(self, offset: int = 0) -> Iterator[Entry]:
        """Live entries at byte positions >= ``offset``, in on-disk order."""
        for _, blk in self.blocks(max(0, offset) >> self.sb.block_bits):
            for entry in blk.entries:
                if entry[0] >= offset:
                    yield entry

    def lookup(self, name: bytes) -> int | None:
        if name in (b".", b".."):
            # As ext4_find_entry: these live only in block 0, whatever the index says.
            pblk = self.map(0)[0] if self.nblocks else HOLE
            if pblk == HOLE:
                return None
            for _, ename, ino in self._first_records(pblk):
                if ename == name:
                    return ino
            return None
        if self.is_dx:
            try:
                return self._dx_lookup(name)
            except _BadDx:
                pass
        for _, blk in self.blocks():
            found = search_block(blk, name)
            if found is not None:
                return found
        return None

    def _first_records(self, pblk: int) -> list[Entry]:
        """ "." and ".." of block 0, read without the leaf checks (it may be a dx root)."""
        data = self.dev.meta_block(pblk, "directory block")
        bs = self.sb.block_size
        out: list[Entry] = []
        off = 0
        for _ in range(2):
            if off + 12 > bs:
                break
            ino, dlen, name_len, _ = _DIRENT.unpack_from(data, off)
            rlen = rec_len_from_disk(dlen, bs)
            if rlen < dir_rec_len(name_len) or off + rlen > bs or ino > self.sb.inodes_count:
                raise CorruptImage(f"{self.where}: bad '.' or '..' entry")
            if ino:
                out.append((off, data[off + 8 : off + 8 + name_len], ino))
            off += rlen
        return out

    # -- htree ----------------------------------------------------------------------------

    def _dx_node(self, lblk: int, root: bool) -> DirBlock:
        """An htree root or interior node, checked as dx_probe does (cached once valid)."""
        if lblk >= self.nblocks:
            raise CorruptImage(f"{self.where}: htree points past i_size (block {lblk})")
        pblk = self._physical(lblk)
        if pblk == HOLE:
            raise CorruptImage(f"{self.where}: directory hole found for htree block {lblk}")
        key = (self.inode.ino, -1 - pblk if root else -(1 << 62) - pblk)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        data = self.dev.meta_block(pblk, "htree block")
        bs = self.sb.block_size
        csum_room = DX_TAIL.size if self.sb.metadata_csum else 0
        if root:
            info_length = DX_ROOT_INFO.unpack(data, _DX_ROOT_INFO_OFFSET)["info_length"]
            count_offset = _DX_ROOT_INFO_OFFSET + info_length
            expected_limit = (bs - 24 - info_length - csum_room) // DX_ENTRY.size
        else:
            count_offset = _DX_NODE_OFFSET
            expected_limit = (bs - 8 - csum_room) // DX_ENTRY.size
        if count_offset + DX_COUNTLIMIT.size > bs:
            raise _BadDx
        limit, count = DX_COUNTLIMIT.packer.unpack_from(data, count_offset)
        if limit != expected_limit or count == 0 or count > limit:
            raise _BadDx
        if self.sb.metadata_csum and not dx_checksum_ok(data, bs, self.inode.csum_seed):
            raise CorruptImage(f"{self.where}: htree block {lblk} checksum invalid")
        pairs = [
            (h, b & 0x0FFFFFFF)
            for h, b in DX_ENTRY.packer.iter_unpack(
                data[count_offset : count_offset + count * DX_ENTRY.size]
            )
        ]
        pairs[0] = (0, pairs[0][1])  # entry 0's hash field holds count/limit
        info = (0, 0, 0)
        if root:
            _, version, _, levels, flags = DX_ROOT_INFO.packer.unpack_from(
                data, _DX_ROOT_INFO_OFFSET
            )
            info = (version, levels, flags)
        return self.cache.put(key, DirBlock((), tuple(pairs), info), 64 + 40 * len(pairs))

    def _dx_lookup(self, name: bytes) -> int | None:
        root = self._dx_node(0, root=True)
        root_pairs = root.dx
        version, levels, unused = root.dx_info
        if version not in (DX_HASH_LEGACY, DX_HASH_HALF_MD4, DX_HASH_TEA):
            raise _BadDx
        if unused & 1:
            raise _BadDx
        if levels >= (3 if self.sb.has_incompat(INCOMPAT_LARGEDIR) else 2):
            raise _BadDx
        version += self.sb.hash_unsigned
        target = dirhash(name, version, self.sb.hash_seed)
        if target is None:
            raise _BadDx
        # Descend: path holds (entries, index) per level, root first.
        path: list[tuple[tuple[tuple[int, int], ...], int]] = []
        seen = {0}
        pairs = root_pairs
        for level in range(levels + 1):
            i = _last_le(pairs, target)
            path.append((pairs, i))
            if level == levels:
                break
            child = pairs[i][1]
            if child in seen:
                raise _BadDx
            seen.add(child)
            pairs = self._dx_node(child, root=False).dx
        # Search the leaf, then any following leaf whose hash continues ours.
        for _ in range(self.nblocks):
            leaf_pairs, leaf_index = path[-1]
            leaf = leaf_pairs[leaf_index][1]
            if leaf >= self.nblocks:
                raise CorruptImage(f"{self.where}: htree points past i_size (block {leaf})")
            pblk = self._physical(leaf)
            if pblk == HOLE:
                raise CorruptImage(f"{self.where}: directory hole found for htree leaf {leaf}")
            found = search_block(self.block(leaf, pblk), name)
            if found is not None:
                return found
            if not self._next_leaf(path, target):
                return None
        return None

    def _next_leaf(self, path: list[tuple[tuple[tuple[int, int], ...], int]], target: int) -> bool:
        """ext4_htree_next_block: step to the next leaf if its hash continues ``target``."""
        level = len(path) - 1
        while level >= 0:
            pairs, i = path[level]
            if i + 1 < len(pairs):
                break
            level -= 1
        else:
            return False
        pairs, i = path[level]
        next_hash = pairs[i + 1][0]
        if next_hash & ~1 != target:
            return False
        path[level] = (pairs, i + 1)
        for deeper in range(level + 1, len(path)):
            parent_pairs, parent_i = path[deeper - 1]
            path[deeper] = (self._dx_node(parent_pairs[parent_i][1], root=False).dx, 0)
        return True


def search_block(block: DirBlock, name: bytes) -> int | None:
    """``name``'s inode in ``block``; a search that reaches the block's damage fails
    (ext4_search_dir), where a listing would have skipped it."""
    for _, ename, ino in block.entries:
        if ename == name:
            return ino
    if block.damage:
        raise CorruptImage(block.damage)
    return None


def _last_le(pairs: tuple[tuple[int, int], ...], target: int) -> int:
    """Index of the last entry whose hash is <= target (entry 0 counts as hash 0)."""
    lo, hi = 1, len(pairs) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if pairs[mid][0] > target:
            hi = mid - 1
        else:
            lo = mid + 1
    return lo - 1
