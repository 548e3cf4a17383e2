"""Block-sized reads of the volume, with a bounded cache for metadata blocks.

File data is read uncached in runs of contiguous blocks (one pread per run); metadata
(directory blocks, extent tree nodes, indirect blocks, xattr blocks, inode table blocks)
goes through :meth:`BlockDevice.meta_block`, whose cache is bounded in bytes.  Every block
number is checked against the file system's size here, whatever its origin.
"""

from __future__ import annotations

from drivers.base import BlockReader, BoundedCache, CorruptImage
from drivers.ext4.superblock import Superblock

__all__ = ["BlockDevice"]

#: Bytes of metadata blocks kept in memory.
META_CACHE_BYTES = 2 << 20


class BlockDevice:
    __slots__ = ("block_bits", "block_size", "blocks_count", "cache", "reader", "sb")

    def __init__(self, reader: BlockReader, sb: Superblock) -> None:
        self.reader = reader
        self.sb = sb
        self.block_size = sb.block_size
        self.block_bits = sb.block_bits
        self.blocks_count = sb.blocks_count
        self.cache: BoundedCache[int, bytes] = BoundedCache(META_CACHE_BYTES)

    def check(self, block: int, count: int = 1, what: str = "block") -> None:
        if count < 1 or block < 0 or block + count > self.blocks_count:
            raise CorruptImage(
                f"{what} {block}(+{count}) is outside the file system ({self.blocks_count} blocks)"
            )

    def meta_block(self, block: int, what: str = "metadata block", ahead: int = 1) -> bytes:
        """One whole block, cached (for structures that are read again and again).

        On a miss, ``ahead`` blocks from ``block`` on are read in one request and cached
        (the caller bounds it to the structure): the kernel reads inode tables ahead
        the same way (inode_readahead_blks), and one 128 KiB read of a cold image costs
        what a 4 KiB one does.
        """
        data = self.cache.get(block)
        if data is None:
            ahead = max(1, min(ahead, self.blocks_count - block))
            self.check(block, ahead, what)
            size = self.block_size
            run = self.reader.read(block << self.block_bits, ahead * size)
            for i in range(ahead - 1, -1, -1):  # the wanted block is the most recent
                self.cache.put(block + i, run[i * size : (i + 1) * size], size)
            data = run[:size]
        return data

    def read_blocks(self, block: int, count: int) -> bytes:
        """``count`` contiguous blocks, uncached (file data)."""
        self.check(block, count, "data block")
        return self.reader.read(block << self.block_bits, count << self.block_bits)
