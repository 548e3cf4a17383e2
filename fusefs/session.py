"""A cheaper wait for the next FUSE request than pyfuse3's own, for its one reader task.

pyfuse3's session loop does this before every request::

    async with read_lock:                       # a trio.Lock
        await trio.lowlevel.wait_readable(fd)   # the /dev/fuse channel

Both yield to trio's scheduler even when they need not: acquiring a free trio.Lock ends
in a checkpoint, and wait_readable always parks the task until trio's epoll reports the
fd, even when a request is already queued. That is two passes of the scheduler, with
their epoll_ctl and epoll_wait calls, per request: measured here as a large part of the
~60 us of Python a request costs the daemon.

The daemon runs exactly one reader task (``pyfuse3.main(min_tasks=1, max_tasks=1)``), so
the lock guards nothing; and a zero-timeout epoll_wait on an epoll of our own says whether
a request is queued (epoll, not poll(2): it is what the seccomp allowlist has).
:func:`install` gives pyfuse3 a view of trio in which the lock is a no-op and
``wait_readable`` returns at once when a request is queued, and waits through trio (as
before, letting every other task run) when none is. Every :data:`FAIRNESS`-th request
waits through trio regardless, so that a steady stream of requests cannot starve the
other tasks (signals, the directory prefetcher, busy polling).
"""

from __future__ import annotations

import select
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

#: One request in this many goes through trio's own wait, queued or not.
FAIRNESS = 16


class ReaderLock:
    """What pyfuse3's read lock needs to be for a single reader: nothing."""

    async def __aenter__(self) -> ReaderLock:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class QueuedFirstWait:
    """``wait_readable`` that returns without a scheduler pass when the fd is readable."""

    def __init__(self) -> None:
        self.poller: select.epoll | None = None
        self.fd = -1
        self.since_trio = 0

    async def __call__(self, fd: int) -> None:
        self.since_trio += 1
        if self.since_trio < FAIRNESS and self.queued(fd):
            return
        self.since_trio = 0
        await trio.lowlevel.wait_readable(fd)

    def queued(self, fd: int) -> bool:
        if fd != self.fd or self.poller is None:
            if self.poller is not None:
                self.poller.close()
            self.poller = select.epoll()
            self.poller.register(fd, select.EPOLLIN)
            self.fd = fd
        return bool(self.poller.poll(0))


class _LowlevelView:
    def __init__(self, wait_readable: Callable[[int], Awaitable[None]]) -> None:
        self.wait_readable = wait_readable

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)


class _TrioView:
    """trio as pyfuse3 sees it after :func:`install`."""

    Lock = ReaderLock

    def __init__(self) -> None:
        self.lowlevel = _LowlevelView(QueuedFirstWait())

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install() -> None:
    """Let pyfuse3's session loop skip the scheduler when a request is already queued.

    Only for ``pyfuse3.main(max_tasks=1)``: with more reader tasks the lock matters.
    Does nothing if this pyfuse3 does not reach trio through its module global.
    """
    if getattr(pyfuse3, "trio", None) is trio:
        pyfuse3.trio = _TrioView()  # type: ignore[attr-defined]
