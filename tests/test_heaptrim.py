"""fusefs.heaptrim: freed memory goes back to the system while requests come, and after."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator

import trio
import trio.testing

from fusefs.heaptrim import HeapTrimmer
from tests.launcher import PROJECT


@contextlib.asynccontextmanager
async def running_trimmer(heap_worth_trimming: bool = True) -> AsyncIterator[HeapTrimmer]:
    """A trimmer that ends a burst after 1 s of quiet and trims every 0.25 s in one
    (if the heap is worth trimming then)."""
    trimmer = HeapTrimmer(idle=1.0, busy_interval=0.25, worth_trimming=lambda: heap_worth_trimming)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trimmer.run)
        yield trimmer
        nursery.cancel_scope.cancel()


async def serve(trimmer: HeapTrimmer, requests: int, every: float) -> None:
    for _ in range(requests):
        trimmer.touch()
        await trio.sleep(every)


async def test_a_burst_is_trimmed_at_intervals_while_it_lasts_and_once_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_trimmer() as trimmer:
        await trio.sleep(5)
        assert trimmer.trims == 0  # nothing served, nothing to give back
        await serve(trimmer, requests=20, every=0.1)  # from 5.0 s to 6.9 s
        await trio.sleep(0.5)
        assert trimmer.trims == 8  # every 0.25 s, from 5.25 s to 7.0 s: not per request
        await trio.sleep(1.0)
        assert trimmer.trims == 9  # and once the burst is over, 1 s after its last request
        await trio.sleep(5)
        assert trimmer.trims == 9  # at rest, nothing more


async def test_a_lone_request_is_trimmed_once_after_the_idle_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_trimmer() as trimmer:
        trimmer.touch()
        await trio.sleep(0.99)
        assert trimmer.trims == 0  # no request since it: nothing new to give back
        await trio.sleep(0.02)
        assert trimmer.trims == 1
        await serve(trimmer, requests=1, every=3)  # the next burst, of one request
        assert trimmer.trims == 2


async def test_a_heap_with_little_free_is_trimmed_only_after_the_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_trimmer(heap_worth_trimming=False) as trimmer:
        await serve(trimmer, requests=20, every=0.1)
        await trio.sleep(0.5)
        assert trimmer.trims == 0  # nothing worth the page faults of using it again
        await trio.sleep(1.0)
        assert trimmer.trims == 1  # but the burst is over: whatever is free goes back


def test_trimming_returns_free_heap_pages() -> None:
    """malloc_trim gives back the pages of freed memory inside the heap, not only at its
    top. In a process of its own: the test runner's heap is in no known state."""
    script = """
from fusefs.heaptrim import heap_free_bytes, trim

def private_kib():
    with open("/proc/self/smaps_rollup") as rollup:
        fields = dict(line.split(":", 1) for line in rollup if ":" in line)
    return sum(int(fields[name].split()[0]) for name in ("Private_Clean", "Private_Dirty"))

freed, kept = [], []
for _ in range(200):  # interleaved, so that what is kept pins the heap's top
    freed.append(bytes(range(256)) * 400)  # 100 KiB, written: below the mmap threshold
    kept.append(bytes(range(256)) * 4)
before = private_kib()
free_before = heap_free_bytes()
freed.clear()
after_free = private_kib()
free_after = heap_free_bytes()
trim()
print(before, after_free, private_kib(), free_after - free_before)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=PROJECT
    )
    before, after_free, after_trim, freed_bytes = map(int, result.stdout.split())
    assert freed_bytes > 19_000_000  # heap_free_bytes sees what was freed
    assert after_free > before - 2_000  # freeing alone gives back next to nothing
    assert after_trim < before - 15_000  # trimming gives back most of the 20 MB


def test_read_ahead_buffers_are_reused_not_faulted_in_again() -> None:
    """1 MiB buffers read by a worker thread and freed by the serving thread, as the
    read-ahead's are, come back from the heap once keep_freed_buffers() is in force;
    with glibc's defaults each one was returned on free and faulted in again."""
    script = """
import resource, sys, threading
from concurrent.futures import ThreadPoolExecutor
from fusefs.heaptrim import keep_freed_buffers, trim

if sys.argv[1] == "keep":
    keep_freed_buffers()

def chunk(i):
    return bytes([i % 256]) * (1 << 20)  # written: every page touched

with ThreadPoolExecutor(2) as pool:
    for i in range(8):  # settle: thresholds and arenas
        pool.submit(chunk, i).result()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pending = [pool.submit(chunk, i) for i in range(4)]
    for i in range(4, 200):
        pending.pop(0).result()  # freed here, on the serving thread
        pending.append(pool.submit(chunk, i))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
trim()
print(faults)
"""

    def faults(mode: str) -> int:
        result = subprocess.run(
            [sys.executable, "-c", script, mode],
            capture_output=True,
            text=True,
            check=True,
            cwd=PROJECT,
        )
        return int(result.stdout)

    pages = 196 * (1 << 20) // 4096  # of the buffers made after settling
    assert faults("default") > pages // 4
    assert faults("keep") < pages // 10
