"""Image reads ahead of sequential readers, on a worker thread, around the page cache.

A sequential reader of a big file asks for one window after another (the kernel's FUSE
read-ahead sends 1 MiB requests, in order).  Served inline, each request waits for its
image read, then the daemon waits for the kernel to take the reply: the disk and the
FUSE channel take turns, and the kernel's own read-ahead on the image falls behind a
reader that keeps pausing.  And every byte would be cached twice, as the image's page
and as the mount's.

So once a file is read sequentially, the next windows are read on a worker thread while
the current one is answered, with ``O_DIRECT`` when the image allows it
(:meth:`BlockReader.read_direct`): straight from the disk into one reused buffer, with
no page cache to fill and no read-ahead to fall behind.  Measured on the 512 MiB FAT32
benchmark file, cold, interleaved with mtools: 786 MB/s median (713-870) against
357 MB/s (253-1,098) for cached inline reads, 1.44x mtools run by run.

The driver keeps deciding everything on its own thread: it turns each window into the
image extents that hold it (with its own caches, chains and checks) before the window
is handed over; the worker only reads those extents.  A window whose extents cannot be
worked out (a damaged chain) is not read ahead: its request fails as it would anyway.
Random and first reads stay inline, through the page cache.

Bounded: at most :data:`WINDOWS_AHEAD` windows of at most :data:`MAX_WINDOW` bytes wait
per volume, one scratch buffer, and at most :data:`MAX_STREAMS` files are followed.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from drivers.base import DIRECT_ALIGN, BlockReader, DriverError

__all__ = ["MAX_STREAMS", "MAX_WINDOW", "WINDOWS_AHEAD", "Extents", "ReadAhead"]

#: (offset in the image, length) pieces that hold a window of a file, in file order.
Extents = Sequence[tuple[int, int]]

#: Windows read ahead of a sequential reader (each as big as its last request).
WINDOWS_AHEAD = 4
#: Requests bigger than this are not read ahead.
MAX_WINDOW = 4 << 20
#: Files whose next expected offset is remembered.
MAX_STREAMS = 256

Window = tuple[int, int, int]  # (stream, offset, end)


class ReadAhead:
    """Serves windows of files, reading the image ahead of sequential readers."""

    __slots__ = ("_next", "_pending", "_pool", "_scratch", "reader")

    def __init__(self, reader: BlockReader) -> None:
        self.reader = reader
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[Window, Future[bytes]] = {}
        self._next: dict[int, int] = {}  # stream -> offset a sequential reader asks next
        # The worker's buffer for O_DIRECT reads: one worker, so one buffer. Allocated
        # (page-aligned) by the first window read ahead.
        self._scratch: mmap.mmap | None = None

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
        future = self._pending.pop((stream, offset, end), None)
        if self._follow(stream, offset, end) and end - offset <= MAX_WINDOW:
            self._start(stream, end, end - offset, limit, extents)
        if future is not None:
            return future.result()
        pieces = extents(offset, end)
        parts = [self.reader.read(start, length) for start, length in pieces]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _follow(self, stream: int, offset: int, end: int) -> bool:
        """Remember where ``stream`` goes next; whether this read continues the last."""
        expected = self._next.pop(stream, None)
        if len(self._next) >= MAX_STREAMS:
            self._next.clear()
        self._next[stream] = end
        return expected == offset

    def _start(
        self,
        stream: int,
        offset: int,
        size: int,
        limit: int,
        extents: Callable[[int, int], Extents],
    ) -> None:
        """Have the worker read the windows after ``offset`` not already under way."""
        for _ in range(WINDOWS_AHEAD):
            end = min(offset + size, limit)
            if offset >= end:
                return
            window = (stream, offset, end)
            if window not in self._pending:
                if len(self._pending) >= WINDOWS_AHEAD:
                    self._forget_stale(stream)
                    if len(self._pending) >= WINDOWS_AHEAD:
                        return
                try:
                    pieces = extents(offset, end)
                except DriverError:
                    return  # the request for this window will say what is wrong
                if self._pool is None:
                    self._scratch = mmap.mmap(-1, MAX_WINDOW + 2 * DIRECT_ALIGN)
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="readahead")
                try:
                    self._pending[window] = self._pool.submit(self._read_ahead, pieces)
                except RuntimeError:  # no thread could be started (rlimit): stay inline
                    return
            offset = end

    def _forget_stale(self, stream: int) -> None:
        """Drop windows of other files, and of this one behind its reader."""
        position = self._next.get(stream, 0)
        for window in list(self._pending):
            if window[0] != stream or window[1] < position:
                self._pending.pop(window).cancel()

    def _read_ahead(self, pieces: Extents) -> bytes:
        """On the worker: the window's bytes, read around the page cache."""
        scratch = self._scratch
        assert scratch is not None
        parts = [self.reader.read_direct(start, length, scratch) for start, length in pieces]
        return parts[0] if len(parts) == 1 else b"".join(parts)
