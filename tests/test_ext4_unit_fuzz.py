"""Mutated images: whatever the bytes, only the driver's own errors escape, and quickly.

Hypothesis flips bytes inside the metadata of small real images (superblock, group
descriptors, inode table, directory, extent, indirect and xattr blocks), located with the
library itself, then opens the result and walks all of it.  The examples are derandomized
so that the run is the same everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drivers
from drivers.base import BlockReader, CorruptImage, NoSuchAttribute, Unsupported
from drivers.ext4.volume import Ext4Volume
from tests.test_ext4_unit_helpers import fsck_rehash, make_tree, mkfs

pytestmark = pytest.mark.skipif(shutil.which("mke2fs") is None, reason="needs e2fsprogs")

ALLOWED = (
    CorruptImage,
    Unsupported,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    NoSuchAttribute,
)
OPTION_SETS = {
    "ext4": ("-t", "ext4", "-b", "1024", "-O", "^metadata_csum,inline_data"),
    "ext4-csum": ("-t", "ext4", "-b", "1024"),
    "ext2": ("-t", "ext2", "-b", "1024"),
}


def metadata_regions(volume: Ext4Volume) -> list[tuple[int, int]]:
    """(offset, length) of the image's metadata: what a mutation should hit."""
    sb = volume.sb
    bs = sb.block_size
    regions = [(1024, 1024), ((1024 // bs + 1) * bs, bs)]
    for group in range(sb.groups_count):
        regions.append((volume.groups.inode_table[group] * bs, 64 * sb.inode_size))
    seen: set[int] = set()
    stack = [volume.root_ino]
    while stack:
        ino = stack.pop()
        if ino in seen:
            continue
        seen.add(ino)
        inode = volume._inode(ino)
        if inode.file_acl:
            regions.append((inode.file_acl * bs, bs))
        if not inode.inline and (inode.is_dir or inode.size > 12 * bs):
            mapper = volume._mapper(inode)
            for lblk in range(min(4, (inode.size + bs - 1) // bs)):
                pblk = mapper(lblk)[0]
                if pblk >= 0:
                    regions.append((pblk * bs, bs))
            if inode.uses_extents:
                regions.append((int.from_bytes(inode.i_block[16:20], "little") * bs, bs))
            else:
                regions.append((int.from_bytes(inode.i_block[48:52], "little") * bs, bs))
        if inode.is_dir:
            stack.extend(e.ino for e in volume.readdir(ino))
    return [(o, n) for o, n in regions if o > 0]


@functools.cache
def corpus(name: str) -> tuple[bytes, list[tuple[int, int]]]:
    """The pristine image for an option set and its metadata regions (built once)."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        make_tree(tmp / "src", big_dir=120, sparse_extents=40)
        os.unlink(tmp / "src" / "multi.bin")  # keep the walk cheap
        image = mkfs(tmp / "image", tmp / "src", *OPTION_SETS[name], size="4M")
        fsck_rehash(image)
        volume = drivers.open_image(image)
        assert isinstance(volume, Ext4Volume)
        return image.read_bytes(), metadata_regions(volume)


def walk(volume: drivers.Volume) -> Iterator[None]:
    """Touch every operation on everything reachable; yield after each request."""
    stack = [volume.root_ino]
    seen = set()
    while stack:
        dir_ino = stack.pop()
        if dir_ino in seen:
            continue
        seen.add(dir_ino)
        try:
            entries = list(volume.readdir(dir_ino))
        except ALLOWED:
            continue
        yield
        for entry in entries[:300]:
            with contextlib.suppress(*ALLOWED):
                volume.lookup(dir_ino, entry.name)
            with contextlib.suppress(*ALLOWED):
                list(volume.readdir(dir_ino, entry.next_offset))
            try:
                attr = volume.getattr(entry.ino)
                if attr.is_dir:
                    stack.append(entry.ino)
                elif attr.is_symlink:
                    volume.readlink(entry.ino)
                else:
                    volume.read(entry.ino, 0, 1 << 16)
                    volume.read(entry.ino, 123_456, 5000)
            except ALLOWED:
                pass
            try:
                for name in volume.listxattr(entry.ino):
                    volume.getxattr(entry.ino, name)
            except ALLOWED:
                pass
            yield
    with contextlib.suppress(*ALLOWED):
        volume.statfs()


mutation = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 255))


@pytest.mark.parametrize("name", list(OPTION_SETS))
@settings(
    max_examples=int(os.environ.get("EXT4_FUZZ_EXAMPLES", "120")),
    deadline=None,
    derandomize=os.environ.get("EXT4_FUZZ_EXAMPLES") is None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutations=st.lists(mutation, min_size=1, max_size=6))
def test_mutations_raise_only_driver_errors(
    name: str, mutations: list[tuple[int, int, int]]
) -> None:
    data, regions = corpus(name)
    image = bytearray(data)
    for which, where, value in mutations:
        offset, length = regions[which % len(regions)]
        image[offset + where % length] = value
    fd = os.memfd_create("ext4-fuzz")
    try:
        os.write(fd, image)
        reader = BlockReader(fd)
        start = time.monotonic()
        try:
            volume = Ext4Volume.open(reader, {})
        except (CorruptImage, Unsupported):
            return
        for _ in walk(volume):
            assert time.monotonic() - start < 10, "a mutated image made the walk too slow"
    finally:
        os.close(fd)
