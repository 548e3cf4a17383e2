"""drivers.readahead, BlockReader.read_bulk and read_random: reading ahead, around the page
cache or through it, never changes an answer.

The helper is format-agnostic, so it is specified here on an image file whose "file" is
a list of image extents chosen by the test (scattered and unaligned, like a fragmented
FAT chain), with the image's bulk descriptor opened with O_DIRECT, without it, or absent;
the FAT driver's tests read real images through it, and a real mount is read in
tests/test_fat_mount.py.
"""

from __future__ import annotations

import mmap
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.base import DIRECT_ALIGN, BlockReader, CorruptImage
from drivers.pagecache import cached_fraction, fully_cached
from drivers.readahead import AHEAD, CHUNK, MAX_PENDING, MAX_STREAMS, ZEROS, Extents, ReadAhead

MiB = 1 << 20
IMAGE_SIZE = 16 * MiB + 1000  # not a multiple of the O_DIRECT alignment
PIECE = 64 << 10
SKEW = 1536  # pieces start off the alignment, as clusters after 3 reserved sectors do


@pytest.fixture(params=["direct", "buffered", "cached"])
def image(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[BlockReader, bytes]]:
    data = random.Random(7).randbytes(IMAGE_SIZE)
    path = tmp_path / "image"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    bulk = random_reads = None
    if request.param != "cached":
        try:
            bulk = os.open(path, os.O_RDONLY | (os.O_DIRECT if request.param == "direct" else 0))
        except OSError:
            pytest.skip("no O_DIRECT on the temporary directory's file system")
        # As the driver opens them: also once more without read-ahead, for random reads.
        random_reads = os.open(path, os.O_RDONLY)
        os.posix_fadvise(random_reads, 0, 0, os.POSIX_FADV_RANDOM)
        # Out of the page cache, so that reads go to the disk (cached bytes are taken
        # from the cache instead).
        evict(fd)
    try:
        yield BlockReader(fd, bulk_fd=bulk, random_fd=random_reads), data
    finally:
        for opened in (fd, bulk, random_reads):
            if opened is not None:
                os.close(opened)


def evict(fd: int) -> None:
    """The file of ``fd`` out of the page cache."""
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def scattered(pieces: int, seed: int = 1) -> list[int]:
    """Image offsets of the file's pieces, in file order, shuffled over the image."""
    slots = list(range(IMAGE_SIZE // PIECE - 1))
    random.Random(seed).shuffle(slots)
    return [slot * PIECE + SKEW for slot in slots[:pieces]]


class ScatteredFile:
    """A file of ``len(starts) * PIECE`` bytes whose pieces are at ``starts``."""

    def __init__(self, starts: list[int], bad_from: int | None = None) -> None:
        self.starts = starts
        self.size = len(starts) * PIECE
        self.bad_from = bad_from  # file offset from which the "chain" is damaged
        self.asked: list[tuple[int, int]] = []

    def extents(self, offset: int, end: int) -> Extents:
        self.asked.append((offset, end))
        if self.bad_from is not None and end > self.bad_from:
            raise CorruptImage(f"the chain ends at {self.bad_from}")
        pieces = []
        while offset < end:
            index, skip = divmod(offset, PIECE)
            length = min(PIECE - skip, end - offset)
            start = self.starts[index]
            pieces.append((ZEROS if start == ZEROS else start + skip, length))
            offset += length
        return pieces

    def expected(self, data: bytes, offset: int, end: int) -> bytes:
        pieces = self.extents(offset, end)
        self.asked.pop()
        return b"".join(bytes(n) if a == ZEROS else data[a : a + n] for a, n in pieces)


def read_sequentially(
    readahead: ReadAhead, data: bytes, file: ScatteredFile, window: int, ino: int = 1
) -> None:
    for offset in range(0, file.size, window):
        end = min(offset + window, file.size)
        assert readahead.read(ino, offset, end, file.size, file.extents) == file.expected(
            data, offset, end
        )


def test_a_sequential_reader_gets_the_file_and_its_next_windows_are_read_ahead(
    image: tuple[BlockReader, bytes],
) -> None:
    reader, data = image
    file = ScatteredFile(scattered(64))
    readahead = ReadAhead(reader)
    window = 128 << 10 | 512  # windows that straddle pieces and alignment
    for offset in (0, window):
        readahead.read(1, offset, offset + window, file.size, file.extents)
    # The second read started the chunks of the AHEAD bytes after it.
    ahead = range(2 * window // CHUNK, -(-min(2 * window + AHEAD, file.size) // CHUNK))
    assert sorted(readahead._pending) == [(1, k) for k in ahead]
    read_sequentially(readahead, data, file, window)
    assert not readahead._pending  # the reader took everything read for it


def test_holes_read_as_zeros_inline_and_ahead(image: tuple[BlockReader, bytes]) -> None:
    reader, data = image
    starts = scattered(48)
    starts[5:20] = [ZEROS] * 15  # a hole of 15 pieces, longer than a chunk
    starts[30] = ZEROS
    file = ScatteredFile(starts)
    read_sequentially(ReadAhead(reader), data, file, 128 << 10)
    assert file.expected(data, 5 * PIECE, 20 * PIECE) == bytes(15 * PIECE)


def test_random_reads_start_no_work_ahead(image: tuple[BlockReader, bytes]) -> None:
    reader, data = image
    file = ScatteredFile(scattered(64))
    readahead = ReadAhead(reader)
    rng = random.Random(3)
    for _ in range(200):
        offset = rng.randrange(0, file.size - 4096) & ~4095
        got = readahead.read(1, offset, offset + 4096, file.size, file.extents)
        assert got == file.expected(data, offset, offset + 4096)
    assert readahead._pool is None


def test_a_damaged_chain_fails_only_the_requests_that_reach_it(
    image: tuple[BlockReader, bytes],
) -> None:
    reader, data = image
    file = ScatteredFile(scattered(64), bad_from=2 * MiB)
    readahead = ReadAhead(reader)
    window = 256 << 10
    for offset in range(0, 2 * MiB, window):  # reading ahead runs into the damage: no error
        got = readahead.read(1, offset, offset + window, file.size, file.extents)
        assert got == file.expected(data, offset, offset + window)
    with pytest.raises(CorruptImage, match="chain ends"):
        readahead.read(1, 2 * MiB, 2 * MiB + window, file.size, file.extents)


def test_a_window_past_the_image_fails_its_own_request(image: tuple[BlockReader, bytes]) -> None:
    reader, data = image
    file = ScatteredFile([*scattered(8), IMAGE_SIZE - PIECE // 2])  # last piece crosses the end
    readahead = ReadAhead(reader)
    read_sequentially(readahead, data, ScatteredFile(file.starts[:8]), PIECE)
    for offset in range(0, 8 * PIECE, PIECE):
        readahead.read(2, offset, offset + PIECE, file.size, file.extents)
    with pytest.raises(CorruptImage, match="outside the image"):
        readahead.read(2, 8 * PIECE, 9 * PIECE, file.size, file.extents)


def test_interleaved_readers_each_get_their_own_file(image: tuple[BlockReader, bytes]) -> None:
    reader, data = image
    files = {ino: ScatteredFile(scattered(32, seed=ino)) for ino in (1, 2, 3)}
    readahead = ReadAhead(reader)
    for offset in range(0, 32 * PIECE, PIECE):
        for ino, file in files.items():
            got = readahead.read(ino, offset, offset + PIECE, file.size, file.extents)
            assert got == file.expected(data, offset, offset + PIECE)
            assert len(readahead._pending) <= MAX_PENDING


def test_followed_files_and_waiting_windows_are_bounded(image: tuple[BlockReader, bytes]) -> None:
    reader, _ = image
    file = ScatteredFile(scattered(4))
    readahead = ReadAhead(reader)
    for ino in range(3 * MAX_STREAMS):
        for offset in (0, PIECE):
            readahead.read(ino, offset, offset + PIECE, file.size, file.extents)
    assert len(readahead._next) <= MAX_STREAMS
    assert len(readahead._pending) <= MAX_PENDING


def test_bulk_reads_are_exact_at_any_offset_and_bounded_by_the_region(
    image: tuple[BlockReader, bytes],
) -> None:
    reader, data = image
    scratch = mmap.mmap(-1, MiB + 2 * DIRECT_ALIGN)
    rng = random.Random(5)
    for _ in range(100):
        length = rng.randrange(0, MiB)
        offset = rng.randrange(0, IMAGE_SIZE - length)
        assert reader.read_bulk(offset, length, scratch) == data[offset : offset + length]
    tail = IMAGE_SIZE - 700
    assert reader.read_bulk(tail, 700, scratch) == data[tail:]  # the file's unaligned end
    with pytest.raises(CorruptImage, match="outside the image"):
        reader.read_bulk(tail, 701, scratch)
    window = reader.window(PIECE, PIECE)  # a partition: its bounds, not the file's
    assert window.read_bulk(10, 100, scratch) == data[PIECE + 10 : PIECE + 110]
    with pytest.raises(CorruptImage, match="outside the image"):
        window.read_bulk(PIECE - 10, 11, scratch)


def test_the_page_cache_is_asked_without_reading_anything(tmp_path: Path) -> None:
    """fully_cached (and cached_fraction, for a whole file) tell a file just written from
    one dropped out of the cache, and the asking itself brings nothing into the cache (a
    failed RWF_NOWAIT read would)."""
    path = tmp_path / "image"
    path.write_bytes(random.Random(5).randbytes(4 * MiB))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fully_cached(fd, 1000, 2 * MiB)
        assert cached_fraction(fd) == 1.0
        evict(fd)
        assert not fully_cached(fd, 1000, 2 * MiB)
        assert cached_fraction(fd) == 0.0
        assert not fully_cached(fd, 1000, 2 * MiB)  # still not: asking read nothing
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # this read brings its page only
        os.pread(fd, 4096, 0)
        assert fully_cached(fd, 0, 4096)
        assert not fully_cached(fd, 0, 4097)
    finally:
        os.close(fd)


def test_a_random_read_brings_in_its_own_pages_only(tmp_path: Path) -> None:
    """BlockReader.read_random reads through the descriptor opened without read-ahead:
    its pages, and none after them, enter the page cache (and stay, so that a cached image
    is read from the cache), where a read of the image at the same place reads ahead."""
    data = random.Random(9).randbytes(8 * MiB)
    path = tmp_path / "image"
    path.write_bytes(data)
    fd, random_fd = os.open(path, os.O_RDONLY), os.open(path, os.O_RDONLY)

    def drop_cache() -> None:
        evict(fd)
        assert not fully_cached(fd, 0, 4096)

    try:
        os.posix_fadvise(random_fd, 0, 0, os.POSIX_FADV_RANDOM)
        reader = BlockReader(fd, random_fd=random_fd)
        drop_cache()
        assert reader.read_random(100, 3000) == data[100:3100]
        assert fully_cached(fd, 0, 4096)
        assert not fully_cached(fd, 4096, 4096)
        window = reader.window(4 * MiB, 2 * MiB)
        assert window.read_random(4096 + 10, 10) == data[4 * MiB + 4096 + 10 :][:10]
        assert not fully_cached(fd, 4 * MiB + 8192, 4096)
        # The same first read through the launcher's descriptor reads ahead.
        drop_cache()
        assert reader.read(100, 3000) == data[100:3100]
        assert fully_cached(fd, 4096, 4096)
    finally:
        os.close(fd)
        os.close(random_fd)
