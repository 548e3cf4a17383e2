"""Regular file contents: data blocks through the block list, and the fragment tail.

A file's data starts at ``start_block``; its block list (one 32-bit word per block, in
the inode table right after the inode) gives each block's on-disk length (bit 24 set:
stored uncompressed; 0: a sparse block of zeros), so block ``i`` starts where blocks
``0..i-1`` end.  The last partial block is either in the list too or, when the inode
names a fragment, a slice of a shared fragment block.

As the kernel's file.c: a size word with bits above 24 set, a block longer than the block
size on disk or once inflated, or a block that does not inflate to exactly the bytes the
file needs there (a whole block, or the tail) is an error, as is a fragment tail that
does not fit in its fragment block.  Reads never go past ``bytes_used``.

The block list is read in chunks of 2048 words (8 KiB): a chunk is decoded once into
the on-disk start of each of its blocks and cached; the position of each chunk's first
block is remembered per file, like the kernel's meta_index, so a read far into a big
file sums the lengths of the chunks before it once (in C, per chunk) rather than per
block.  Decompressed data and fragment blocks are cached by position (bounded in bytes),
so a read spanning several blocks, or several reads within one block, inflate each once.
"""

from __future__ import annotations

from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate
from typing import NamedTuple

from drivers.base import BoundedCache, CorruptImage
from drivers.squashfs.inode import Inode
from drivers.squashfs.layout import SQUASHFS_COMPRESSED_BIT_BLOCK, SQUASHFS_INVALID_FRAG
from drivers.squashfs.metadata import Device, MetadataReader, Region

__all__ = ["FileReader"]

CHUNK = 2048  # block list words per chunk: one metadata block's worth
_LENGTH_MASK = SQUASHFS_COMPRESSED_BIT_BLOCK - 1

#: Worker threads that decompress data blocks (the codecs release the GIL).
WORKERS = 2
#: Decompressed bytes a sequential reader may have in flight ahead of it.
AHEAD_BYTES = 2 << 20
#: Decompressed bytes that may wait, done or under way, for a reader to take them.
PENDING_BYTES = 4 << 20
#: Files whose reading position is remembered to tell sequential readers.
MAX_READERS = 256

BlockKey = tuple[int, int]  # (on-disk position, size word)


class Chunk(NamedTuple):
    """Decoded block list words ``k * CHUNK ...`` of one file."""

    words: array[int]  # the size words as stored (as many as could be read)
    starts: array[int]  # on-disk start of each block up to the first bad word
    valid: int  # words before the first unreadable or malformed one


class Checkpoint(NamedTuple):
    """Where a chunk's words are in the inode table, and where its first block starts."""

    block: int
    offset: int
    data: int


class FileReader:
    """Reads of regular files' bytes, with bounded caches of blocks and block lists."""

    __slots__ = (
        "_blocks",
        "_checkpoints",
        "_chunks",
        "_fragments",
        "_max_pending",
        "_next_block",
        "_pending",
        "_pool",
        "block_log",
        "block_size",
        "device",
        "inode_region",
        "meta",
    )

    def __init__(
        self,
        device: Device,
        meta: MetadataReader,
        inode_region: Region,
        block_log: int,
        cache_bytes: int,
    ):
        self.device = device
        self.meta = meta
        self.inode_region = inode_region
        self.block_log = block_log
        self.block_size = 1 << block_log
        self._blocks: BoundedCache[tuple[int, int], bytes] = BoundedCache(cache_bytes)
        self._fragments: BoundedCache[tuple[int, int], bytes] = BoundedCache(cache_bytes // 2)
        self._chunks: BoundedCache[tuple[int, int], Chunk] = BoundedCache(cache_bytes // 8)
        self._checkpoints: BoundedCache[int, list[Checkpoint]] = BoundedCache(cache_bytes // 8)
        # Decompression ahead of sequential readers, on worker threads. The threads run
        # only _inflate (a pread and a codec call); every cache is touched by the caller's
        # thread alone, so the driver stays single-threaded in all it decides.
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[BlockKey, Future[bytes]] = {}
        self._max_pending = min(64, max(4, PENDING_BYTES >> block_log))
        self._next_block: dict[int, int] = {}  # inode ref -> block a sequential read asks next

    # -- the block list --------------------------------------------------------------------

    def block_count(self, inode: Inode) -> int:
        """Blocks in the list: all of them, or all but the tail when it is in a fragment."""
        if inode.fragment != SQUASHFS_INVALID_FRAG:
            return inode.size >> self.block_log
        return (inode.size + self.block_size - 1) >> self.block_log

    def _checkpoint(self, inode: Inode, k: int) -> Checkpoint:
        """Chunk ``k``'s position, walking (and remembering) the chunks before it."""
        known = self._checkpoints.get(inode.ref)
        if known is None:
            known = [Checkpoint(*inode.tail, inode.start_block)]
        while len(known) <= k:  # k < block_count / CHUNK: bounded by the request
            j = len(known) - 1
            point = known[j]
            count = min(CHUNK, self.block_count(inode) - j * CHUNK)
            raw, block, offset = self.meta.read(
                self.inode_region, point.block, point.offset, count * 4
            )
            flags = raw[3::4]
            if max(flags) > 1:
                raise CorruptImage(f"inode {inode.ino}: bad block size word in chunk {j}")
            total = sum(array("I", raw)) - (sum(flags) << 24)
            known.append(Checkpoint(block, offset, point.data + total))
        self._checkpoints.put(inode.ref, known, 48 * len(known) + 64)
        return known[k]

    def _chunk(self, inode: Inode, k: int) -> Chunk:
        """Chunk ``k``, decoded as far as its words make sense.

        A file claiming more blocks than its list holds (a damaged size) keeps its first
        blocks readable, as in the kernel, which reads only the words before a block.
        """
        key = (inode.ref, k)
        chunk = self._chunks.get(key)
        if chunk is None:
            point = self._checkpoint(inode, k)
            count = min(CHUNK, self.block_count(inode) - k * CHUNK)
            raw = self.meta.read_upto(self.inode_region, point.block, point.offset, count * 4)
            words = array("I", raw[: len(raw) & ~3])
            lengths = [word & _LENGTH_MASK for word in words]
            valid = len(words)
            if words and (max(words) >> 25 or max(lengths) > self.block_size):
                valid = next(
                    j for j, w in enumerate(words) if w >> 25 or w & _LENGTH_MASK > self.block_size
                )
            starts = array("Q", accumulate(lengths[:valid], initial=point.data))
            chunk = self._chunks.put(key, Chunk(words, starts, valid), 12 * count + 100)
        return chunk

    # -- blocks ----------------------------------------------------------------------------

    def _inflate(self, pos: int, word: int, what: str) -> bytes:
        length = word & _LENGTH_MASK
        if not 0 < length <= self.block_size:
            raise CorruptImage(f"{what} at {pos}: bad on-disk length {length}")
        raw = self.device.read(pos, length, what)
        if word & SQUASHFS_COMPRESSED_BIT_BLOCK:
            return raw
        try:
            return self.device.inflate(raw, self.block_size)
        except CorruptImage as exc:
            raise CorruptImage(f"{what} at {pos}: {exc}") from exc

    def _locate(self, inode: Inode, i: int) -> BlockKey | None:
        """Where block ``i`` of the list is (position and size word); None if sparse."""
        chunk = self._chunk(inode, i // CHUNK)
        j = i % CHUNK
        if j >= chunk.valid:
            raise CorruptImage(f"inode {inode.ino} block {i}: bad or missing block size word")
        word = chunk.words[j]
        if not word & _LENGTH_MASK:
            return None
        return chunk.starts[j], word

    def _data_block(self, inode: Inode, i: int, key: BlockKey | None, expected: int) -> bytes:
        if key is None:
            return bytes(expected)  # sparse
        data = self._blocks.get(key)
        if data is None:
            future = self._pending.pop(key, None)
            inflated = self._inflate(*key, "data block") if future is None else future.result()
            data = self._blocks.put(key, inflated, expected)
        if len(data) != expected:
            raise CorruptImage(
                f"inode {inode.ino} block {i}: {len(data)} bytes where {expected} are expected"
            )
        return data

    def _start(self, keys: list[BlockKey]) -> None:
        """Have the workers decompress ``keys`` (those not cached or under way already)."""
        for key in keys:
            if key in self._pending or self._blocks.get(key) is not None:
                continue
            if len(self._pending) >= self._max_pending:
                self._forget_oldest()
                if len(self._pending) >= self._max_pending:
                    return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="squashfs-inflate")
            try:
                self._pending[key] = self._pool.submit(self._inflate, *key, "data block")
            except RuntimeError:  # no thread could be started (rlimit): decompress inline
                return

    def _forget_oldest(self) -> None:
        """Drop finished work nobody took (a reader that stopped or jumped away)."""
        done = [key for key, future in self._pending.items() if future.done()]
        for key in done[: self._max_pending // 4 + 1]:
            del self._pending[key]

    def _ahead(self, inode: Inode, first: int, last: int, in_list: int) -> list[BlockKey]:
        """The blocks after ``last`` worth decompressing now, if the reader is sequential."""
        expected = self._next_block.pop(inode.ref, None)
        if len(self._next_block) >= MAX_READERS:
            self._next_block.clear()
        self._next_block[inode.ref] = last + 1
        if expected is None or not expected - 1 <= first <= expected:
            return []
        count = max(1, AHEAD_BYTES >> self.block_log)
        keys = (self._locate(inode, i) for i in range(last + 1, min(last + 1 + count, in_list)))
        return [key for key in keys if key is not None]

    def _tail(self, inode: Inode, expected: int) -> bytes:
        key = (inode.fragment_block, inode.fragment_size)
        block = self._fragments.get(key)
        if block is None:
            block = self._inflate(*key, "fragment block")
            self._fragments.put(key, block, len(block))
        start = inode.fragment_offset
        if start + expected > len(block):
            raise CorruptImage(
                f"inode {inode.ino}: tail of {expected} bytes at {start} is outside its"
                f" {len(block)}-byte fragment"
            )
        return block[start : start + expected]

    def read(self, inode: Inode, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``; short only at the end of the file."""
        end = min(inode.size, offset + size)
        if offset < 0 or offset >= end:
            return b""
        log = self.block_log
        first, last = offset >> log, (end - 1) >> log
        in_list = self.block_count(inode)
        keys = {i: self._locate(inode, i) for i in range(first, min(last + 1, in_list))}
        wanted = [key for key in keys.values() if key is not None]
        # The first block is decompressed here while the workers do the rest and those
        # ahead of a sequential reader.
        self._start(wanted[1:] + self._ahead(inode, first, last, in_list))
        parts = []
        for i in range(first, last + 1):  # bounded by the request's size
            expected = min(self.block_size, inode.size - (i << log))
            if i < in_list:
                parts.append(self._data_block(inode, i, keys[i], expected))
            else:
                parts.append(self._tail(inode, expected))
        skip = offset - (first << log)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data[skip : skip + end - offset]
