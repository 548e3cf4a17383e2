"""Directory read-ahead: prepare the listings a walk will ask for next while the daemon is idle.

A tree walk (find, ls -R, du, rsync) lists a directory, then opens its subdirectories
in order. Between two of its requests the daemon waits while the kernel and the walker
digest the last reply; this module spends that idle time preparing the readdirplus
replies of the subdirectories just listed (names, attributes, offsets), so that their
listing costs the daemon no more than copying the prepared entries into the reply.

It runs as one trio task in the serving thread: no locks, no threads. It yields to the
scheduler every few entries, so a request that arrives waits at most one small step. What
it holds is bounded (:data:`MAX_AHEAD` entries); a directory larger than that is left to
the request that lists it.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import NamedTuple

import pyfuse3
import trio

from drivers.base import DriverError
from fusefs.watchdog import RequestTimeout, RequestWatchdog

log = logging.getLogger("pyfsmount")

#: Entries prepared between two checkpoints (a request waits for at most one step).
STEP = 8
#: Prepared entries held at most, over all directories.
MAX_AHEAD = 1024
#: Directories remembered as candidates (the oldest are forgotten first).
MAX_CANDIDATES = 4096
#: Directories remembered as listed or prepared within one walk; past that many the
#: memory is emptied (a walk of millions of directories must not grow the daemon),
#: which costs at most a directory prepared twice.
MAX_TRIED = 65536


class ListedEntry(NamedTuple):
    """One readdirplus entry, ready to be copied into a reply."""

    name: bytes
    attributes: pyfuse3.EntryAttributes
    offset: int  # the FUSE offset a listing resumes from after this entry
    subdirectory: int  # the entry's driver inode if it is a directory, else 0


#: Lists a directory (driver inode) from a FUSE offset: ``VolumeOperations.listing``.
Lister = Callable[[int, int], Iterator[ListedEntry]]


def _offset_of(entry: ListedEntry) -> int:
    return entry.offset


class DirectoryPrefetcher:
    """Prepares the listings of directories likely to be listed next."""

    def __init__(self, lister: Lister, watchdog: RequestWatchdog | None = None) -> None:
        self.lister = lister
        self.watchdog = watchdog or RequestWatchdog(0)
        self.candidates: deque[int] = deque(maxlen=MAX_CANDIDATES)
        self.prepared: dict[int, list[ListedEntry]] = {}
        self.tried: set[int] = set()  # prepared, too large, or failed: not tried again
        self.preparing = 0  # the directory being prepared (0: none)
        self._entries: list[ListedEntry] = []  # its entries prepared so far
        self._listing: Iterator[ListedEntry] | None = None  # and the rest of them
        self.wakeup = trio.Event()

    @property
    def entries_ahead(self) -> int:
        return sum(map(len, self.prepared.values()))

    def take(self, dir_ino: int, start_id: int) -> Iterable[ListedEntry] | None:
        """The prepared entries of ``dir_ino`` after FUSE offset ``start_id``, if any.

        A listing asked for while it is being prepared is handed over: the entries
        prepared so far, then the rest from the same listing, which read-ahead leaves.
        """
        if dir_ino == self.preparing and start_id == 0 and self._listing is not None:
            self.preparing = 0
            return chain(self._entries, self._listing)
        entries = self.prepared.get(dir_ino)
        if entries is None or start_id == 0:
            return entries
        return entries[bisect_right(entries, start_id, key=_offset_of) :]

    def listed(self, dir_ino: int, subdirectories: list[int], first: bool, complete: bool) -> None:
        """A reply listed ``dir_ino`` (to its end if ``complete``); its subdirectories come next.

        A listing that starts where nothing was predicted means the walk went elsewhere:
        earlier preparations will not be asked for, and are dropped.
        """
        if self.preparing == dir_ino:
            self.preparing = 0  # the walk caught up: nothing left to win
        if first and dir_ino not in self.tried:
            self.prepared.clear()
            self.tried.clear()
        self._tried(dir_ino)  # listed now: preparing it later would be wasted
        if complete:
            self.prepared.pop(dir_ino, None)
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
                if dir_ino not in self.tried:
                    self._tried(dir_ino)
                    await self.prepare(dir_ino)

    def _tried(self, dir_ino: int) -> None:
        if len(self.tried) >= MAX_TRIED:
            self.tried.clear()
        self.tried.add(dir_ino)

    async def prepare(self, dir_ino: int) -> None:
        """Prepare one listing; errors are left for the real request to meet and report.

        Each step runs under the request watchdog, as a request would: a directory that
        costs too much is given up, and its real listing meets the same budget.
        """
        self.preparing = dir_ino
        budget = MAX_AHEAD - self.entries_ahead
        watchdog = self.watchdog
        self._entries = entries = []
        self._listing = None
        try:
            self._listing = listing = self.lister(dir_ino, 0)
            while self.preparing == dir_ino:
                watchdog.begin("read-ahead")
                try:
                    step = list(islice(listing, STEP))
                finally:
                    watchdog.end()
                entries += step
                if len(entries) > budget:
                    return
                if len(step) < STEP:
                    self.prepared[dir_ino] = entries
                    return
                await trio.sleep(0)
        except (DriverError, OSError, RequestTimeout):
            pass
        except Exception:  # a driver bug: the real request will log it with its traceback
            log.debug("read-ahead of directory %d failed", dir_ino, exc_info=True)
        finally:
            if self.preparing == dir_ino:
                self.preparing = 0
            self._entries, self._listing = [], None
