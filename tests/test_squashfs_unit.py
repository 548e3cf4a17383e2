"""The squashfs driver against the kernel: the same images, through the library and a loop mount.

One source tree (files of many sizes, sparse files, hard links, every inode type, a
directory big enough for an index, xattrs in every namespace with shared and big values,
large ids, extreme mtimes) is made into an image per variant: each compressor, the
uncompressed-everything options, fragment policies, 4 KiB and 1 MiB blocks, no xattrs,
all-root, xz with a BCJ filter, and a tar stream through sqfstar.  Every entry the
library shows is compared with what the kernel's read-only loop mount of the same image
shows: listing order, names, inode numbers, modes, owners, sizes, link counts, device
numbers, st_blocks, times in ns, contents, symlink targets, xattrs, and statfs.

The kernel refuses legacy lzma images; that variant is compared with the kernel's mount
of the gzip image of the same tree (which differs only in compressed bytes).
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.base import NoSuchAttribute, StatFs
from drivers.squashfs import SquashfsVolume
from drivers.squashfs.directory import LISTING_START
from drivers.squashfs.file import CHUNK
from drivers.squashfs.layout import LZMA_COMPRESSION, SQUASHFS_LDIR_TYPE, SQUASHFS_LREG_TYPE
from tests.support.kernel import kernel_mount
from tests.test_squashfs_unit_helpers import (
    BIG_DIR_ENTRIES,
    BIG_VALUE,
    can_build,
    compare_tree,
    make_tree,
    mksquashfs,
    open_squashfs,
    path_ino,
    sqfstar,
)

pytestmark = pytest.mark.skipif(not can_build(), reason="needs root, mksquashfs and loop devices")


@dataclass(frozen=True)
class Variant:
    options: tuple[str, ...] = ()
    tar: bool = False  # built by sqfstar from a tar stream
    kernel_twin: str | None = None  # compare with this variant's kernel mount instead


VARIANTS: dict[str, Variant] = {
    "gzip": Variant(("-comp", "gzip")),
    "xz": Variant(("-comp", "xz")),
    "gzip-options": Variant(
        ("-Xcompression-level", "1", "-Xwindow-size", "10", "-no-sparse", "-no-duplicates")
    ),
    "lzo": Variant(("-comp", "lzo", "-Xalgorithm", "lzo1x_999", "-Xcompression-level", "9")),
    "lz4": Variant(("-comp", "lz4", "-Xhc")),
    "zstd": Variant(("-comp", "zstd", "-Xcompression-level", "19")),
    "lzma": Variant(("-comp", "lzma"), kernel_twin="gzip"),
    "uncompressed": Variant(("-noI", "-noD", "-noF", "-noX")),
    "no-fragments": Variant(("-no-fragments",)),
    "always-fragments": Variant(("-always-use-fragments",)),
    "4k-blocks": Variant(("-b", "4K")),
    "1m-blocks": Variant(("-b", "1M", "-comp", "zstd")),
    "no-xattrs": Variant(("-no-xattrs",)),
    "all-root": Variant(("-all-root",)),
    "xz-bcj": Variant(("-comp", "xz", "-Xbcj", "x86", "-Xdict-size", "50%")),
    "sqfstar": Variant(("-comp", "gzip"), tar=True),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("squashfs-tree") / "src"
    make_tree(root)
    return root


@pytest.fixture(scope="module")
def images(tree: Path) -> dict[str, Path]:
    """Every variant's image, built once (lazily, by ``image_of``)."""
    return {}


def image_of(images: dict[str, Path], tree: Path, name: str) -> Path:
    if name not in images:
        variant = VARIANTS[name]
        target = tree.parent / f"{name}.img"
        build = sqfstar if variant.tar else mksquashfs
        images[name] = build(tree, target, *variant.options)
    return images[name]


def kernel_statfs(mnt: Path) -> tuple[int, ...]:
    sv = os.statvfs(mnt)
    return (sv.f_bsize, sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files, sv.f_ffree, sv.f_namemax)


def library_statfs(fs: StatFs) -> tuple[int, ...]:
    return (
        fs.block_size,
        fs.blocks,
        fs.blocks_free,
        fs.blocks_available,
        fs.files,
        fs.files_free,
        fs.name_max,
    )


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_kernel(images: dict[str, Path], tree: Path, name: str) -> None:
    variant = VARIANTS[name]
    image = image_of(images, tree, name)
    volume = open_squashfs(image)
    oracle = image_of(images, tree, variant.kernel_twin) if variant.kernel_twin else image
    with kernel_mount(oracle, "squashfs") as mnt:
        assert compare_tree(volume, mnt) > BIG_DIR_ENTRIES
        if variant.kernel_twin is None:
            assert library_statfs(volume.statfs()) == kernel_statfs(mnt)
    check_variant_specifics(name, volume)


def check_variant_specifics(name: str, volume: SquashfsVolume) -> None:
    """Make sure each variant exercised what it is there for."""
    sb = volume.sb
    assert volume.has_xattrs == (name != "no-xattrs")
    if name == "lzma":
        assert sb.raw.compression == LZMA_COMPRESSION
        fs = volume.statfs()  # the kernel cannot say: squashfs_statfs's formula
        assert fs.blocks == ((sb.bytes_used - 1) >> sb.block_log) + 1
        assert (fs.files, fs.name_max, fs.blocks_free) == (sb.inodes, 256, 0)
    if name == "4k-blocks":
        huge = volume.inodes.read(volume._refs[path_ino(volume, "huge-sparse.bin")])
        assert volume.files.block_count(huge) > 2 * CHUNK, "wanted several block list chunks"
    if name == "uncompressed":
        noi, nod, nof, nox = 1 << 0, 1 << 1, 1 << 3, 1 << 8
        assert sb.flags & (noi | nod | nof | nox) == noi | nod | nof | nox
    if name == "no-fragments":
        assert volume.tables.fragments is None
    if name in ("gzip-options", "lzo", "lz4", "xz-bcj"):
        assert sb.comp_options is not None
    if name == "all-root":
        assert volume.getattr(path_ino(volume, "owned")).uid == 0


# -- behaviour beyond the kernel comparison -------------------------------------------------


@pytest.fixture(scope="module")
def volume(images: dict[str, Path], tree: Path) -> SquashfsVolume:
    return open_squashfs(image_of(images, tree, "gzip"))


def test_inode_types_exercised(volume: SquashfsVolume) -> None:
    """The tree yields both inode forms where it matters: extended files and directories."""
    types = {
        name: volume.inodes.read(volume._refs[path_ino(volume, name)]).inode_type
        for name in ("size-1", "bigdir", "sparse.bin", "dir")
    }
    assert types["size-1"] == SQUASHFS_LREG_TYPE  # xattrs
    assert types["sparse.bin"] == SQUASHFS_LREG_TYPE  # sparse
    assert types["bigdir"] == SQUASHFS_LDIR_TYPE
    bigdir = volume.inodes.read(volume._refs[path_ino(volume, "bigdir")])
    assert bigdir.index_count > 3, "wanted a directory index"


def test_readdir_resumes_at_every_offset(volume: SquashfsVolume) -> None:
    bigdir = path_ino(volume, "bigdir")
    full = list(volume.readdir(bigdir))
    assert len(full) == BIG_DIR_ENTRIES + 2
    assert all(a.next_offset < b.next_offset for a, b in itertools.pairwise(full))
    assert full[0].next_offset > LISTING_START
    for i in (*range(0, len(full), 37), len(full) - 2, len(full) - 1):
        assert list(volume.readdir(bigdir, full[i].next_offset)) == full[i + 1 :]
    assert list(volume.readdir(bigdir, 1)) == full  # below the first entry: from the start


def test_lookup_through_the_index(volume: SquashfsVolume) -> None:
    bigdir = path_ino(volume, "bigdir")
    for entry in volume.readdir(bigdir):
        assert volume.lookup(bigdir, entry.name) == entry.ino
    for missing in (b"entry-0500", b"a", b"zzz", b"\xff", b"entry-9999", b"\xc3"):
        with pytest.raises(FileNotFoundError):
            volume.lookup(bigdir, missing)
    with pytest.raises(FileNotFoundError):
        volume.lookup(bigdir, b"x" * 257)


def test_wrong_types(volume: SquashfsVolume) -> None:
    file_ino = path_ino(volume, "size-100")
    with pytest.raises(NotADirectoryError):
        volume.lookup(file_ino, b"x")
    with pytest.raises(NotADirectoryError):
        list(volume.readdir(file_ino))
    with pytest.raises(IsADirectoryError):
        volume.read(path_ino(volume, "dir"), 0, 10)
    with pytest.raises(NoSuchAttribute):
        volume.getxattr(path_ino(volume, "size-1"), b"user.nothing")
    with pytest.raises(NoSuchAttribute):
        volume.getxattr(path_ino(volume, "size-1"), b"system.posix_acl_access")
    with pytest.raises(NoSuchAttribute):
        volume.getxattr(path_ino(volume, "size-0"), b"user.comment")


def test_dot_and_dotdot(volume: SquashfsVolume) -> None:
    sub = path_ino(volume, "dir/sub")
    assert volume.lookup(sub, b".") == sub
    assert volume.lookup(sub, b"..") == path_ino(volume, "dir")
    assert volume.lookup(volume.root_ino, b"..") == volume.root_ino


def test_reads_at_any_offset(volume: SquashfsVolume, tree: Path) -> None:
    rng = random.Random(1)
    for name in ("size-1M-plus", "sparse.bin", "random.bin", "size-131073"):
        ino = path_ino(volume, name)
        expected = (tree / name).read_bytes()
        for _ in range(40):
            offset = rng.randrange(len(expected) + 10)
            size = rng.choice((1, 100, 4096, 131072, 300_000))
            assert volume.read(ino, offset, size) == expected[offset : offset + size]
    assert volume.read(path_ino(volume, "size-0"), 0, 100) == b""


def test_xattr_values(volume: SquashfsVolume) -> None:
    assert volume.getxattr(path_ino(volume, "size-4096"), b"user.big") == BIG_VALUE
    shared = [volume.getxattr(path_ino(volume, n), b"user.shared") for n in ("owned", "size-4097")]
    assert shared == [b"the same value on three files"] * 2
    assert volume.listxattr(path_ino(volume, "size-0")) == []


def test_probe(images: dict[str, Path], tree: Path) -> None:
    from drivers.base import BlockReader

    fd = os.open(image_of(images, tree, "gzip"), os.O_RDONLY)
    try:
        assert SquashfsVolume.probe(BlockReader(fd))
    finally:
        os.close(fd)
