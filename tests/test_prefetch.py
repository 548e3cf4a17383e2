"""Directory read-ahead: decodes the next directories of a walk, within its budget."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import trio

import drivers
from drivers.base import Attr, DirEntry, Volume
from fusefs import prefetch
from fusefs.prefetch import DirectoryPrefetcher
from tests.launcher import SAMPLE_IMAGE
from tests.test_ext4_unit_helpers import path_ino


class Counting:
    """The sample image's real volume, counting the attribute decodes asked of it."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.decoded: list[int] = []

    def readdir(self, dir_ino: int, offset: int = 0) -> Iterator[DirEntry]:
        return self.volume.readdir(dir_ino, offset)

    def getattr(self, ino: int) -> Attr:
        self.decoded.append(ino)
        return self.volume.getattr(ino)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.volume, name)


async def settle(prefetcher: DirectoryPrefetcher) -> None:
    """Let the read-ahead task run until it has nothing left to do."""
    for _ in range(200):
        await trio.sleep(0)


async def test_listed_subdirectories_are_decoded_in_the_background() -> None:
    volume = Counting(drivers.open_image(SAMPLE_IMAGE))
    docs = path_ino(volume.volume, "docs")
    notes = path_ino(volume.volume, "docs/notes")
    prefetcher = DirectoryPrefetcher(volume)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prefetcher.run)
        prefetcher.listed(volume.root_ino, [docs], first=True)
        await settle(prefetcher)
        expected = [entry.ino for entry in volume.volume.readdir(docs)]
        assert volume.decoded == expected
        assert prefetcher.entries_ahead == len(expected)
        # The walk lists docs: that prediction is consumed, its subdirectory is next.
        prefetcher.listed(docs, [notes], first=True)
        await settle(prefetcher)
        assert set(prefetcher.ahead) == {notes}
        nursery.cancel_scope.cancel()


async def test_read_ahead_stops_at_its_budget_and_an_unpredicted_listing_frees_it(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(prefetch, "MAX_AHEAD", 3)
    volume = Counting(drivers.open_image(SAMPLE_IMAGE))
    subdirs = [path_ino(volume.volume, p) for p in ("docs", "docs/notes", "bin", "empty")]
    prefetcher = DirectoryPrefetcher(volume)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prefetcher.run)
        prefetcher.listed(volume.root_ino, subdirs, first=True)
        await settle(prefetcher)
        assert prefetcher.entries_ahead >= 3
        assert len(prefetcher.candidates) > 0  # the rest waits for the walk to catch up
        before = len(volume.decoded)
        prefetcher.listed(path_ino(volume.volume, "lost+found"), [], first=True)
        prefetcher.listed(volume.root_ino, subdirs[2:], first=False)
        await settle(prefetcher)
        assert len(volume.decoded) > before  # budget freed: read-ahead resumed
        nursery.cancel_scope.cancel()
