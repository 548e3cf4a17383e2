"""Give freed memory back to the system: during a burst of requests, and after it.

A driver's caches are bounded in bytes, but glibc keeps what is freed around them: the
buffers of 128 KiB and more (decompressed blocks, read-ahead chunks, replies) come from
the heap once the first one is freed, and the cached ones pin the space of the freed ones
between them. A squashfs gzip driver reading every small file grew its heap by 10 MiB,
9 MiB of it free (mallinfo2), and peaked at 43-45 MiB of RSS. Mapping every large buffer
on its own instead (a fixed M_MMAP_THRESHOLD) returned that memory but cost sequential
reads 25-41% in page faults and unmappings; decoding gzip with zlib rather than ISA-L
did too, at 1.6x the decoding time.

So the serving loop calls ``malloc_trim(0)``, which returns every free page of the heap
and of the threads' arenas (MADV_DONTNEED inside them, not only at their top):

- every :data:`BUSY_INTERVAL_S` while requests keep coming, if the heap holds at least
  :data:`BUSY_MIN_FREE` free bytes (mallinfo2), which bounds the peak: the same gzip
  walk peaked at 37 MiB, for two trims of 0.5 ms each. Below that, a trim would return
  little and cost page faults when the space is used again: ext4 and FAT drivers keep
  under 1 MiB free;
- once a burst is over, :data:`IDLE_S` after its last request, so that a mount at rest
  holds only what its caches hold.

The pages are faulted in again only if later requests need them.

Between trims, glibc itself must not hand memory back (:func:`keep_freed_buffers`):
with its defaults, the 1 MiB read-ahead buffers, allocated by the workers and freed
by the serving thread, went back to the kernel as they were freed and were faulted in
and zeroed again for the next chunk. A cold 512 MiB read of FAT32 took 55,000-69,000
page faults (16% of the daemon's samples in `perf`); with the thresholds raised,
2,600-2,900, and 0.21-0.26 s of system CPU instead of 0.31-0.37.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from fusefs.libc import LIBC

__all__ = [
    "BUSY_INTERVAL_S",
    "BUSY_MIN_FREE",
    "IDLE_S",
    "HeapTrimmer",
    "heap_free_bytes",
    "keep_freed_buffers",
    "trim",
]

#: Seconds without a request after which a burst is over.
IDLE_S = 1.0
#: Seconds between trims while a burst lasts (each costs a walk of the heap: about
#: 0.5 ms for a 15 MiB one, so 0.2% of a driver kept busy).
BUSY_INTERVAL_S = 0.25
#: Free heap bytes from which a trim within a burst is worth it.
BUSY_MIN_FREE = 2 << 20


#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks from this size up get a mapping of their own: above the read-ahead chunks
#: (drivers/readahead.py) and decompressed blocks (1 MiB at most), so those come from
#: the heap and are reused there.
MMAP_THRESHOLD = 4 << 20
#: Free bytes at the top of a heap that glibc keeps rather than returns at once: the
#: trims above return them once they are not reused.
TRIM_THRESHOLD = 64 << 20


def keep_freed_buffers() -> None:
    """Let freed buffers be reused from the heap instead of returned and faulted in again.

    Setting either threshold also ends glibc's own adjustment of them (which raised the
    mmap threshold after the first large free but left the trim threshold at twice that,
    so each arena shrank as the serving thread freed what a worker had read).
    """
    LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def trim() -> None:
    """Return the heap's free pages to the system."""
    LIBC.malloc_trim(0)


def heap_free_bytes() -> int:
    """Bytes free inside the heap and the threads' arenas (about 1 us to ask)."""
    return int(LIBC.mallinfo2().fordblks)


def enough_to_trim() -> bool:
    return heap_free_bytes() >= BUSY_MIN_FREE


class HeapTrimmer:
    """Trims during and after each burst of requests; :meth:`touch` after every request."""

    def __init__(
        self,
        idle: float = IDLE_S,
        busy_interval: float = BUSY_INTERVAL_S,
        worth_trimming: Callable[[], bool] = enough_to_trim,
    ) -> None:
        self.idle = idle
        self.busy_interval = busy_interval
        self.worth_trimming = worth_trimming
        self.last_request = 0.0
        self.busy = False
        self.wakeup = trio.Event()
        self.trims = 0

    def touch(self) -> None:
        """A request was served (cheap: it runs after every request, in the trio loop)."""
        self.last_request = trio.current_time()
        if not self.busy:
            self.busy = True
            self.wakeup.set()

    async def run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup = trio.Event()
            await self._trim_while_busy()
            self.busy = False
            self._trim()

    async def _trim_while_busy(self) -> None:
        """Return once :attr:`idle` seconds pass without a request; until then, trim
        every :attr:`busy_interval` if requests came since the last trim and
        :attr:`worth_trimming` says so."""
        last_trim = trio.current_time()
        # Deadlines compared as they are slept until: no rounding can spin this loop.
        while trio.current_time() < (burst_over := self.last_request + self.idle):
            if trio.current_time() >= last_trim + self.busy_interval:
                if self.last_request > last_trim and self.worth_trimming():
                    self._trim()
                last_trim = trio.current_time()
            await trio.sleep_until(min(burst_over, last_trim + self.busy_interval))

    def _trim(self) -> None:
        trim()
        self.trims += 1
