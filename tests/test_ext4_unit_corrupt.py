"""The ext4 driver on damaged images: the right error, for the right request, quickly.

Images are built with mke2fs and damaged at offsets located with the library itself
(inode table, directory and extent blocks) or with debugfs (features).
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import pytest

import drivers
from drivers.base import BlockReader, CorruptImage, Unsupported
from drivers.ext4.checksum import ext4_chksum
from drivers.ext4.volume import Ext4Volume
from tests.test_ext4_unit_helpers import (
    debugfs,
    inode_offset,
    kernel_mount,
    make_tree,
    mkfs,
    open_ext4,
    patch,
    path_ino,
    read,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mke2fs") is None,
    reason="needs root and e2fsprogs",
)


def walk(volume: Ext4Volume) -> int:
    """Visit everything; return how many entries were seen."""
    seen = 0
    stack = [volume.root_ino]
    while stack:
        for entry in volume.readdir(stack.pop()):
            attr = volume.getattr(entry.ino)
            volume.listxattr(entry.ino)
            if attr.is_dir:
                stack.append(entry.ino)
            elif attr.is_regular:
                volume.read(entry.ino, 0, 1 << 20)
            elif attr.is_symlink:
                volume.readlink(entry.ino)
            seen += 1
    return seen


@pytest.fixture
def image(tmp_path: Path) -> Path:
    make_tree(tmp_path / "src", big_dir=50, sparse_extents=400)
    return mkfs(tmp_path / "image", tmp_path / "src", "-t", "ext4", "-b", "1024")


@pytest.fixture
def image_nocsum(tmp_path: Path) -> Path:
    make_tree(tmp_path / "src", big_dir=50, sparse_extents=400)
    return mkfs(
        tmp_path / "image", tmp_path / "src", "-t", "ext4", "-b", "1024", "-O", "^metadata_csum"
    )


def test_probe_and_wrong_magic(image: Path) -> None:
    fd = os.open(image, os.O_RDONLY)
    try:
        assert Ext4Volume.probe(BlockReader(fd))
    finally:
        os.close(fd)
    patch(image, 1024 + 0x38, b"\0\0")
    fd = os.open(image, os.O_RDONLY)
    try:
        reader = BlockReader(fd)
        assert not Ext4Volume.probe(reader)
        with pytest.raises(CorruptImage, match="magic"):
            Ext4Volume.open(reader, {})
    finally:
        os.close(fd)
    with pytest.raises(Unsupported, match="no supported file system"):
        drivers.open_image(image)


def test_truncated_image(image: Path, tmp_path: Path) -> None:
    data = image.read_bytes()
    for size in (0, 100, 1500, 2048 + 512, len(data) // 2):
        short = tmp_path / f"short-{size}"
        short.write_bytes(data[:size])
        fd = os.open(short, os.O_RDONLY)
        try:
            reader = BlockReader(fd)
            assert Ext4Volume.probe(reader) == (size >= 1024 + 0x3A)
            with pytest.raises(CorruptImage):
                Ext4Volume.open(reader, {})
        finally:
            os.close(fd)


def test_unknown_incompat_feature_is_named(image: Path) -> None:
    debugfs(image, "feature FEATURE_I20", write=True)  # 0x100000: unknown to everyone
    with pytest.raises(Unsupported, match=r"INCOMPAT feature\(s\): 0x100000 \(unknown\)"):
        open_ext4(image)


def test_known_incompat_features_are_refused_with_a_reason(image: Path) -> None:
    debugfs(image, "feature encrypt", write=True)
    with pytest.raises(Unsupported, match=r"0x10000 \(encrypt: .*not implemented"):
        open_ext4(image)


def test_unknown_ro_compat_feature_is_fine_read_only(image: Path) -> None:
    debugfs(image, "feature FEATURE_R30", write=True)
    assert walk(open_ext4(image)) > 50


def test_superblock_checksum_mismatch_refuses_the_mount(image: Path) -> None:
    label_offset = 1024 + 0x78
    patch(image, label_offset, b"X")
    with pytest.raises(CorruptImage, match="superblock checksum"):
        open_ext4(image)


def test_needs_recovery_suggests_noload(image: Path) -> None:
    debugfs(image, "feature needs_recovery", write=True)
    with pytest.raises(Unsupported, match="-o noload"):
        open_ext4(image)
    assert walk(open_ext4(image, noload="")) > 50


def test_inode_checksum_mismatch_fails_that_inode_only(image: Path) -> None:
    volume = open_ext4(image)
    victim = path_ino(volume, "small.txt")
    mtime_offset = inode_offset(volume, victim) + 0x10
    (value,) = struct.unpack("<I", read(image, mtime_offset, 4))
    patch(image, mtime_offset, struct.pack("<I", value ^ 1))
    volume = open_ext4(image)
    with pytest.raises(CorruptImage, match="checksum"):
        volume.getattr(victim)
    with pytest.raises(CorruptImage):
        volume.read(victim, 0, 10)
    assert volume.getattr(path_ino(volume, "fifty.bin")).size == 50
    names = {e.name for e in volume.readdir(volume.root_ino)}
    assert b"small.txt" in names  # the entry still lists; only the inode fails


def test_zero_rec_len_ends_that_directory_block_only(image_nocsum: Path) -> None:
    """As the kernel: a listing skips the rest of the block, a lookup reaching it fails."""
    image = image_nocsum
    volume = open_ext4(image)
    victim = path_ino(volume, "dir/sub")
    block = volume._mapper(volume._inode(victim))(0)[0]
    rec_len_offset = block * volume.sb.block_size + 12 + 4  # the ".." entry's rec_len
    patch(image, rec_len_offset, b"\0\0")
    volume = open_ext4(image)
    start = time.monotonic()
    assert list(volume.readdir(victim)) == []
    with pytest.raises(CorruptImage, match="rec_len"):
        volume.lookup(victim, b"deeper")
    assert time.monotonic() - start < 1
    assert volume.getattr(victim).is_dir
    assert {e.name for e in volume.readdir(path_ino(volume, "dir"))} >= {b"sub", b"emptydir"}
    assert volume.read(path_ino(volume, "small.txt"), 0, 100) == b"hello, ext4\n"


def test_directory_block_checksum_mismatch(image: Path) -> None:
    volume = open_ext4(image)
    victim = path_ino(volume, "dir/sub")
    block = volume._mapper(volume._inode(victim))(0)[0]
    name_offset = block * volume.sb.block_size + 24 + 8  # first byte of "deeper"'s name
    patch(image, name_offset, b"D")
    volume = open_ext4(image)
    with pytest.raises(CorruptImage, match="checksum"):
        list(volume.readdir(victim))
    assert walk_except(volume, victim) > 50


def walk_except(volume: Ext4Volume, skip: int) -> int:
    seen = 0
    stack = [volume.root_ino]
    while stack:
        for entry in volume.readdir(stack.pop()):
            if entry.ino == skip:
                continue
            if volume.getattr(entry.ino).is_dir:
                stack.append(entry.ino)
            seen += 1
    return seen


def extent_child(volume: Ext4Volume, ino: int) -> int:
    """The block the root of ``ino``'s extent tree points to (its first index)."""
    i_block = volume._inode(ino).i_block
    magic, entries, _, depth = struct.unpack_from("<HHHH", i_block)
    assert magic == 0xF30A and depth >= 1 and entries >= 1
    lo, hi = struct.unpack_from("<IH", i_block, 12 + 4)
    return int(lo | hi << 32)


def test_extent_tree_pointing_at_itself(image_nocsum: Path) -> None:
    image = image_nocsum
    volume = open_ext4(image)
    victim = path_ino(volume, "fragmented.bin")
    node = extent_child(volume, victim)
    offset = node * volume.sb.block_size
    depth = struct.unpack_from("<H", read(image, offset + 6, 2))[0]
    assert depth >= 1
    # first index entry of that node -> the node itself
    patch(image, offset + 12 + 4, struct.pack("<IH", node & 0xFFFFFFFF, node >> 32))
    volume = open_ext4(image)
    start = time.monotonic()
    with pytest.raises(CorruptImage, match="eh_depth"):
        volume.read(victim, 0, 1 << 20)
    assert time.monotonic() - start < 1
    assert volume.read(path_ino(volume, "small.txt"), 0, 100) == b"hello, ext4\n"


def test_extent_block_checksum_mismatch_and_repair(image: Path) -> None:
    volume = open_ext4(image)
    victim = path_ino(volume, "fragmented.bin")
    seed = volume._inode(victim).csum_seed
    node = extent_child(volume, victim)
    bs = volume.sb.block_size
    block = bytearray(read(image, node * bs, bs))
    block[12 + 10] ^= 0x01  # ei_unused of the first index: changes nothing but the checksum
    patch(image, node * bs, bytes(block))
    volume = open_ext4(image)
    with pytest.raises(CorruptImage, match="checksum"):
        volume.read(victim, 0, 4096)
    # With the tail recomputed the same block is accepted again.
    emax = struct.unpack_from("<H", block, 4)[0]
    tail = 12 + 12 * emax
    struct.pack_into("<I", block, tail, ext4_chksum(seed, bytes(block[:tail])))
    patch(image, node * bs, bytes(block))
    volume = open_ext4(image)
    assert len(volume.read(victim, 0, 4096)) == 4096


def test_xattr_block_checksum_mismatch(image: Path) -> None:
    volume = open_ext4(image)
    victim = path_ino(volume, "fifty.bin")
    acl_block = volume._inode(victim).file_acl
    assert acl_block
    bs = volume.sb.block_size
    last = read(image, acl_block * bs + bs - 1, 1)
    patch(image, acl_block * bs + bs - 1, bytes([last[0] ^ 0x55]))
    volume = open_ext4(image)
    with pytest.raises(CorruptImage, match="checksum"):
        volume.listxattr(victim)
    with pytest.raises(CorruptImage):
        volume.getxattr(victim, b"user.big")
    assert volume.read(victim, 0, 50) == bytes(range(50))


def test_bad_inode_numbers_and_types(image: Path) -> None:
    volume = open_ext4(image)
    for ino in (0, 1, 5, 8, volume.sb.inodes_count + 1, 2**40):
        with pytest.raises(CorruptImage):
            volume.getattr(ino)
    with pytest.raises(NotADirectoryError):
        list(volume.readdir(path_ino(volume, "small.txt")))
    with pytest.raises(NotADirectoryError):
        volume.lookup(path_ino(volume, "small.txt"), b"x")
    with pytest.raises(FileNotFoundError):
        volume.lookup(volume.root_ino, b"missing")
    with pytest.raises(FileNotFoundError):
        volume.lookup(volume.root_ino, b"x" * 256)
    with pytest.raises(IsADirectoryError):
        volume.read(volume.root_ino, 0, 10)
    with pytest.raises(drivers.NoSuchAttribute):
        volume.getxattr(volume.root_ino, b"user.nothing")
    with pytest.raises(drivers.NoSuchAttribute):
        volume.getxattr(path_ino(volume, "small.txt"), b"system.data")
    assert volume.read(path_ino(volume, "small.txt"), 5, 0) == b""
    assert volume.read(path_ino(volume, "small.txt"), 100, 10) == b""


def test_group_descriptor_checksum_mismatch_is_tolerated_like_the_kernel(image: Path) -> None:
    volume = open_ext4(image)
    gdt = (1024 // volume.sb.block_size + 1) * volume.sb.block_size
    free_inodes_offset = gdt + 0x0E  # bg_free_inodes_count_lo of group 0
    (count,) = struct.unpack("<H", read(image, free_inodes_offset, 2))
    patch(image, free_inodes_offset, struct.pack("<H", count - 1))
    volume = open_ext4(image)
    assert volume.groups.bad_checksums == [0]
    with kernel_mount(image) as mnt:
        assert volume.statfs().files_free == os.statvfs(mnt).f_ffree
    assert walk(volume) > 50


def test_inode_table_outside_the_volume_refuses_the_mount(image: Path) -> None:
    volume = open_ext4(image)
    gdt = (1024 // volume.sb.block_size + 1) * volume.sb.block_size
    patch(image, gdt + 0x08, struct.pack("<I", 0xFFFFFFF0))  # bg_inode_table_lo, group 0
    with pytest.raises(CorruptImage, match="Inode table for group 0 not in group"):
        open_ext4(image)
