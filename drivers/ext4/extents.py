"""Extent trees: logical block -> physical block for inodes with EXT4_EXTENTS_FL.

The root node lives in the inode's i_block (at most 4 entries); deeper nodes fill one
block each and, with metadata_csum, end in a crc32c tail.  Every node is checked as the
kernel's ``__ext4_ext_check`` does before it is used: magic 0xF30A, ``eh_depth`` exactly
one less than its parent's (so a node pointing at itself or at an ancestor is caught at
once and no walk can exceed the root's depth, at most 5), ``eh_entries <= eh_max <=`` what
fits, entries sorted and not overlapping, and every block they name inside the volume.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass

import construct as c

from drivers.base import BoundedCache, CorruptImage
from drivers.ext4.block_validity import BlockValidity
from drivers.ext4.checksum import ext4_chksum
from drivers.ext4.device import BlockDevice
from drivers.ext4.superblock import Superblock
from drivers.layout import Layout

__all__ = ["EXTENT", "EXTENT_HEADER", "EXTENT_IDX", "ExtentNode", "ExtentTree"]

EXTENT_HEADER = Layout(
    "extent_header",
    c.Struct(
        "eh_magic" / c.Int16ul,
        "eh_entries" / c.Int16ul,
        "eh_max" / c.Int16ul,
        "eh_depth" / c.Int16ul,
        "eh_generation" / c.Int32ul,
    ),
)
EXTENT_IDX = Layout(
    "extent_idx",
    c.Struct(
        "ei_block" / c.Int32ul,
        "ei_leaf_lo" / c.Int32ul,
        "ei_leaf_hi" / c.Int16ul,
        "ei_unused" / c.Int16ul,
    ),
)
EXTENT = Layout(
    "extent",
    c.Struct(
        "ee_block" / c.Int32ul,
        "ee_len" / c.Int16ul,
        "ee_start_hi" / c.Int16ul,
        "ee_start_lo" / c.Int32ul,
    ),
)
EXTENT_TAIL = Layout("extent_tail", c.Struct("eb_checksum" / c.Int32ul))

EXT4_EXT_MAGIC = 0xF30A
EXT4_MAX_EXTENT_DEPTH = 5
EXT_INIT_MAX_LEN = 1 << 15
ROOT_ENTRIES = (60 - EXTENT_HEADER.size) // EXTENT.size  # 4
_HDR = EXTENT_HEADER.packer
_IDX = EXTENT_IDX.packer
_EXT = EXTENT.packer
_LBLK_LIMIT = 1 << 32
HOLE = -1


@dataclass(slots=True)
class ExtentNode:
    """One checked node: sorted start blocks and, per entry, what it points to.

    Treat as immutable (nodes are shared through caches); not ``frozen``, whose
    __init__ costs several times more, and every cold stat of a file decodes a root.

    For an index node ``targets`` are child blocks; for a leaf they are
    ``(physical start, length, uninitialized)``.
    """

    depth: int
    starts: tuple[int, ...]
    children: tuple[int, ...]  # index nodes
    extents: tuple[tuple[int, int, bool], ...]  # leaves


def parse_node(
    validity: BlockValidity,
    ino: int,
    data: bytes,
    depth: int,
    max_entries: int,
    first: int | None,
    where: str,
) -> ExtentNode:
    """Check and decode a node (ext4_valid_extent_entries and friends).

    ``first`` is the logical block a child node's first entry must start at (its parent
    index's ei_block); None for the root.
    """
    magic, entries, emax, edepth, _ = _HDR.unpack_from(data, 0)
    if magic != EXT4_EXT_MAGIC:
        raise CorruptImage(f"{where}: invalid extent magic 0x{magic:x}")
    if edepth != depth:
        raise CorruptImage(f"{where}: unexpected eh_depth {edepth} (expected {depth})")
    if emax == 0:
        raise CorruptImage(f"{where}: invalid eh_max 0")
    if emax > max_entries:
        raise CorruptImage(f"{where}: too large eh_max {emax} (at most {max_entries})")
    if entries > emax:
        raise CorruptImage(f"{where}: eh_entries {entries} > eh_max {emax}")
    if entries == 0 and depth > 0:
        raise CorruptImage(f"{where}: eh_entries is 0 but eh_depth is {depth}")
    starts: list[int] = []
    prev_end = 0
    if first is not None and entries:
        (first_lblk,) = struct.unpack_from("<I", data, EXTENT_HEADER.size)
        if first_lblk != first:
            raise CorruptImage(
                f"{where}: first entry starts at {first_lblk}, its index says {first}"
            )
    if depth == 0:
        extents: list[tuple[int, int, bool]] = []
        for i in range(entries):
            lblk, elen, hi, lo = _EXT.unpack_from(data, EXTENT_HEADER.size + i * EXTENT.size)
            uninit = elen > EXT_INIT_MAX_LEN
            length = elen - EXT_INIT_MAX_LEN if uninit else elen
            pblk = lo | hi << 32
            if length == 0 or lblk < prev_end or lblk + length > _LBLK_LIMIT:
                raise CorruptImage(f"{where}: invalid extent entries (logical block {lblk})")
            if not validity.valid(pblk, length, ino):
                raise CorruptImage(
                    f"{where}: extent of {length} blocks at {pblk} is outside the volume"
                )
            prev_end = lblk + length
            starts.append(lblk)
            extents.append((pblk, length, uninit))
        return ExtentNode(depth, tuple(starts), (), tuple(extents))
    children: list[int] = []
    for i in range(entries):
        lblk, lo, hi, _ = _IDX.unpack_from(data, EXTENT_HEADER.size + i * EXTENT_IDX.size)
        child = lo | hi << 32
        if lblk < prev_end:
            raise CorruptImage(f"{where}: invalid extent index entries (logical block {lblk})")
        if not validity.valid(child, 1, ino):
            raise CorruptImage(f"{where}: extent index points outside the volume ({child})")
        prev_end = lblk + 1
        starts.append(lblk)
        children.append(child)
    return ExtentNode(depth, tuple(starts), tuple(children), ())


def root_node(validity: BlockValidity, ino: int, i_block: bytes) -> ExtentNode:
    """The root in i_block, checked as at iget (ext4_ext_check_inode).

    Its depth is not bounded here (the kernel accepts any at iget and refuses more than
    5 only when mapping, which :class:`ExtentTree` does too).
    """
    depth = _HDR.unpack_from(i_block, 0)[3]
    return parse_node(validity, ino, i_block, depth, ROOT_ENTRIES, None, f"inode {ino} extent root")


class ExtentTree:
    """Maps logical blocks of one inode; child nodes come from a shared bounded cache."""

    __slots__ = ("cache", "csum_seed", "dev", "ino", "root", "sb", "validity")

    def __init__(
        self,
        sb: Superblock,
        validity: BlockValidity,
        dev: BlockDevice,
        cache: BoundedCache[tuple[int, int, int], ExtentNode],
        ino: int,
        i_block: bytes,
        csum_seed: int,
        root: ExtentNode | None = None,
    ) -> None:
        self.sb = sb
        self.validity = validity
        self.dev = dev
        self.cache = cache
        self.ino = ino
        self.csum_seed = csum_seed
        self.root = root_node(validity, ino, i_block) if root is None else root
        if self.root.depth > EXT4_MAX_EXTENT_DEPTH:
            raise CorruptImage(f"inode {ino} has invalid extent depth: {self.root.depth}")

    def _child(self, block: int, depth: int, lower: int) -> ExtentNode:
        # Keyed by inode too: a block two trees share (corrupt) is checked under each seed.
        key = (self.ino, block, depth)
        node = self.cache.get(key)
        if node is not None and (not node.starts or node.starts[0] == lower):
            return node
        data = self.dev.meta_block(block, "extent block")
        where = f"inode {self.ino} extent block {block}"
        max_entries = (self.sb.block_size - EXTENT_HEADER.size) // EXTENT.size
        node = parse_node(self.validity, self.ino, data, depth, max_entries, lower, where)
        if self.sb.metadata_csum:
            entries_max = _HDR.unpack_from(data, 0)[2]
            tail = EXTENT_HEADER.size + entries_max * EXTENT.size
            if tail + 4 > len(data):
                raise CorruptImage(f"{where}: no room for the checksum")
            stored = EXTENT_TAIL.packer.unpack_from(data, tail)[0]
            if ext4_chksum(self.csum_seed, data[:tail]) != stored:
                raise CorruptImage(f"{where}: extent block checksum invalid")
        self.cache.put(key, node, 64 + 24 * len(node.starts))
        return node

    def lookup(self, lblk: int) -> tuple[int, int, bool]:
        """``(physical block, run length, unwritten)`` from ``lblk``; physical -1 is a hole.

        The run length is >= 1: the blocks ``lblk .. lblk+run-1`` are all mapped
        contiguously, or all holes.  ``unwritten`` marks an uninitialized extent: file
        data reads it as zeros, but the kernel reads directory and symlink blocks from
        it as they are on disk.  A walk visits at most depth+1 nodes.
        """
        node = self.root
        upper = _LBLK_LIMIT  # first logical block the current subtree cannot cover
        while node.depth > 0:
            i = bisect_right(node.starts, lblk) - 1
            if i < 0:
                # before the first index: a hole up to where the tree starts
                return HOLE, node.starts[0] - lblk, False
            if i + 1 < len(node.starts):
                upper = min(upper, node.starts[i + 1])
            node = self._child(node.children[i], node.depth - 1, node.starts[i])
        i = bisect_right(node.starts, lblk) - 1
        if i >= 0:
            start = node.starts[i]
            pblk, length, uninit = node.extents[i]
            if lblk < start + length:
                run = start + length - lblk
                return pblk + lblk - start, run, uninit
        nxt = node.starts[i + 1] if i + 1 < len(node.starts) else upper
        return HOLE, max(1, min(nxt, upper) - lblk), False
