"""pyfuse3's wait for the next request, made cheaper (fusefs/session.py).

Whether a wait yields to trio's scheduler is seen from a cancelled scope: a wait that
passes through the scheduler is cancelled there, one that does not returns.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pyfuse3
import pytest
import trio

from fusefs import session


@pytest.fixture
def channel() -> Iterator[tuple[int, int]]:
    """A pipe standing in for /dev/fuse: (read end, write end)."""
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


async def yields_to_scheduler(wait: session.QueuedFirstWait, fd: int) -> bool:
    with trio.CancelScope() as scope:
        scope.cancel()
        await wait(fd)
    return scope.cancelled_caught


async def test_a_queued_request_is_taken_without_a_scheduler_pass(
    channel: tuple[int, int],
) -> None:
    read_end, write_end = channel
    os.write(write_end, b"request")
    assert not await yields_to_scheduler(session.QueuedFirstWait(), read_end)


async def test_with_nothing_queued_the_wait_goes_through_trio(channel: tuple[int, int]) -> None:
    read_end, _ = channel
    assert await yields_to_scheduler(session.QueuedFirstWait(), read_end)


async def test_a_stream_of_requests_still_lets_other_tasks_run(channel: tuple[int, int]) -> None:
    read_end, write_end = channel
    os.write(write_end, b"always something queued")
    wait = session.QueuedFirstWait()
    passes = [await yields_to_scheduler(wait, read_end) for _ in range(3 * session.FAIRNESS)]
    assert passes.count(True) == 3
    assert passes[session.FAIRNESS - 1]


async def test_a_request_that_comes_within_the_spin_is_taken_without_a_pass(
    channel: tuple[int, int],
) -> None:
    read_end, write_end = channel
    writer = threading.Timer(0.01, os.write, (write_end, b"request"))
    writer.start()
    try:
        assert not await yields_to_scheduler(session.QueuedFirstWait(spin=5.0), read_end)
    finally:
        writer.join()


async def test_the_read_lock_never_yields() -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        async with session.ReaderLock():
            pass
    assert not scope.cancelled_caught


def test_install_gives_pyfuse3_the_view_and_keeps_the_rest_of_trio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pyfuse3, "trio", trio)
    session.install(busy_poll_window=1.0)
    view = pyfuse3.trio  # type: ignore[attr-defined]
    assert view is not trio
    assert view.Lock is session.ReaderLock
    assert isinstance(view.lowlevel.wait_readable, session.QueuedFirstWait)
    assert view.lowlevel.wait_readable.spin == session.MAX_SPIN
    assert view.open_nursery is trio.open_nursery
    assert view.lowlevel.current_task is trio.lowlevel.current_task
    session.install()  # a second install leaves the first view
    assert pyfuse3.trio is view  # type: ignore[attr-defined]
