"""Give freed memory back to the system once a burst of requests is over.

A driver's caches are bounded in bytes, but glibc keeps what is freed around them: the
buffers of 128 KiB and more (decompressed blocks, read-ahead chunks, replies) come from
the heap once the first one is freed, and the cached ones pin the space of the freed ones
between them. A squashfs gzip driver forked from the template held 20.8 MiB alone after
reading every small file, 8.9 MiB of it heap (benchmarks/private_memory.py). Mapping
every large buffer on its own instead (a fixed M_MMAP_THRESHOLD) returned that memory
but cost sequential reads 25-41% in page faults and unmappings.

So the serving loop calls ``malloc_trim(0)`` once a burst is over: :data:`IDLE_S` after
the last request of a burst of them. It returns every free page of the heap and of the
threads' arenas (MADV_DONTNEED inside them, not only at their top), and costs a walk of
the heap, once per idle period; the pages are faulted in again only if the next burst
needs them.
"""

from __future__ import annotations

import ctypes

import trio

__all__ = ["IDLE_S", "IdleTrimmer", "trim"]

#: Seconds without a request after which a burst is over.
IDLE_S = 1.0

# Bound now, while the library can still be looked up: after confinement there is no
# file system to find it in.
_malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
_malloc_trim.argtypes = (ctypes.c_size_t,)


def trim() -> None:
    """Return the heap's free pages to the system."""
    _malloc_trim(0)


class IdleTrimmer:
    """Trims once after each burst of requests; :meth:`touch` after every request."""

    def __init__(self, idle: float = IDLE_S) -> None:
        self.idle = idle
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
            while (quiet := trio.current_time() - self.last_request) < self.idle:
                await trio.sleep(self.idle - quiet)
            self.busy = False
            trim()
            self.trims += 1
