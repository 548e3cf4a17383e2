"""Directory read-ahead: prepares the next listings of a walk, within its budget."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio

import drivers
from drivers.base import Attr, Volume
from fusefs import prefetch
from fusefs.daemon import VolumeOperations
from fusefs.prefetch import DirectoryPrefetcher, ListedEntry
from tests.launcher import SAMPLE_IMAGE
from tests.test_ext4_unit_helpers import path_ino


class Counting:
    """The sample image's real volume, counting the attribute decodes asked of it."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.decoded: list[int] = []

    def getattr(self, ino: int) -> Attr:
        self.decoded.append(ino)
        return self.volume.getattr(ino)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.volume, name)


def summary(entries: Iterable[ListedEntry] | None) -> list[tuple[Any, ...]]:
    """What a reply shows of each entry: name, inode, mode, size, resume offset."""
    assert entries is not None
    return [
        (e.name, e.attributes.st_ino, e.attributes.st_mode, e.attributes.st_size, e.offset)
        for e in entries
    ]


async def settle() -> None:
    """Let the read-ahead task run until it has nothing left to do."""
    for _ in range(200):
        await trio.sleep(0)


def operations() -> tuple[VolumeOperations, Counting]:
    volume = Counting(drivers.open_image(SAMPLE_IMAGE))
    return VolumeOperations(volume), volume  # type: ignore[arg-type]


async def test_listed_subdirectories_are_prepared_as_their_listing_would_reply() -> None:
    ops, volume = operations()
    docs = path_ino(volume.volume, "docs")
    notes = path_ino(volume.volume, "docs/notes")
    prefetcher = DirectoryPrefetcher(ops.listing)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prefetcher.run)
        prefetcher.listed(volume.root_ino, [docs], first=True, complete=True)
        await settle()
        prepared = list(prefetcher.take(docs, 0) or ())
        assert summary(prepared) == summary(ops.listing(docs))
        assert prefetcher.entries_ahead == len(prepared)
        # A reply that stopped after the third entry resumes from the fourth.
        assert summary(prefetcher.take(docs, prepared[2].offset)) == summary(prepared[3:])
        # The walk lists docs: that preparation is used up, its subdirectory is next.
        prefetcher.listed(docs, [notes], first=True, complete=True)
        await settle()
        assert prefetcher.take(docs, 0) is None
        assert set(prefetcher.prepared) == {notes}
        nursery.cancel_scope.cancel()


async def test_read_ahead_stops_at_its_budget_and_an_unpredicted_listing_frees_it(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(prefetch, "MAX_AHEAD", 6)
    ops, volume = operations()
    subdirs = [path_ino(volume.volume, p) for p in ("docs/notes", "empty", "bin", "docs")]
    prefetcher = DirectoryPrefetcher(ops.listing)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prefetcher.run)
        prefetcher.listed(volume.root_ino, subdirs, first=True, complete=True)
        await settle()
        assert 0 < prefetcher.entries_ahead <= 6
        assert len(prefetcher.candidates) > 0  # the rest waits for the walk to catch up
        before = len(volume.decoded)
        prefetcher.listed(path_ino(volume.volume, "lost+found"), [], first=True, complete=True)
        assert prefetcher.entries_ahead == 0
        prefetcher.listed(volume.root_ino, subdirs[2:], first=False, complete=True)
        await settle()
        assert len(volume.decoded) > before  # budget freed: read-ahead resumed
        nursery.cancel_scope.cancel()


def test_what_a_walk_remembers_is_bounded(monkeypatch: Any) -> None:
    """A walk over more directories than MAX_TRIED does not grow the daemon."""
    monkeypatch.setattr(prefetch, "MAX_TRIED", 3)
    ops, _ = operations()
    prefetcher = DirectoryPrefetcher(ops.listing)
    for dir_ino in range(100, 110):
        prefetcher.listed(dir_ino, [], first=False, complete=True)
        assert len(prefetcher.tried) <= 3
    assert 109 in prefetcher.tried


async def test_a_directory_larger_than_the_budget_is_left_to_its_request(monkeypatch: Any) -> None:
    monkeypatch.setattr(prefetch, "MAX_AHEAD", 2)
    ops, volume = operations()
    docs = path_ino(volume.volume, "docs")
    assert len(summary(ops.listing(docs))) > 2
    prefetcher = DirectoryPrefetcher(ops.listing)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prefetcher.run)
        prefetcher.listed(volume.root_ino, [docs], first=True, complete=True)
        await settle()
        assert prefetcher.take(docs, 0) is None
        assert prefetcher.entries_ahead == 0
        nursery.cancel_scope.cancel()


async def test_a_listing_asked_for_while_being_prepared_is_handed_over(monkeypatch: Any) -> None:
    monkeypatch.setattr(prefetch, "STEP", 1)
    ops, volume = operations()
    docs = path_ino(volume.volume, "docs")
    prefetcher = DirectoryPrefetcher(ops.listing)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prefetcher.run)
        prefetcher.listed(volume.root_ino, [docs], first=True, complete=True)
        for _ in range(3):
            await trio.sleep(0)
        assert prefetcher.preparing == docs  # part of docs is prepared, not all of it
        decoded_before = len(volume.decoded)
        handed_over = summary(prefetcher.take(docs, 0))
        assert len(volume.decoded) - decoded_before < len(handed_over)  # not decoded twice
        assert handed_over == summary(ops.listing(docs))
        prefetcher.listed(docs, [], first=True, complete=True)
        await settle()
        assert prefetcher.entries_ahead == 0
        nursery.cancel_scope.cancel()
