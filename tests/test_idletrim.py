"""fusefs.idletrim: freed memory goes back to the system once per burst of requests."""

from __future__ import annotations

import subprocess
import sys

import trio
import trio.testing

from fusefs.idletrim import IdleTrimmer
from tests.launcher import PROJECT


async def test_one_trim_after_each_burst_and_none_while_it_lasts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trimmer = IdleTrimmer(idle=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trimmer.run)
        await trio.sleep(5)
        assert trimmer.trims == 0  # nothing served, nothing to give back
        for _ in range(20):  # a burst: a request every 0.1 s for 2 s
            trimmer.touch()
            await trio.sleep(0.1)
        assert trimmer.trims == 0
        await trio.sleep(1.5)
        assert trimmer.trims == 1
        trimmer.touch()  # the next burst, of one request
        await trio.sleep(3)
        assert trimmer.trims == 2
        nursery.cancel_scope.cancel()


def test_trimming_returns_free_heap_pages() -> None:
    """malloc_trim gives back the pages of freed memory inside the heap, not only at its
    top. In a process of its own: the test runner's heap is in no known state."""
    script = """
from fusefs.idletrim import trim

def private_kib():
    with open("/proc/self/smaps_rollup") as rollup:
        fields = dict(line.split(":", 1) for line in rollup if ":" in line)
    return sum(int(fields[name].split()[0]) for name in ("Private_Clean", "Private_Dirty"))

freed, kept = [], []
for _ in range(200):  # interleaved, so that what is kept pins the heap's top
    freed.append(bytes(range(256)) * 400)  # 100 KiB, written: below the mmap threshold
    kept.append(bytes(range(256)) * 4)
before = private_kib()
freed.clear()
after_free = private_kib()
trim()
print(before, after_free, private_kib())
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=PROJECT
    )
    before, after_free, after_trim = map(int, result.stdout.split())
    assert after_free > before - 2_000  # freeing alone gives back next to nothing
    assert after_trim < before - 15_000  # trimming gives back most of the 20 MB
