"""Directory read-ahead: decode what a walk will ask for next while the daemon is idle.

A tree walk (find, ls -R, du, rsync) lists a directory, then opens its subdirectories
in order. Between two of its requests the daemon waits while the kernel and the walker
digest the last reply; this module spends that idle time decoding the entries of the
subdirectories just listed, so that their listing is answered from the driver's caches.

It runs as one trio task in the serving thread: no locks, no threads. It yields to the
scheduler every few entries, so a request that arrives waits at most one small step. It
only warms the driver's own bounded caches, and stops short of outrunning them.
"""

from __future__ import annotations

import logging
from collections import deque
from itertools import islice

import trio

from drivers.base import DriverError, Volume
from fusefs.watchdog import RequestTimeout, RequestWatchdog

log = logging.getLogger("pyfsmount")

#: Entries decoded between two checkpoints (a request waits for at most one step).
STEP = 8
#: How many decoded-but-not-yet-listed entries may be ahead of the walk: kept well
#: inside a driver's attribute cache so that read-ahead never evicts its own work.
MAX_AHEAD = 1024
#: Directories remembered as candidates (the oldest are forgotten first).
MAX_CANDIDATES = 4096


class DirectoryPrefetcher:
    """Decodes the entries of directories likely to be listed next."""

    def __init__(self, volume: Volume, watchdog: RequestWatchdog | None = None) -> None:
        self.volume = volume
        self.watchdog = watchdog or RequestWatchdog(0)
        self.candidates: deque[int] = deque(maxlen=MAX_CANDIDATES)
        self.ahead: dict[int, int] = {}  # prefetched directory -> entries decoded
        self.wakeup = trio.Event()

    @property
    def entries_ahead(self) -> int:
        return sum(self.ahead.values())

    def listed(self, dir_ino: int, subdirectories: list[int], first: bool) -> None:
        """The kernel listed (part of) ``dir_ino``; its ``subdirectories`` come next.

        ``first``: this is the start of the listing. A listing that was not predicted
        means the walk went elsewhere, and earlier guesses no longer hold anything back.
        """
        if first and self.ahead.pop(dir_ino, None) is None:
            self.ahead.clear()
        if subdirectories:
            # Depth first, as walkers go: these before the older candidates.
            self.candidates.extendleft(reversed(subdirectories))
            self.wakeup.set()

    async def run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup = trio.Event()
            while self.candidates and self.entries_ahead < MAX_AHEAD:
                dir_ino = self.candidates.popleft()
                if dir_ino not in self.ahead:
                    await self.decode(dir_ino)

    async def decode(self, dir_ino: int) -> None:
        """Decode every entry's attributes; errors are left for the real request.

        Each step runs under the request watchdog, as a request would: a directory that
        costs too much is given up, and its real listing meets the same budget.
        """
        count = 0
        self.ahead[dir_ino] = 0
        watchdog = self.watchdog
        try:
            entries = iter(self.volume.readdir(dir_ino, 0))
            while True:
                watchdog.begin("read-ahead")
                try:
                    step = list(islice(entries, STEP))
                    for entry in step:
                        self.volume.getattr(entry.ino)
                finally:
                    watchdog.end()
                count += len(step)
                if len(step) < STEP or count >= MAX_AHEAD:
                    break
                self.ahead[dir_ino] = count
                await trio.sleep(0)
                if dir_ino not in self.ahead:  # listed meanwhile: nothing left to win
                    return
        except (DriverError, OSError, RequestTimeout):
            pass
        except Exception:  # a driver bug: the real request will log it with its traceback
            log.debug("read-ahead of directory %d failed", dir_ino, exc_info=True)
        if dir_ino in self.ahead:
            self.ahead[dir_ino] = count
