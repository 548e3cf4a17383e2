"""Block maps (ext2/ext3 style): 12 direct pointers, then single, double, triple indirect.

Pointers are 32-bit block numbers; 0 is a hole.  An indirect block is checked whole when
first read, as the kernel's ``ext4_check_indirect_blockref`` does (every non-zero pointer
inside the volume), then kept as a compact ``array('I')`` in a bounded cache.  The walk
depth is fixed (at most 4 reads per lookup), so no crafted map can make it loop.
"""

from __future__ import annotations

import struct
from array import array

from drivers.base import BoundedCache, CorruptImage
from drivers.ext4.block_validity import BlockValidity
from drivers.ext4.device import BlockDevice
from drivers.ext4.superblock import Superblock

__all__ = ["BlockMap", "check_i_block"]

EXT4_NDIR_BLOCKS = 12
EXT4_IND_BLOCK = 12
EXT4_DIND_BLOCK = 13
EXT4_TIND_BLOCK = 14
HOLE = -1


def check_i_block(validity: BlockValidity, ino: int, i_block: bytes) -> tuple[int, ...]:
    """The 15 pointers of i_block, the 12 direct ones checked (ext4_ind_check_inode).

    As in the kernel, the three indirect pointers are not held to the system zone (the
    indirect blocks' contents are, when read); they are only range-checked when used.
    """
    pointers = struct.unpack_from("<15I", i_block)
    for p in pointers[:EXT4_NDIR_BLOCKS]:
        if p and not validity.valid(p, 1, ino):
            raise CorruptImage(f"inode {ino}: invalid block reference {p} in i_block")
    return pointers


class BlockMap:
    __slots__ = ("cache", "dev", "ino", "per_block", "pointers", "sb", "validity")

    def __init__(
        self,
        sb: Superblock,
        validity: BlockValidity,
        dev: BlockDevice,
        cache: BoundedCache[tuple[int, int], array[int]],
        ino: int,
        i_block: bytes,
    ) -> None:
        self.sb = sb
        self.validity = validity
        self.dev = dev
        self.cache = cache
        self.ino = ino
        self.per_block = sb.block_size // 4
        self.pointers = check_i_block(validity, ino, i_block)

    def _indirect(self, block: int) -> array[int]:
        # Keyed by inode too: which blocks are valid depends on the inode (the journal's).
        key = (self.ino, block)
        table = self.cache.get(key)
        if table is None:
            data = self.dev.meta_block(block, "indirect block")
            table = array("I")
            table.frombytes(data)
            if table.itemsize != 4:  # pragma: no cover - every Linux platform has 4-byte I
                raise RuntimeError("array('I') is not 32-bit here")
            if struct.pack("=I", 1) != struct.pack("<I", 1):  # pragma: no cover
                table.byteswap()
            valid = self.validity.valid
            for p in table:
                if p and not valid(p, 1, self.ino):
                    raise CorruptImage(
                        f"inode {self.ino}: indirect block {block} holds an invalid"
                        f" block reference {p}"
                    )
            self.cache.put(key, table, len(data))
        return table

    def lookup(self, lblk: int) -> tuple[int, int, bool]:
        """``(physical block, run length, False)`` from ``lblk``; physical -1 is a hole."""
        n = self.per_block
        if lblk < EXT4_NDIR_BLOCKS:
            return (*self._run(self.pointers, lblk, EXT4_NDIR_BLOCKS), False)
        lblk -= EXT4_NDIR_BLOCKS
        # i_block[12] maps n blocks through one level, [13] n^2 through two, [14] n^3.
        slot = EXT4_IND_BLOCK
        span = n
        while lblk >= span:
            lblk -= span
            slot += 1
            span *= n
            if slot > EXT4_TIND_BLOCK:
                raise CorruptImage(f"inode {self.ino}: block beyond what a block map can address")
        block = self.pointers[slot]
        while True:
            span //= n  # logical blocks under one entry of the current table
            if block == 0:
                return HOLE, span * n - lblk, False
            table = self._indirect(block)
            index, lblk = divmod(lblk, span)
            if span == 1:
                return (*self._run(table, index, n), False)
            block = table[index]
            if block == 0:
                return HOLE, span - lblk, False

    @staticmethod
    def _run(table: array[int] | tuple[int, ...], index: int, end: int) -> tuple[int, int]:
        first = table[index]
        j = index + 1
        if first == 0:
            while j < end and table[j] == 0:
                j += 1
            return HOLE, j - index
        while j < end and table[j] == first + (j - index):
            j += 1
        return first, j - index
