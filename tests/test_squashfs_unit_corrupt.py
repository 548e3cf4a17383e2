"""The squashfs driver on damaged images: the right error, for the right request, quickly.

The base image is built with ``-noI -noX`` so that inodes, directories, ids and xattrs
sit in uncompressed metadata blocks and can be patched in place, at offsets located with
the library's own layout declarations; data blocks stay compressed.  Where the kernel can
say, its outcome on the same damaged image is checked too (a refused mount, EIO).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import (
    BlockReader,
    CorruptImage,
    DriverError,
    Unsupported,
)
from drivers.squashfs import SquashfsVolume
from drivers.squashfs.layout import (
    DIR_ENTRY,
    DIR_HEADER,
    INODE_LAYOUTS,
    SQUASHFS_COMP_OPT,
    SUPER_BLOCK,
)
from tests.support.fuzzing import Seed, apply, byte_mutations, check_image, make_seed
from tests.support.kernel import MountError, kernel_mount
from tests.test_squashfs_unit_helpers import can_build, mksquashfs, open_squashfs, path_ino, pattern

pytestmark = pytest.mark.skipif(not can_build(), reason="needs root, mksquashfs and loop devices")

BLOCK = 131072


def make_small_tree(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "b.txt").write_bytes(b"bravo\n")
    (root / "big.bin").write_bytes(pattern(300_000, 3))
    (root / "rand.bin").write_bytes(random.Random(5).randbytes(200_000))
    (root / "x.txt").write_bytes(b"with xattr\n")
    os.setxattr(root / "x.txt", "user.note", b"a note")
    os.symlink("a.txt", root / "link")
    (root / "d").mkdir()
    for name in ("p", "q", "r"):
        (root / "d" / name).write_bytes(name.encode())
    (root / "bigdir").mkdir()
    for i in range(600):
        (root / "bigdir" / f"name-{i:04d}").write_bytes(b"")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("squashfs-corrupt")
    make_small_tree(top / "src")
    return mksquashfs(top / "src", top / "base.img", "-noI", "-noX")


@pytest.fixture
def image(base: Path, tmp_path: Path) -> Path:
    """A fresh copy of the base image for one test to damage."""
    return Path(shutil.copy(base, tmp_path / "damaged.img"))


def patch(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read(image: Path, offset: int, size: int) -> bytes:
    with open(image, "rb") as f:
        f.seek(offset)
        return f.read(size)


def set_super(image: Path, **fields: int) -> None:
    raw = bytearray(read(image, 0, SUPER_BLOCK.size))
    for name, value in fields.items():
        size = SUPER_BLOCK.size_of(name)
        offset = SUPER_BLOCK.offset_of(name)
        raw[offset : offset + size] = value.to_bytes(size, "little")
    patch(image, 0, bytes(raw))


def meta_offset(volume: SquashfsVolume, block: int, offset: int) -> int:
    """File offset of byte ``offset`` of the (uncompressed) metadata block at ``block``."""
    word = int.from_bytes(read_volume(volume, block, 2), "little")
    assert word & 0x8000, "this test needs an uncompressed metadata block"
    assert offset < word & 0x7FFF
    return block + 2 + offset


def read_volume(volume: SquashfsVolume, offset: int, size: int) -> bytes:
    return volume.reader.read(offset, size)


def inode_field(volume: SquashfsVolume, path: str, field: str) -> tuple[int, int]:
    """(file offset, size) of an inode field of ``path``."""
    ref = volume._refs[path_ino(volume, path)]
    inode = volume.inodes.read(ref)
    layout = INODE_LAYOUTS[inode.inode_type]
    start = volume.sb.inode_table_start + (ref >> 16)
    offset = (ref & 0xFFFF) + layout.offset_of(field)
    size = layout.size_of(field)
    return meta_offset(volume, start, offset), size


def set_inode(image: Path, path: str, field: str, value: int) -> None:
    offset, size = inode_field(open_squashfs(image), path, field)
    patch(image, offset, value.to_bytes(size, "little", signed=value < 0))


def listing_offset(volume: SquashfsVolume, path: str) -> int:
    """File offset of the first header of a directory's listing."""
    inode = volume.inodes.read(volume._refs[path_ino(volume, path)])
    block = volume.sb.directory_table_start + inode.start_block
    return meta_offset(volume, block, inode.start_offset)


def kernel_refuses(image: Path) -> None:
    with pytest.raises(MountError), kernel_mount(image, "squashfs"):
        pass


def kernel_errno(image: Path, action: Callable[[Path], object]) -> int:
    with kernel_mount(image, "squashfs") as mnt:
        try:
            action(mnt)
        except OSError as exc:
            return exc.errno or 0
    return 0


# -- the superblock ----------------------------------------------------------------------------


def test_probe_and_truncation(image: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    fd = os.open(empty, os.O_RDONLY)
    try:
        assert not SquashfsVolume.probe(BlockReader(fd))
        with pytest.raises(CorruptImage, match="too small"):
            SquashfsVolume.open(BlockReader(fd), {})
    finally:
        os.close(fd)
    size = image.stat().st_size
    os.truncate(image, size // 2)
    with pytest.raises(CorruptImage, match="beyond the end"):
        open_squashfs(image)
    kernel_refuses(image)
    os.truncate(image, 50)
    with pytest.raises(CorruptImage, match="too small"):
        open_squashfs(image)


def test_bad_magic(image: Path) -> None:
    patch(image, 0, b"sqsh")  # the big-endian magic: a squashfs of another byte order
    fd = os.open(image, os.O_RDONLY)
    try:
        assert not SquashfsVolume.probe(BlockReader(fd))
    finally:
        os.close(fd)
    with pytest.raises(CorruptImage, match="superblock"):
        open_squashfs(image)
    kernel_refuses(image)


SUPERBLOCK_DAMAGE: dict[str, tuple[dict[str, int], type[DriverError], str]] = {
    "version 3.1": ({"s_major": 3, "s_minor": 1}, Unsupported, "older Squashfs 3.1"),
    "version 4.1": ({"s_minor": 1}, Unsupported, "newer 4.1"),
    "compressor 7": ({"compression": 7}, Unsupported, "id 7"),
    "block_log 16": ({"block_log": 16}, CorruptImage, "disagree"),
    "2 MiB blocks": ({"block_size": 2 << 20, "block_log": 21}, CorruptImage, "block size"),
    "2 KiB blocks": ({"block_size": 2048, "block_log": 11}, Unsupported, "Page size"),
    "root offset": ({"root_inode": 9000}, CorruptImage, "root inode"),
    "no ids": ({"no_ids": 0}, CorruptImage, "no ids"),
    "two ids": ({"no_ids": 3000}, CorruptImage, "id table"),
}


@pytest.mark.parametrize("name", list(SUPERBLOCK_DAMAGE))
def test_superblock_refused_as_by_the_kernel(image: Path, name: str) -> None:
    fields, error, reason = SUPERBLOCK_DAMAGE[name]
    set_super(image, **fields)
    with pytest.raises(error, match=reason):
        open_squashfs(image)
    kernel_refuses(image)


def test_table_positions(image: Path) -> None:
    volume = open_squashfs(image)
    sb = volume.sb
    for fields in (
        {"inode_table_start": sb.directory_table_start},
        {"directory_table_start": volume.tables.directory_table_end + 1},
        {"id_table_start": sb.id_table_start + 8},
        {"fragments": sb.fragments + 2000},
        {"xattr_id_table_start": sb.xattr_id_table_start - 8},
        {"bytes_used": sb.bytes_used + 16},
    ):
        damaged = image.with_suffix(".tables")
        shutil.copy(image, damaged)
        set_super(damaged, **fields)
        with pytest.raises(CorruptImage):
            open_squashfs(damaged)
        kernel_refuses(damaged)


def test_lz4_without_its_options(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"lz4")
    image = mksquashfs(src, tmp_path / "lz4.img", "-comp", "lz4")
    flags = open_squashfs(image).sb.flags
    assert flags & SQUASHFS_COMP_OPT
    set_super(image, flags=flags & ~SQUASHFS_COMP_OPT)
    with pytest.raises(CorruptImage, match="lz4"):
        open_squashfs(image)
    kernel_refuses(image)


# -- data --------------------------------------------------------------------------------------


def first_block(volume: SquashfsVolume, path: str) -> tuple[int, int, int]:
    """(file offset of the block list's first word, the word, the block's position)."""
    inode = volume.inodes.read(volume._refs[path_ino(volume, path)])
    word_at = meta_offset(volume, *inode.tail)
    return word_at, int.from_bytes(read_volume(volume, word_at, 4), "little"), inode.start_block


def test_corrupt_data_block(image: Path) -> None:
    volume = open_squashfs(image)
    _, word, start = first_block(volume, "big.bin")
    assert not word & (1 << 24), "wanted a compressed block"
    patch(image, start + 10, b"\xa5" * 200)
    volume = open_squashfs(image)
    big = path_ino(volume, "big.bin")
    with pytest.raises(CorruptImage, match="gzip"):
        volume.read(big, 0, 100)
    assert volume.read(big, BLOCK, 100) == pattern(300_000, 3)[BLOCK : BLOCK + 100]
    assert volume.read(path_ino(volume, "a.txt"), 0, 100) == b"alpha\n"
    assert volume.getattr(big).size == 300_000
    assert kernel_errno(image, lambda mnt: (mnt / "big.bin").read_bytes()) == errno.EIO


def test_decompression_bomb(image: Path) -> None:
    volume = open_squashfs(image)
    word_at, word, start = first_block(volume, "big.bin")
    bomb = zlib.compress(bytes(BLOCK + 4096))
    assert len(bomb) <= word
    patch(image, start, bomb)
    patch(image, word_at, len(bomb).to_bytes(4, "little"))
    volume = open_squashfs(image)
    with pytest.raises(CorruptImage, match="beyond"):
        volume.read(path_ino(volume, "big.bin"), 0, 100)
    assert kernel_errno(image, lambda mnt: (mnt / "big.bin").read_bytes()) == errno.EIO


def test_short_data_block(image: Path) -> None:
    """A block that inflates to fewer bytes than the file has there: EIO, as the kernel."""
    volume = open_squashfs(image)
    word_at, _, start = first_block(volume, "big.bin")
    short = zlib.compress(b"short block")
    patch(image, start, short)
    patch(image, word_at, len(short).to_bytes(4, "little"))
    volume = open_squashfs(image)
    with pytest.raises(CorruptImage, match="11 bytes where 131072 are expected"):
        volume.read(path_ino(volume, "big.bin"), 0, 100)
    assert kernel_errno(image, lambda mnt: (mnt / "big.bin").read_bytes()) == errno.EIO


def test_block_size_word_with_high_bits(image: Path) -> None:
    word_at, word, _ = first_block(open_squashfs(image), "big.bin")
    patch(image, word_at, (word | 1 << 25).to_bytes(4, "little"))
    volume = open_squashfs(image)
    with pytest.raises(CorruptImage, match="size word"):
        volume.read(path_ino(volume, "big.bin"), 0, 100)


def test_metadata_bomb(image: Path) -> None:
    volume = open_squashfs(image)
    root = volume.inodes.read(volume._refs[volume.root_ino])
    block = volume.sb.directory_table_start + root.start_block
    bomb = zlib.compress(bytes(9000))
    patch(image, block, len(bomb).to_bytes(2, "little") + bomb)
    volume = open_squashfs(image)
    with pytest.raises(CorruptImage, match="beyond 8192"):
        list(volume.readdir(volume.root_ino))


def test_metadata_block_lengths(image: Path) -> None:
    volume = open_squashfs(image)
    root = volume.inodes.read(volume._refs[volume.root_ino])
    block = volume.sb.directory_table_start + root.start_block
    for word in (0x0000, 0x8000, 0xFFFF, 0x7FFF):
        patch(image, block, word.to_bytes(2, "little"))
        volume = open_squashfs(image)
        with pytest.raises(CorruptImage, match=r"length|outside"):
            list(volume.readdir(volume.root_ino))


def test_huge_claimed_file_size(image: Path) -> None:
    size = 0xFFFFFF01
    set_inode(image, "big.bin", "file_size", size)
    volume = open_squashfs(image)
    big = path_ino(volume, "big.bin")
    assert volume.getattr(big).size == size
    assert volume.read(big, 0, 50) == pattern(300_000, 3)[:50]
    started = time.monotonic()
    with pytest.raises(CorruptImage):
        volume.read(big, size - 100, 100)
    assert time.monotonic() - started < 5
    assert kernel_errno(image, lambda mnt: os.stat(mnt / "big.bin").st_size == size) == 0


def test_negative_extended_file_size(image: Path) -> None:
    set_inode(image, "x.txt", "file_size", 1 << 63)
    volume = open_squashfs(image)
    with pytest.raises(CorruptImage, match="negative"):
        volume.getattr(path_ino(volume, "x.txt"))
    assert volume.read(path_ino(volume, "a.txt"), 0, 10) == b"alpha\n"
    assert kernel_errno(image, lambda mnt: os.stat(mnt / "x.txt")) == errno.EINVAL


def test_fragment_index_out_of_range(image: Path) -> None:
    fragments = open_squashfs(image).sb.fragments
    set_inode(image, "a.txt", "fragment", fragments + 5)
    volume = open_squashfs(image)
    with pytest.raises(CorruptImage, match="fragment"):
        volume.getattr(path_ino(volume, "a.txt"))
    assert volume.read(path_ino(volume, "b.txt"), 0, 10) == b"bravo\n"
    assert kernel_errno(image, lambda mnt: os.stat(mnt / "a.txt")) == errno.EIO


def test_fragment_tail_outside_its_block(image: Path) -> None:
    set_inode(image, "a.txt", "offset", BLOCK - 2)
    volume = open_squashfs(image)
    with pytest.raises(CorruptImage, match="outside its"):
        volume.read(path_ino(volume, "a.txt"), 0, 10)


# -- inodes ------------------------------------------------------------------------------------

INODE_DAMAGE: dict[str, tuple[str, str, int, str]] = {
    "number 0": ("a.txt", "inode_number", 0, "inode number 0"),
    "type 15": ("a.txt", "inode_type", 15, "Unknown inode type 15"),
    "type bits in mode": ("a.txt", "mode", stat.S_IFREG | 0o644, "file type bits"),
    "uid index": ("a.txt", "uid", 200, "id table entry 200"),
    "symlink size": ("link", "symlink_size", 5000, "Corrupted symlink"),
    "xattr id": ("x.txt", "xattr", 1000, "xattr id table entry 1000"),
    "number changed": ("a.txt", "inode_number", 999, "has number 999"),
}


@pytest.mark.parametrize("name", list(INODE_DAMAGE))
def test_inode_damage(image: Path, name: str) -> None:
    path, field, value, reason = INODE_DAMAGE[name]
    set_inode(image, path, field, value)
    volume = open_squashfs(image)
    ino = path_ino(volume, path)
    with pytest.raises(CorruptImage, match=reason):
        volume.getattr(ino)
    assert volume.read(path_ino(volume, "b.txt"), 0, 10) == b"bravo\n"
    assert len(list(volume.readdir(volume.root_ino))) == 8
    if name not in ("number changed", "uid index", "xattr id"):
        assert kernel_errno(image, lambda mnt: os.lstat(mnt / path)) in (errno.EIO, errno.EINVAL)


# -- directories -------------------------------------------------------------------------------


def set_listing(image: Path, path: str, structure: str, field: str, value: int) -> None:
    """Patch the first header of ``path``'s listing, or its first entry."""
    volume = open_squashfs(image)
    offset = listing_offset(volume, path)
    layout = DIR_HEADER if structure == "header" else DIR_ENTRY
    if structure == "entry":
        offset += DIR_HEADER.size
    size = layout.size_of(field)
    patch(image, offset + layout.offset_of(field), value.to_bytes(size, "little"))


@pytest.mark.parametrize(
    ("structure", "field", "value", "reason"),
    [
        ("header", "count", 300, "header of 301 entries"),
        ("entry", "size", 300, "name size 301"),
        ("entry", "type", 9, "type 9"),
    ],
)
def test_listing_damage(image: Path, structure: str, field: str, value: int, reason: str) -> None:
    set_listing(image, "d", structure, field, value)
    volume = open_squashfs(image)
    d = path_ino(volume, "d")
    with pytest.raises(CorruptImage, match=reason):
        list(volume.readdir(d))
    with pytest.raises(CorruptImage, match=reason):
        volume.lookup(d, b"q")
    assert volume.read(path_ino(volume, "a.txt"), 0, 10) == b"alpha\n"


def test_name_with_a_slash(image: Path) -> None:
    volume = open_squashfs(image)
    name_at = listing_offset(volume, "d") + DIR_HEADER.size + DIR_ENTRY.size
    assert read(image, name_at, 1) == b"p"
    patch(image, name_at, b"/")
    volume = open_squashfs(image)
    with pytest.raises(CorruptImage, match="invalid entry name"):
        list(volume.readdir(path_ino(volume, "d")))
    assert volume.lookup(path_ino(volume, "d"), b"q")


def test_directory_containing_itself(image: Path) -> None:
    """An entry of d that is d: a cycle the driver shows without looping."""
    volume = open_squashfs(image)
    d = path_ino(volume, "d")
    ref = volume._refs[d]
    set_listing(image, "d", "header", "start_block", ref >> 16)
    set_listing(image, "d", "header", "inode_number", d)
    set_listing(image, "d", "entry", "offset", ref & 0xFFFF)
    set_listing(image, "d", "entry", "inode_number", 0)
    set_listing(image, "d", "entry", "type", 1)
    volume = open_squashfs(image)
    d = path_ino(volume, "d")
    assert volume.lookup(d, b"p") == d
    assert volume.lookup(volume.lookup(d, b"p"), b"p") == d
    try:  # q and r now have made-up numbers, which may clash with known ones
        names = [e.name for e in volume.readdir(d)]
    except CorruptImage:
        return
    assert names == [b"p", b"q", b"r"]


def test_listing_running_past_its_end(image: Path) -> None:
    set_inode(image, "d", "file_size", 0xFFFF)
    volume = open_squashfs(image)
    started = time.monotonic()
    with pytest.raises(CorruptImage):
        list(volume.readdir(path_ino(volume, "d")))
    assert time.monotonic() - started < 5


def test_symlink_target_read_when_asked(image: Path) -> None:
    """A basic symlink's target is read by readlink, as the kernel does: stat works."""
    set_inode(image, "link", "symlink_size", 4096)
    volume = open_squashfs(image)
    link = path_ino(volume, "link")
    assert volume.getattr(link).size == 4096
    try:  # runs on into the following inodes, or off the end of the table
        target = volume.readlink(link)
    except CorruptImage:
        return
    assert target.startswith(b"a.txt") and len(target) <= 4095


# -- any damage --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_seed(base: Path) -> Seed:
    """The base image as a fuzzing seed: its tables are uncompressed, so random bytes
    there reach the parsers of inodes, listings, ids and xattrs directly."""
    return make_seed("squashfs-corrupt-base", base.read_bytes())


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_random_damage_raises_only_driver_errors(base_seed: Seed, data: st.DataObject) -> None:
    """Random bytes in the metadata: only driver errors, in bounded time and memory
    (the property of tests/test_fuzz_library.py, on this file's base image)."""
    damage = data.draw(byte_mutations(base_seed, max_size=6), label="damage")
    check_image(apply(base_seed, damage), "squashfs")
