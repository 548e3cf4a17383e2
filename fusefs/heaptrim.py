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

- every :data:`BUSY_INTERVAL_S` while requests keep coming, which bounds the peak: the
  same gzip walk peaked at 37 MiB, for two trims of 0.5 ms each;
- once a burst is over, :data:`IDLE_S` after its last request, so that a mount at rest
  holds only what its caches hold.

The pages are faulted in again only if later requests need them.
"""

from __future__ import annotations

import ctypes

import trio

__all__ = ["BUSY_INTERVAL_S", "IDLE_S", "HeapTrimmer", "trim"]

#: Seconds without a request after which a burst is over.
IDLE_S = 1.0
#: Seconds between trims while a burst lasts (each costs a walk of the heap: about
#: 0.5 ms for a 15 MiB one, so 0.2% of a driver kept busy).
BUSY_INTERVAL_S = 0.25

# Bound now, while the library can still be looked up: after confinement there is no
# file system to find it in.
_malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
_malloc_trim.argtypes = (ctypes.c_size_t,)


def trim() -> None:
    """Return the heap's free pages to the system."""
    _malloc_trim(0)


class HeapTrimmer:
    """Trims during and after each burst of requests; :meth:`touch` after every request."""

    def __init__(self, idle: float = IDLE_S, busy_interval: float = BUSY_INTERVAL_S) -> None:
        self.idle = idle
        self.busy_interval = busy_interval
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
        every :attr:`busy_interval` if requests came since the last trim."""
        last_trim = trio.current_time()
        # Deadlines compared as they are slept until: no rounding can spin this loop.
        while trio.current_time() < (burst_over := self.last_request + self.idle):
            next_trim = last_trim + self.busy_interval
            if trio.current_time() >= next_trim:
                if self.last_request > last_trim:
                    self._trim()
                last_trim = trio.current_time()
                next_trim = last_trim + self.busy_interval
            await trio.sleep_until(min(burst_over, next_trim))

    def _trim(self) -> None:
        trim()
        self.trims += 1
