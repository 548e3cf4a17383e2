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

With busy polling on (fusefs/busypoll.py), the wait first spins on that probe for up to
:data:`MAX_SPIN` of the window: a request that comes within it is taken with no
scheduler pass at all (a synchronous caller's next request, typically). The busy poller
then spins through trio for the rest of the window, where the other tasks get their
turns. Measured on 10,000 reads that the page cache answers: 15,000-17,000/s without the
spin, 24,000-27,500/s with 100 us of it; a cold walk was no slower.
"""

from __future__ import annotations

import select
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

#: One request in this many goes through trio's own wait, queued or not.
FAIRNESS = 16
#: The longest the wait spins on its probe before it waits through trio (seconds).
MAX_SPIN = 100e-6


class ReaderLock:
    """What pyfuse3's read lock needs to be for a single reader: nothing."""

    async def __aenter__(self) -> ReaderLock:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class QueuedFirstWait:
    """``wait_readable`` that returns without a scheduler pass when the fd is readable."""

    def __init__(self, spin: float = 0.0) -> None:
        self.spin = spin
        self.poller: select.epoll | None = None
        self.fd = -1
        self.since_trio = 0

    async def __call__(self, fd: int) -> None:
        self.since_trio += 1
        if self.since_trio < FAIRNESS and self.comes_soon(fd):
            return
        self.since_trio = 0
        await trio.lowlevel.wait_readable(fd)

    def comes_soon(self, fd: int) -> bool:
        """Whether a request is queued, or comes within the spin."""
        if self.queued(fd):
            return True
        if self.spin <= 0:
            return False
        deadline = time.monotonic() + self.spin
        while time.monotonic() < deadline:
            if self.queued(fd):
                return True
        return False

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

    def __init__(self, spin: float) -> None:
        self.lowlevel = _LowlevelView(QueuedFirstWait(spin))

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install(busy_poll_window: float = 0.0) -> None:
    """Let pyfuse3's session loop skip the scheduler when a request is already queued
    (or, with busy polling, comes within :data:`MAX_SPIN` of the window, in seconds).

    Only for ``pyfuse3.main(max_tasks=1)``: with more reader tasks the lock matters.
    Does nothing if this pyfuse3 does not reach trio through its module global.
    """
    if getattr(pyfuse3, "trio", None) is trio:
        spin = min(busy_poll_window, MAX_SPIN)
        pyfuse3.trio = _TrioView(spin)  # type: ignore[attr-defined]
