"""Image reads ahead of sequential readers, on worker threads.

A sequential reader of a big file asks for one window after another (the kernel's FUSE
read-ahead sends 1 MiB requests, in order).  Served inline, each request waits for its
image read, then the daemon waits for the kernel to take the reply: the disk and the
FUSE channel take turns, and the kernel's own read-ahead on the image falls behind a
reader that keeps pausing.

So once a file is read sequentially, the next windows are read on worker threads while
the current one is answered, through the image's bulk descriptor
(:meth:`BlockReader.read_bulk`, opened by fusefs.driver.open_bulk): buffered, with the
kernel's read-ahead far ahead of the workers; or with ``O_DIRECT``, straight from the
disk into each worker's reused buffer, where filling the page cache is slow (a VM
handing free memory back to its host). Measured on the 512 MiB benchmark files, cold,
on host-backed memory: ext4 1,100 MB/s buffered against 842 with O_DIRECT, FAT32 1,110
against 858 (benchmarks/RESULTS.md, 2026-12-03 night).

The image's pages a buffered read leaves in the page cache are read once and left to
the kernel, as a loop device leaves its backing file's: they are the first reclaimed.
Dropping them as the reader goes (``POSIX_FADV_DONTNEED``, rounded out to whole large
folios, as the kernel drops nothing less) made the read no faster than O_DIRECT, or
slower: 897 against 866 MB/s dropping each chunk as it was read, 622 against 913
dropping each worker's chunk before.

The driver keeps deciding everything on its own thread: it turns each window into the
image extents that hold it (with its own caches, chains and checks) before the window
is handed over; the workers only read those extents.  A window whose extents cannot be
worked out (a damaged chain) is not read ahead: its request fails as it would anyway.
Other requests are read inline, through the page cache: with the kernel's read-ahead on
the image when they follow the last one closely, without it when they are random.

Drivers whose file data is stored as it is (FAT, ext4) read files through it; holes are
extents at :data:`ZEROS`. Squashfs data is compressed: it reads ahead on its own terms
(``drivers/squashfs/file.py``).

Reading ahead is done in chunks of :data:`CHUNK` bytes, whatever the requests' size, up
to :data:`AHEAD` bytes past the reader. Bounded: at most :data:`MAX_PENDING` chunks wait
per volume, one scratch buffer per worker, and at most :data:`MAX_STREAMS` files are followed.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from drivers.base import DIRECT_ALIGN, BlockReader, DriverError

__all__ = [
    "AHEAD",
    "CHUNK",
    "MAX_PENDING",
    "MAX_STREAMS",
    "ZEROS",
    "Extents",
    "ReadAhead",
    "read_extents",
]

#: (offset in the image, length) pieces that hold a window of a file, in file order.
Extents = Sequence[tuple[int, int]]
#: The image offset of a piece that is not stored (a hole): it reads as zeros.
ZEROS = -1

#: Read-ahead unit: files are read ahead in chunks of this many bytes at offsets that are
#: multiples of it, whatever the size of the reader's requests (128 KiB requests would
#: otherwise make O_DIRECT reads too small to keep the disk busy).
CHUNK = 1 << 20
#: Bytes read ahead of a sequential reader.
AHEAD = 4 << 20
#: Chunks that may wait (done or under way) for readers: those ahead of one reader,
#: plus the one it is in.
MAX_PENDING = AHEAD // CHUNK + 2
#: A request read inline that starts this close after the last one is left to the page
#: cache and the kernel's read-ahead on the image (the next file of a directory).
NEAR = 1 << 20
#: Worker threads reading chunks, each with one chunk's buffer: two reads in flight keep
#: the disk busier than one (1 MiB O_DIRECT reads of the benchmark image: about 800-890
#: MB/s at two against 700-840 at one).
WORKERS = 2
#: Files whose next expected offset is remembered.
MAX_STREAMS = 256

Chunk = tuple[int, int]  # (stream, index): bytes index * CHUNK .. of that file


class ReadAhead:
    """Serves windows of files, reading the image ahead of sequential readers."""

    __slots__ = (
        "_last_end",
        "_next",
        "_pending",
        "_pool",
        "_worker_buffers",
        "reader",
    )

    def __init__(self, reader: BlockReader) -> None:
        self.reader = reader
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[Chunk, Future[bytes]] = {}
        self._next: dict[int, int] = {}  # stream -> offset a sequential reader asks next
        # Each worker's own buffer for O_DIRECT reads, page-aligned, made by the worker
        # on its first chunk.
        self._worker_buffers = threading.local()
        self._last_end = 0  # image offset where the last request read inline ended

    def read(
        self,
        stream: int,
        offset: int,
        end: int,
        limit: int,
        extents: Callable[[int, int], Extents],
    ) -> bytes:
        """Bytes ``offset .. end`` of ``stream`` (a file of ``limit`` bytes), whose
        image extents ``extents(offset, end)`` gives."""
        sequential = self._follow(stream, offset, end)
        first, last = offset // CHUNK, (end - 1) // CHUNK
        futures = [self._pending.get((stream, k)) for k in range(first, last + 1)]
        data = self._from_chunks(first, futures, offset, end) if all(futures) else None
        if data is None:
            data = read_extents(self._read_inline, extents(offset, end))
        if end % CHUNK == 0 or end == limit:
            last += 1  # the reader is done with the chunk it ended in too
        for k in range(first, last):
            self._pending.pop((stream, k), None)
        if sequential:
            self._start(stream, end, limit, extents)
        return data

    @staticmethod
    def _from_chunks(
        first: int, futures: list[Future[bytes] | None], offset: int, end: int
    ) -> bytes | None:
        """The bytes of a request, out of the chunks read ahead for it; None if one of
        them could not be read (the request is then read alone, so that damage past
        its end is not its failure)."""
        try:
            chunks = [future.result() for future in futures if future is not None]
        except DriverError:
            return None
        if len(chunks) == 1 and offset == first * CHUNK and end - offset == len(chunks[0]):
            return chunks[0]  # a request for exactly one chunk: no copy
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        skip = offset - first * CHUNK
        return data[skip : skip + end - offset]

    def _follow(self, stream: int, offset: int, end: int) -> bool:
        """Remember where ``stream`` goes next; whether this read continues the last."""
        expected = self._next.pop(stream, None)
        if len(self._next) >= MAX_STREAMS:
            self._next.clear()
        self._next[stream] = end
        return expected == offset

    def _start(
        self, stream: int, offset: int, limit: int, extents: Callable[[int, int], Extents]
    ) -> None:
        """Have the workers read the chunks of the AHEAD bytes after ``offset``."""
        for k in range(offset // CHUNK, -(-min(offset + AHEAD, limit) // CHUNK)):
            chunk = (stream, k)
            if chunk in self._pending:
                continue
            if len(self._pending) >= MAX_PENDING:
                self._forget_stale(stream, offset)
                if len(self._pending) >= MAX_PENDING:
                    return
            try:
                pieces = extents(k * CHUNK, min((k + 1) * CHUNK, limit))
            except DriverError:
                return  # the request for this chunk will say what is wrong
            if self._pool is None:
                self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="readahead")
            try:
                self._pending[chunk] = self._pool.submit(self._read_ahead, pieces)
            except RuntimeError:  # no thread could be started (rlimit): stay inline
                return

    def _read_inline(self, start: int, length: int) -> bytes:
        """Bytes of the image for a request that was not read ahead.

        Near the end of the last such read (the next small file of a directory, laid out
        after the one before) the page cache and the kernel's read-ahead on the image
        serve it best. Anywhere else it is a random read: just its own pages, without
        read-ahead (:meth:`BlockReader.read_random`), and from the page cache when they
        are there. These used to go around the page cache with O_DIRECT, which read a
        cached image from the disk again: 4,800-5,600 random 4 KiB reads/s through a
        confined mount of a cached ext4 image, against 11,000 from the cache.
        """
        last_end, self._last_end = self._last_end, start + length
        if last_end <= start < last_end + NEAR:
            return self.reader.read(start, length)
        return self.reader.read_random(start, length)

    def _forget_stale(self, stream: int, position: int) -> None:
        """Drop chunks of other files, and of this one behind ``position``."""
        for chunk in list(self._pending):
            if chunk[0] != stream or (chunk[1] + 1) * CHUNK <= position:
                self._pending.pop(chunk).cancel()

    def _read_ahead(self, pieces: Extents) -> bytes:
        """On a worker: a chunk's bytes, through the image's bulk descriptor."""
        scratch: mmap.mmap | None = getattr(self._worker_buffers, "scratch", None)
        if scratch is None:
            scratch = self._worker_buffers.scratch = _scratch_buffer()
        read_bulk = self.reader.read_bulk
        return read_extents(lambda start, length: read_bulk(start, length, scratch), pieces)


def _scratch_buffer() -> mmap.mmap:
    """A page-aligned buffer for O_DIRECT reads of up to a chunk at any offset (never
    touched, so it costs no memory, where the bulk descriptor is buffered)."""
    return mmap.mmap(-1, CHUNK + 2 * DIRECT_ALIGN)


def read_extents(read: Callable[[int, int], bytes], pieces: Extents) -> bytes:
    """The bytes of ``pieces`` read with ``read`` (zeros at :data:`ZEROS`), joined (not
    copied when one)."""
    parts = [bytes(length) if start == ZEROS else read(start, length) for start, length in pieces]
    return parts[0] if len(parts) == 1 else b"".join(parts)
