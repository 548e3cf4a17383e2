"""Hostile images: one fuzzing framework for the ext4, squashfs and FAT drivers.

The promise every driver makes (:mod:`drivers.base`) is that no image, however crafted,
gets anything but its own errors out of it, in bounded time and memory.  This module
checks that promise the same way for all three formats:

* a :class:`Seed` is a small real image made by the public tools (``mke2fs -d``,
  ``mksquashfs``, ``mkfs.fat`` + ``mcopy``), built once per session and cached, with
  where its metadata is (byte *regions*) and its on-disk *fields* (offset, width, what
  it is), located through the driver's own parsed structures and the ``construct``
  declarations of ``drivers/*/layout.py`` -- so a mutation hits what the parser reads,
  not file data it never interprets;
* hypothesis strategies turn a seed into lists of mutations: :func:`byte_mutations`
  (flips, sets and splices of bytes inside metadata regions, the shape of random
  damage) and :func:`field_mutations` (a field set to 0, all ones, its value plus or
  minus one, a value pointing back at its own structure, a huge value: the shape of a
  crafted image).  On a metadata_csum ext4 seed a field mutation re-seals the checksum
  of the structure it belongs to, as an attacker would, so the value reaches the
  parser instead of being refused by the checksum;
* :func:`apply` makes the mutated image and :func:`check_image` opens it from a memfd
  through the registry, walks all of it with :func:`exercise` and enforces the limits
  (:data:`TIME_LIMIT`, :data:`MEMORY_BUDGET`).  Anything but the allowed errors
  propagates: that is a driver bug.

``tests/test_fuzz_library.py`` runs a bounded, derandomized property per format,
``tests/test_fuzz_mount.py`` the same mutations through a real FUSE mount, and
``scripts/fuzz.py`` (``make fuzz``) runs the library property open-ended.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import random
import resource
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import construct
from hypothesis import strategies as st

from drivers.base import (
    BlockReader,
    CorruptImage,
    NoSuchAttribute,
    Unsupported,
    Volume,
)
from drivers.ext4.checksum import ext4_chksum
from drivers.ext4.directory import DIRENT, DX_COUNTLIMIT, DX_ENTRY, DX_ROOT_INFO, DX_TAIL
from drivers.ext4.extents import EXT4_EXT_MAGIC, EXTENT, EXTENT_HEADER, EXTENT_IDX
from drivers.ext4.group import GROUP_DESC, desc_checksum, descriptor_block
from drivers.ext4.inode import EXT4_INDEX_FL, INODE, inode_checksum, is_fast_symlink
from drivers.ext4.superblock import (
    COMPAT_HAS_JOURNAL,
    RO_COMPAT_GDT_CSUM,
    SUPERBLOCK,
    SUPERBLOCK_OFFSET,
    Superblock,
    superblock_checksum,
)
from drivers.ext4.volume import Ext4Volume
from drivers.ext4.xattr import XATTR_ENTRY, XATTR_HEADER, XATTR_IBODY_HEADER, block_checksum
from drivers.fat import FatVolume
from drivers.fat.layout import BPB, BPB16, BPB32, DIR_ENTRY, FSINFO, LDIR_ENTRY
from drivers.layout import Layout
from drivers.registry import open_volume
from drivers.squashfs import SquashfsVolume
from drivers.squashfs.layout import DIR_ENTRY as SQ_DIR_ENTRY
from drivers.squashfs.layout import (
    DIR_HEADER,
    DIR_INDEX,
    FRAGMENT_ENTRY,
    INODE_LAYOUTS,
    SQUASHFS_INVALID_BLK,
    SQUASHFS_INVALID_FRAG,
    SQUASHFS_LDIR_TYPE,
    SQUASHFS_METADATA_SIZE,
    SUPER_BLOCK,
    XATTR_ID,
    XATTR_ID_TABLE,
)
from tests.support.commands import run
from tests.support.images import (
    FAKE_TIME,
    OptionSet,
    SquashfsOptionSet,
    build_ext,
    build_squashfs,
)

__all__ = [
    "ALLOWED",
    "FORMATS",
    "MEMORY_BUDGET",
    "RUNAWAY_CAP",
    "SEEDS",
    "TIME_LIMIT",
    "Field",
    "Flip",
    "Mutation",
    "Outcome",
    "Seed",
    "SetByte",
    "SetField",
    "Splice",
    "Summary",
    "apply",
    "byte_mutation",
    "byte_mutations",
    "check_image",
    "exercise",
    "field_mutation",
    "field_mutations",
    "intact_files",
    "make_seed",
    "mutations",
    "pristine_files",
    "seed",
    "seed_names",
    "seed_unavailable",
    "trimmed",
    "volume_of",
]

#: What a driver may raise on any image (drivers/base.py); anything else is a bug.
ALLOWED: tuple[type[BaseException], ...] = (
    CorruptImage,
    Unsupported,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    NoSuchAttribute,
)

#: Wall time one mutated image may take, open and walk together.  The seeds are a few
#: MiB and a pristine walk takes well under a second, so this only trips on loops and
#: on work out of proportion to the image, even on a loaded 2-core CI machine.
TIME_LIMIT = 10.0
#: How much the peak resident size may grow while one mutated image is opened and
#: walked: the drivers' caches are bounded at a few MiB each and reads are 64 KiB
#: here, so 64 MiB is generous for a sane driver and far below what a size taken on
#: trust (a 4 GiB "directory", a table of 2^32 entries) would cost.
MEMORY_BUDGET = 64 << 20
#: Address space an image may take before allocations fail (RLIMIT_AS over the size
#: before it): a guard for the machine, see :func:`_memory_bound`.
RUNAWAY_CAP = 1 << 30

#: Bounds of one walk, so that a corrupt image listing loops or millions of names
#: still ends: the seeds hold a few hundred inodes.
MAX_INODES = 4000
MAX_ENTRIES_PER_DIR = 5000
MAX_XATTRS = 64
READ_SIZE = 1 << 16

MiB = 1 << 20
NS = 1_000_000_000

#: An entry of squashfs's id table (declared here: the driver reads it as an array).
ID_ENTRY = Layout("squashfs_id", construct.Struct("id" / construct.Int32ul))

FORMATS = ("ext4", "squashfs", "fat")


# --------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Field:
    """One integer field of an on-disk structure in a seed image.

    ``unit`` is what one step of the value means in bytes (a block number counts in
    blocks, a byte offset in bytes) and ``self_value`` the value that points the field
    back at the structure holding it (its own block, cluster or metadata block): the
    cheapest loop a crafted image can make.  ``seal`` recomputes the checksum of the
    structure after a change (metadata_csum ext4), so the value reaches the parser.
    """

    offset: int
    width: int
    description: str
    kind: str = "field"
    unit: int = 1
    self_value: int = 0
    seal: Callable[[bytearray], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Seed:
    """A pristine image of one format and where its metadata is."""

    name: str
    format: str  # "ext4", "squashfs" or "fat"
    fs_type: str  # what the registry calls it (open_volume's fs_type)
    image: bytes = field(repr=False)
    regions: tuple[tuple[int, int], ...] = field(repr=False)  # (offset, length)
    fields: tuple[Field, ...] = field(repr=False)

    @functools.cached_property
    def kinds(self) -> dict[str, tuple[int, ...]]:
        """Field indexes by kind of structure, so that a few big structures (a directory
        of 120 entries) do not drown the rare ones (the superblock) when sampling."""
        out: dict[str, list[int]] = {}
        for index, f in enumerate(self.fields):
            out.setdefault(f.kind, []).append(index)
        return {kind: tuple(indexes) for kind, indexes in sorted(out.items())}


@dataclass(frozen=True)
class _Recipe:
    format: str
    build: Callable[[Path, Path], Path]  # (source tree, image path) -> image
    description: str


def _ext_recipe(option_set: OptionSet, size: int) -> Callable[[Path, Path], Path]:
    def build(src: Path, image: Path) -> Path:
        return build_ext(src, image, option_set, size=size, exact=False)

    return build


def _squashfs_recipe(option_set: SquashfsOptionSet) -> Callable[[Path, Path], Path]:
    def build(src: Path, image: Path) -> Path:
        return build_squashfs(src, image, option_set)

    return build


FAT_ENV = {
    "MTOOLS_SKIP_CHECK": "1",
    "MTOOLS_NO_VFAT": "0",
    "TZ": "UTC",
    "LC_ALL": "C.UTF-8",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
}


def _fat_recipe(size_kib: int, *options: str) -> Callable[[Path, Path], Path]:
    def build(src: Path, image: Path) -> Path:
        image.unlink(missing_ok=True)
        run("mkfs.fat", "--invariant", "-i", "5eed5eed", "-C", *options, image, str(size_kib))
        sources = sorted(src.iterdir())
        run("mcopy", "-i", image, "-s", "-m", *sources, "::/", env=FAT_ENV)
        image.write_bytes(trimmed(image.read_bytes()))
        return image

    return build


def trimmed(data: bytes) -> bytes:
    """A FAT image cut after its last cluster in use; any other image as it is.

    The driver, like the kernel, never reads a free cluster, and an image whose data
    region is cut short still mounts (tests/test_fat_unit_corrupt.py); so a FAT seed
    keeps only what is used: an example of the FAT32 seed (FAT32 needs 65525 clusters,
    32 MiB at 512 bytes each) then copies about 1 MiB instead of 34.
    """
    with volume_of(data) as volume:
        if not isinstance(volume, FatVolume):
            return data
        g = volume.geometry
    fat = data[g.fat_offset : g.fat_offset + g.fat_bytes]
    last = 2
    for cluster in range(2, g.max_cluster):
        if g.fat_bits == 12:
            at = cluster * 3 // 2
            raw = fat[at] | fat[at + 1] << 8
            value = raw >> 4 if cluster & 1 else raw & 0xFFF
        else:
            width = g.fat_bits // 8
            value = int.from_bytes(fat[cluster * width : (cluster + 1) * width], "little")
        if value & 0x0FFFFFFF:
            last = cluster
    return data[: g.cluster_offset(last + 1)]


_E2FSCK_D = (("e2fsck", "-fyD", "{image}"),)
#: Seeds by name.  Every image is a few MiB with 1 KiB blocks and 1 MiB groups (ext),
#: small clusters (FAT), so that an example costs milliseconds and still has several
#: groups, deep extent trees, indexed directories, multi-block files and directories.
SEEDS: dict[str, _Recipe] = {
    "ext4": _Recipe(
        "ext4",
        _ext_recipe(
            OptionSet(
                "fuzz-ext4",
                "ext4",
                ("-O", "^has_journal,^metadata_csum,inline_data", "-g", "1024"),
                block_size=1024,
                post=_E2FSCK_D,
            ),
            4 * MiB,
        ),
        "extents, flex_bg, inline data, htree; no checksums: every byte reaches the parser",
    ),
    "ext4-csum": _Recipe(
        "ext4",
        _ext_recipe(
            OptionSet(
                "fuzz-ext4-csum",
                "ext4",
                ("-O", "metadata_csum,64bit", "-J", "size=1", "-g", "1024"),
                block_size=1024,
                post=_E2FSCK_D,
            ),
            4 * MiB,
        ),
        "metadata_csum, 64bit, a journal: byte damage meets checksums, fields are re-sealed",
    ),
    "ext2": _Recipe(
        "ext4",
        _ext_recipe(
            OptionSet("fuzz-ext2", "ext2", ("-g", "1024"), block_size=1024, post=_E2FSCK_D),
            4 * MiB,
        ),
        "ext2: indirect blocks (single and double), htree",
    ),
    "squashfs-gzip": _Recipe(
        "squashfs",
        _squashfs_recipe(SquashfsOptionSet("fuzz-sq-gzip", ("-comp", "gzip", "-noI", "-noX"))),
        "gzip data, 128 KiB blocks, metadata stored uncompressed so fields can be patched",
    ),
    "squashfs-4k": _Recipe(
        "squashfs",
        _squashfs_recipe(
            SquashfsOptionSet("fuzz-sq-4k", ("-comp", "gzip", "-b", "4K", "-noI", "-noX"))
        ),
        "4 KiB blocks: long block lists, many fragments",
    ),
    "squashfs-packed": _Recipe(
        "squashfs",
        _squashfs_recipe(SquashfsOptionSet("fuzz-sq-packed", ("-comp", "gzip"))),
        "everything gzip-compressed: byte damage lands in compressed metadata blocks",
    ),
    "fat12": _Recipe("fat", _fat_recipe(2048, "-F", "12", "-s", "4"), "FAT12, 2 KiB clusters"),
    "fat16": _Recipe("fat", _fat_recipe(8192, "-F", "16", "-s", "1"), "FAT16, 512 B clusters"),
    "fat32": _Recipe(
        "fat",
        _fat_recipe(34 * 1024, "-F", "32", "-s", "1"),
        "FAT32 (the fewest clusters FAT32 allows), FSInfo, backup boot sector",
    ),
}


def seed_names(fmt: str) -> tuple[str, ...]:
    """The seeds of one format (``ext4``, ``squashfs``, ``fat``)."""
    return tuple(name for name, recipe in SEEDS.items() if recipe.format == fmt)


_TOOLS = {
    "ext4": ("mke2fs", "e2fsck"),
    "squashfs": ("mksquashfs",),
    "fat": ("mkfs.fat", "mcopy"),
}


def seed_unavailable(fmt: str) -> str | None:
    """Why seeds of ``fmt`` cannot be built here (root makes owners and devices), or None."""
    if os.geteuid() != 0:
        return "building seed images needs root (owners, device nodes, trusted xattrs)"
    missing = [tool for tool in _TOOLS[fmt] if shutil.which(tool) is None]
    return f"missing tools: {', '.join(missing)}" if missing else None


@functools.cache
def seed(name: str) -> Seed:
    """The seed called ``name`` (see :data:`SEEDS`), built on first use."""
    recipe = SEEDS[name]
    with tempfile.TemporaryDirectory(prefix=f"fuzz-seed-{name}-") as tmp_name:
        tmp = Path(tmp_name)
        src = build_source(tmp / "src", fat=recipe.format == "fat")
        image = recipe.build(src, tmp / "image")
        return make_seed(name, image.read_bytes())


def make_seed(name: str, data: bytes) -> Seed:
    """Describe an existing image as a seed: its format, metadata regions and fields."""
    fd = _memfd(data)
    try:
        volume = open_volume(BlockReader(fd))
        if isinstance(volume, Ext4Volume):
            fmt, regions, fields = "ext4", *_ext4_layout(volume, data)
        elif isinstance(volume, SquashfsVolume):
            fmt, regions, fields = "squashfs", *_squashfs_layout(volume, data)
        elif isinstance(volume, FatVolume):
            fmt, regions, fields = "fat", *_fat_layout(volume, data)
        else:  # pragma: no cover - a new driver needs its layout here
            raise TypeError(f"no seed layout for {type(volume).__name__}")
        merged = _merge(regions, len(data))
        return Seed(name, fmt, volume.fs_type, data, merged, tuple(fields))
    finally:
        os.close(fd)


def _merge(regions: Iterable[tuple[int, int]], size: int) -> tuple[tuple[int, int], ...]:
    """Regions clipped to the image, sorted, with exact duplicates dropped."""
    out = set()
    for offset, length in regions:
        end = min(offset + length, size)
        if 0 <= offset < end:
            out.add((offset, end - offset))
    return tuple(sorted(out))


# --------------------------------------------------------------------------- the source tree


def build_source(root: Path, *, fat: bool = False) -> Path:
    """The small tree every seed holds: one of each thing the drivers must parse.

    Regular files of 0, 50, 4096, 40 000 and 300 000 bytes (inline, direct, indirect or
    many blocks, fragments), nested and empty directories, a directory of 120 entries
    (several blocks: an htree with e2fsck -D, a long FAT chain) and one of 300 long
    names (a squashfs directory index), and except on FAT: a
    sparse file, a file of 40 extents (an extent tree of depth 1 at 1 KiB blocks), a
    hard link, fast, slow and dangling symlinks, devices, a fifo, a socket, xattrs in
    the inode and in a block, an ACL and an owner.  Contents and times are fixed, so
    a seed comes out the same in every session.
    """
    rng = random.Random(20240607)
    root.mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_bytes(b"hello, fuzz\n")
    (root / "fifty.bin").write_bytes(bytes(range(50)))
    (root / "block.bin").write_bytes(bytes((i * 7) & 0xFF for i in range(4096)))
    (root / "multi.bin").write_bytes(rng.randbytes(40_000))
    (root / "text.txt").write_bytes(b"".join(b"line %06d of the text\n" % i for i in range(13_000)))
    (root / "dir" / "sub" / "deeper").mkdir(parents=True)
    (root / "dir" / "sub" / "deeper" / "leaf.txt").write_bytes(b"leaf\n")
    (root / "dir" / "emptydir").mkdir()
    big = root / "bigdir"
    big.mkdir()
    for i in range(120):
        (big / f"entry-{i:05d}-{'n' * (i % 23)}").write_bytes(b"%d\n" % i)
    wide = root / "wide"  # 20 KiB of names: squashfs indexes it, ext4 hashes it deeper
    wide.mkdir()
    for i in range(300):
        (wide / f"{i:04d}-{'w' * 55}").write_bytes(b"")
    if not fat:
        _unix_only(root, rng)
    _fix_times(root)
    return root


def _unix_only(root: Path, rng: random.Random) -> None:
    with open(root / "sparse.bin", "wb") as f:
        f.seek(100_000)
        f.write(b"middle" * 1000)
        f.truncate(1_000_000)
    with open(root / "fragmented.bin", "wb") as f:
        for i in range(40):
            f.seek(i * 8192)
            f.write(bytes([i + 1]) * 1024)
    os.link(root / "small.txt", root / "dir" / "hardlink.txt")
    os.symlink("small.txt", root / "fast-link")
    os.symlink("/" + "y" * 200, root / "slow-link")
    os.symlink("does/not/exist", root / "dangling")
    os.mknod(root / "chr", 0o620 | stat.S_IFCHR, os.makedev(4, 64))
    os.mknod(root / "blk", 0o660 | stat.S_IFBLK, os.makedev(259, 70000))
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.fspath(root / "socket"))
    finally:
        sock.close()
    os.setxattr(root / "small.txt", "user.comment", b"a comment")
    os.setxattr(root / "small.txt", "trusted.t", b"\x00\x01binary")
    os.setxattr(root / "fifty.bin", "user.big", rng.randbytes(900))
    os.setxattr(root / "dir", "user.on-dir", b"dir value")
    acl = bytes.fromhex("0200000001000600ffffffff04000400ffffffff20000000ffffffff")
    os.setxattr(root / "block.bin", "system.posix_acl_access", acl)
    owned = root / "owned"
    owned.write_bytes(b"owned\n")
    os.chown(owned, 100_000, 200_000)
    os.chmod(owned, 0o4751)


def _fix_times(root: Path) -> None:
    """Every path's atime and mtime set to one fixed time, deepest first."""
    paths = sorted(root.rglob("*"), key=lambda p: -len(p.parts))
    when = FAKE_TIME * NS + 123_456_789
    for path in [*paths, root]:
        os.utime(path, ns=(when, when), follow_symlinks=False)


# --------------------------------------------------------------------------- locating fields


class _Collector:
    """Gathers the regions and fields of one image while its structures are walked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.regions: list[tuple[int, int]] = []
        self.fields: list[Field] = []

    def region(self, offset: int, length: int) -> None:
        self.regions.append((offset, length))

    def add(
        self,
        offset: int,
        width: int,
        description: str,
        kind: str,
        *,
        unit: int = 1,
        self_value: int = 0,
        seal: Callable[[bytearray], None] | None = None,
    ) -> None:
        if offset >= 0 and offset + width <= len(self.data) and width in (1, 2, 4, 8):
            self.fields.append(Field(offset, width, description, kind, unit, self_value, seal))

    def struct(
        self,
        layout: Layout,
        base: int,
        label: str,
        kind: str,
        *,
        only: Iterable[str] | None = None,
        skip: Iterable[str] = (),
        limit: int | None = None,
        unit: int = 1,
        self_value: int = 0,
        seal: Callable[[bytearray], None] | None = None,
    ) -> None:
        """Every integer field of ``layout`` whose origin is at ``base`` (a layout that
        continues another one, as FAT's BPB32, counts its offsets from the sector), or
        only those within the first ``limit`` bytes of the structure."""
        names = layout.names if only is None else tuple(only)
        skipped = set(skip)
        first = layout.offset_of(layout.names[0])
        for name in names:
            if name in skipped:
                continue
            offset = layout.offset_of(name)
            width = layout.size_of(name)
            if limit is not None and offset - first + width > limit:
                continue
            self.add(
                base + offset,
                width,
                f"{label} {name}",
                kind,
                unit=unit,
                self_value=self_value,
                seal=seal,
            )

    def u(self, offset: int, width: int) -> int:
        return int.from_bytes(self.data[offset : offset + width], "little")


# ----- ext2/3/4


def _ext4_layout(volume: Ext4Volume, data: bytes) -> tuple[list[tuple[int, int]], list[Field]]:
    """Superblock, group descriptors, inodes (with their extent trees, block maps,
    in-inode and block xattrs) and directory blocks (entries and htree index) of every
    inode the walk reaches."""
    c = _Collector(data)
    sb = volume.sb
    bs = sb.block_size
    csum = sb.metadata_csum
    c.region(SUPERBLOCK_OFFSET, 1024)
    c.struct(
        SUPERBLOCK,
        SUPERBLOCK_OFFSET,
        "superblock",
        "superblock",
        skip=("s_checksum",),
        unit=bs,
        self_value=SUPERBLOCK_OFFSET // bs,
        seal=functools.partial(_seal_ext4_superblock) if csum else None,
    )
    gd_sealed = csum or sb.has_ro_compat(RO_COMPAT_GDT_CSUM)
    for nr in range(sb.gdt_blocks):
        where = descriptor_block(sb, nr)
        c.region(where * bs, bs)
        for slot in range(min(sb.desc_per_block, sb.groups_count - nr * sb.desc_per_block)):
            group = nr * sb.desc_per_block + slot
            at = where * bs + slot * sb.desc_size
            c.struct(
                GROUP_DESC,
                at,
                f"group {group} descriptor",
                "group descriptor",
                skip=("bg_checksum",),
                limit=sb.desc_size,
                unit=bs,
                self_value=where,
                seal=functools.partial(_seal_ext4_desc, sb, group, at) if gd_sealed else None,
            )
    for group in range(sb.groups_count):
        c.region(
            volume.groups.inode_table[group] * bs, min(64, sb.inodes_per_group) * sb.inode_size
        )
    inodes = _reachable(volume)
    journal = sb.raw["s_journal_inum"]
    if sb.has_compat(COMPAT_HAS_JOURNAL) and isinstance(journal, int) and journal:
        inodes.append(journal)
    for ino in inodes:
        with contextlib.suppress(*ALLOWED):
            _ext4_inode(c, volume, ino)
    return c.regions, c.fields


def _reachable(volume: Volume) -> list[int]:
    """Inode numbers reachable from the root of a pristine volume, each once."""
    seen = [volume.root_ino]
    known = {volume.root_ino}
    stack = [volume.root_ino]
    while stack:
        for entry in volume.readdir(stack.pop()):
            if entry.ino in known:
                continue
            known.add(entry.ino)
            seen.append(entry.ino)
            if volume.getattr(entry.ino).is_dir:
                stack.append(entry.ino)
    return seen


def _ext4_inode(c: _Collector, volume: Ext4Volume, ino: int) -> None:
    sb = volume.sb
    bs = sb.block_size
    inode = volume._load(ino)
    group, index = divmod(ino - 1, sb.inodes_per_group)
    at = volume.groups.inode_table[group] * bs + index * sb.inode_size
    own_block = at // bs
    seal = functools.partial(_seal_ext4_inode, sb, ino, at) if sb.metadata_csum else None
    label = f"inode {ino}"
    c.struct(
        INODE,
        at,
        label,
        "inode",
        only=(
            "i_mode",
            "i_size_lo",
            "i_size_high",
            "i_links_count",
            "i_blocks_lo",
            "l_i_blocks_high",
            "i_flags",
            "i_file_acl_lo",
            "i_extra_isize",
        ),
        limit=sb.inode_size,
        unit=bs,
        self_value=own_block,
        seal=seal,
    )
    i_block = at + INODE.offset_of("i_block")
    if inode.inline:
        if inode.is_dir:
            c.add(
                i_block, 4, f"{label} inline parent", "directory entry", self_value=ino, seal=seal
            )
            _dirents(c, i_block + 4, 56, label + " inline", ino, bs, seal)
    elif inode.uses_extents:
        _extent_node(c, volume, i_block, 60, label, own_block, seal, inode.csum_seed)
    elif inode.is_reg or inode.is_dir or (inode.is_symlink and not is_fast_symlink(sb, inode)):
        for k in range(15):
            c.add(
                i_block + 4 * k,
                4,
                f"{label} i_block[{k}]",
                "block map",
                unit=bs,
                self_value=own_block,
                seal=seal,
            )
        for level, k in ((1, 12), (2, 13)):
            pointer = c.u(i_block + 4 * k, 4)
            if pointer:
                _indirect(c, pointer, level, f"{label} {'d' * (level - 1)}indirect", bs)
    if inode.file_acl:
        _xattr_block(c, sb, inode.file_acl, label)
    if sb.inode_size > 128 and inode.extra_isize:
        _xattr_entries(
            c,
            at + 128 + inode.extra_isize,
            at + sb.inode_size,
            label + " in-inode",
            seal,
            body=True,
        )
    if inode.is_dir and not inode.inline:
        mapper = volume._mapper(inode)
        blocks = min(8, (inode.size + bs - 1) // bs)
        indexed = bool(inode.flags & EXT4_INDEX_FL)
        for lblk in range(blocks):
            pblk = mapper(lblk)[0]
            if pblk < 0:
                continue
            c.region(pblk * bs, bs)
            _dir_block(c, sb, pblk, lblk, indexed, ino, inode.csum_seed)


def _extent_node(
    c: _Collector,
    volume: Ext4Volume,
    at: int,
    size: int,
    label: str,
    own_block: int,
    seal: Callable[[bytearray], None] | None,
    csum_seed: int,
    depth_budget: int = 5,
) -> None:
    bs = volume.sb.block_size
    magic, entries, _, depth, _ = EXTENT_HEADER.packer.unpack_from(c.data, at)
    if magic != EXT4_EXT_MAGIC:
        return
    c.struct(
        EXTENT_HEADER,
        at,
        f"{label} extent header",
        "extent",
        skip=("eh_generation",),
        seal=seal,
        self_value=depth + 1,
    )
    for k in range(min(entries, (size - 12) // 12)):
        entry = at + 12 + 12 * k
        if depth == 0:
            c.struct(
                EXTENT,
                entry,
                f"{label} extent {k}",
                "extent",
                unit=bs,
                self_value=own_block,
                seal=seal,
            )
            continue
        c.struct(
            EXTENT_IDX,
            entry,
            f"{label} extent index {k}",
            "extent",
            skip=("ei_unused",),
            unit=bs,
            self_value=own_block,
            seal=seal,
        )
        child = EXTENT_IDX.unpack_record(c.data, entry)
        block = child.ei_leaf_lo | child.ei_leaf_hi << 32
        if depth_budget and 0 < block * bs < len(c.data):
            c.region(block * bs, bs)
            child_seal = (
                functools.partial(_seal_ext4_extent_block, block * bs, bs, csum_seed)
                if volume.sb.metadata_csum
                else None
            )
            _extent_node(
                c,
                volume,
                block * bs,
                bs,
                f"{label} extent block {block}",
                block,
                child_seal,
                csum_seed,
                depth_budget - 1,
            )


def _indirect(c: _Collector, block: int, level: int, label: str, bs: int) -> None:
    """The first and last pointers of an indirect block, and of its first child."""
    at = block * bs
    if not 0 < at < len(c.data):
        return
    c.region(at, bs)
    count = bs // 4
    used = [k for k in range(count) if c.u(at + 4 * k, 4)]
    for k in sorted({0, 1, 2, 3, *(used[-1:] or [])}):
        c.add(
            at + 4 * k,
            4,
            f"{label} block {block} entry {k}",
            "block map",
            unit=bs,
            self_value=block,
        )
    if level > 1 and used:
        _indirect(c, c.u(at + 4 * used[0], 4), level - 1, label + " child", bs)


def _dirents(
    c: _Collector,
    at: int,
    size: int,
    label: str,
    dir_ino: int,
    bs: int,
    seal: Callable[[bytearray], None] | None,
) -> None:
    """Each record of a chain of ext4_dir_entry_2 (inode, rec_len, name_len, file_type)."""
    off = 0
    while off + 8 <= size:
        _, rec_len, name_len, _ = DIRENT.packer.unpack_from(c.data, at + off)
        name = bytes(c.data[at + off + 8 : at + off + 8 + name_len])
        c.struct(
            DIRENT,
            at + off,
            f"{label} entry {name!r} at {off}",
            "directory entry",
            self_value=dir_ino,
            seal=seal,
        )
        if rec_len < 12:
            break
        off += rec_len


def _dir_block(
    c: _Collector, sb: Superblock, pblk: int, lblk: int, indexed: bool, dir_ino: int, csum_seed: int
) -> None:
    bs = sb.block_size
    at = pblk * bs
    label = f"directory {dir_ino} block {lblk}"
    first_ino, first_len = DIRENT.packer.unpack_from(c.data, at)[:2]
    dx_count_at = None
    if indexed and lblk == 0:
        dx_count_at = at + 32
        c.struct(
            DX_ROOT_INFO,
            at + 24,
            f"{label} dx_root",
            "htree",
            skip=("reserved_zero",),
            self_value=0,
        )
    elif indexed and first_ino == 0 and first_len == bs:
        dx_count_at = at + 8
    seal = None
    if sb.metadata_csum:
        kind = "dx" if dx_count_at is not None else "leaf"
        seal = functools.partial(_seal_ext4_dir_block, at, bs, csum_seed, kind)
    if dx_count_at is None:
        _dirents(c, at, bs, label, dir_ino, bs, seal)
        return
    _dirents(c, at, 24 if lblk == 0 else 12, label, dir_ino, bs, seal)
    limit, count = DX_COUNTLIMIT.packer.unpack_from(c.data, dx_count_at)
    c.struct(DX_COUNTLIMIT, dx_count_at, f"{label} dx", "htree", seal=seal, self_value=count + 1)
    c.add(dx_count_at + 4, 4, f"{label} dx entry 0 block", "htree", self_value=lblk, seal=seal)
    for k in range(1, min(count, limit)):
        c.struct(
            DX_ENTRY,
            dx_count_at + 8 * k,
            f"{label} dx entry {k}",
            "htree",
            self_value=lblk,
            seal=seal,
        )


def _xattr_block(c: _Collector, sb: Superblock, block: int, label: str) -> None:
    bs = sb.block_size
    at = block * bs
    if not 0 < at < len(c.data):
        return
    c.region(at, bs)
    seal = (
        functools.partial(_seal_ext4_xattr_block, at, bs, block, sb.csum_seed)
        if sb.metadata_csum
        else None
    )
    c.struct(
        XATTR_HEADER,
        at,
        f"{label} xattr block {block}",
        "xattr",
        skip=("h_checksum",),
        unit=bs,
        self_value=block,
        seal=seal,
    )
    _xattr_entries(
        c, at + XATTR_HEADER.size, at + bs, f"{label} xattr block {block}", seal, body=False
    )


def _xattr_entries(
    c: _Collector,
    at: int,
    end: int,
    label: str,
    seal: Callable[[bytearray], None] | None,
    *,
    body: bool,
) -> None:
    if body:
        if c.u(at, 4) != 0xEA020000:
            return
        c.struct(XATTR_IBODY_HEADER, at, label, "xattr", seal=seal)
        at += 4
    k = 0
    while at + XATTR_ENTRY.size <= end and c.u(at, 4) and k < 32:
        entry = XATTR_ENTRY.unpack_record(c.data, at)
        c.struct(XATTR_ENTRY, at, f"{label} xattr entry {k}", "xattr", skip=("e_hash",), seal=seal)
        at += (XATTR_ENTRY.size + entry.e_name_len + 3) & ~3
        k += 1


def _put(image: bytearray, offset: int, width: int, value: int) -> None:
    image[offset : offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def _seal_ext4_superblock(image: bytearray) -> None:
    raw = bytes(image[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + 1024])
    _put(image, SUPERBLOCK_OFFSET + SUPERBLOCK.offset_of("s_checksum"), 4, superblock_checksum(raw))


def _seal_ext4_desc(sb: Superblock, group: int, at: int, image: bytearray) -> None:
    csum = desc_checksum(sb, group, bytes(image[at : at + sb.desc_size]))
    if csum is not None:
        _put(image, at + GROUP_DESC.offset_of("bg_checksum"), 2, csum)


def _seal_ext4_inode(sb: Superblock, ino: int, at: int, image: bytearray) -> None:
    raw = bytes(image[at : at + sb.inode_size])
    rec = INODE.unpack_record(raw + bytes(max(0, INODE.size - len(raw))))
    extra = rec.i_extra_isize if sb.inode_size > 128 else 0
    csum = inode_checksum(sb, ino, raw, rec.i_generation, extra)
    _put(image, at + INODE.offset_of("l_i_checksum_lo"), 2, csum)
    hi = INODE.offset_of("i_checksum_hi")
    if sb.inode_size > 128 and 128 + extra >= hi + 2:
        _put(image, at + hi, 2, csum >> 16)


def _seal_ext4_extent_block(at: int, bs: int, csum_seed: int, image: bytearray) -> None:
    emax = EXTENT_HEADER.packer.unpack_from(image, at)[2]
    tail = EXTENT_HEADER.size + emax * EXTENT.size
    if tail + 4 <= bs:
        _put(image, at + tail, 4, ext4_chksum(csum_seed, image[at : at + tail]))


def _seal_ext4_dir_block(at: int, bs: int, csum_seed: int, kind: str, image: bytearray) -> None:
    if kind == "leaf":
        _put(image, at + bs - 4, 4, ext4_chksum(csum_seed, image[at : at + bs - 12]))
        return
    first_len = DIRENT.packer.unpack_from(image, at)[1]
    count_at = 32 if first_len == 12 else 8
    limit, count = DX_COUNTLIMIT.packer.unpack_from(image, at + count_at)
    tail = count_at + limit * DX_ENTRY.size
    if tail + DX_TAIL.size > bs or count > limit:
        return
    csum = ext4_chksum(csum_seed, image[at : at + count_at + count * DX_ENTRY.size])
    csum = ext4_chksum(csum, image[at + tail : at + tail + 4])
    csum = ext4_chksum(csum, b"\0\0\0\0")
    _put(image, at + tail + 4, 4, csum)


def _seal_ext4_xattr_block(at: int, bs: int, block: int, csum_seed: int, image: bytearray) -> None:
    csum = block_checksum(bytes(image[at : at + bs]), block, csum_seed)
    _put(image, at + XATTR_HEADER.offset_of("h_checksum"), 4, csum)


# ----- squashfs


class _MetaStream:
    """Positions in a table of metadata blocks mapped back to image offsets.

    A structure in a metadata stream is addressed by (block position, offset); only
    bytes of blocks stored uncompressed can be patched in place, so :meth:`locate`
    answers None for the others (mutations there are byte damage only)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._blocks: dict[int, tuple[int, bool, int]] = {}

    def _block(self, pos: int) -> tuple[int, bool, int]:
        """(uncompressed length, stored uncompressed, next block position)."""
        known = self._blocks.get(pos)
        if known is None:
            word = int.from_bytes(self.data[pos : pos + 2], "little")
            length = word & 0x7FFF
            raw = bool(word & 0x8000)
            payload = self.data[pos + 2 : pos + 2 + length]
            size = length if raw else len(zlib.decompress(payload))
            known = (size, raw, pos + 2 + length)
            self._blocks[pos] = known
        return known

    def locate(self, pos: int, offset: int, width: int) -> int | None:
        for _ in range(1024):
            size, raw, following = self._block(pos)
            if offset < size:
                break
            offset -= size
            pos = following
        else:
            return None
        if not raw or offset + width > size:
            return None
        return pos + 2 + offset


def _squashfs_layout(
    volume: SquashfsVolume, data: bytes
) -> tuple[list[tuple[int, int]], list[Field]]:
    """Superblock, table indexes and entries, every reachable inode (with block lists
    and directory indexes) and every directory listing (headers and entries)."""
    c = _Collector(data)
    sb = volume.sb
    stream = _MetaStream(data)
    c.region(0, SUPER_BLOCK.size)
    c.struct(SUPER_BLOCK, 0, "superblock", "superblock", self_value=0)
    starts = sorted(
        {
            s
            for s in (
                sb.inode_table_start,
                sb.directory_table_start,
                sb.fragment_table_start,
                sb.id_table_start,
                sb.xattr_id_table_start,
                sb.lookup_table_start,
                sb.bytes_used,
            )
            if s != SQUASHFS_INVALID_BLK and s <= sb.bytes_used
        }
    )
    for begin, end in itertools.pairwise(starts):
        c.region(begin, end - begin)  # one region per table: each is as likely to be hit

    def meta_field(
        pos: int, offset: int, width: int, description: str, kind: str, self_value: int = 0
    ) -> None:
        where = stream.locate(pos, offset, width)
        if where is not None:
            c.add(where, width, description, kind, self_value=self_value)

    def meta_struct(
        layout: Layout, pos: int, offset: int, label: str, kind: str, self_value: int = 0
    ) -> None:
        for name in layout.names:
            meta_field(
                pos,
                offset + layout.offset_of(name),
                layout.size_of(name),
                f"{label} {name}",
                kind,
                self_value,
            )

    def table_index(
        start: int, count: int, entry_size: int, label: str, entry: Layout | None
    ) -> None:
        blocks = math.ceil(count * entry_size / SQUASHFS_METADATA_SIZE)
        for k in range(blocks):
            c.add(start + 8 * k, 8, f"{label} index {k}", "table", self_value=start)
            block = int.from_bytes(data[start + 8 * k : start + 8 * k + 8], "little")
            if entry is None:
                continue
            for n in range(min(count - k * (SQUASHFS_METADATA_SIZE // entry_size), 8)):
                meta_struct(
                    entry, block, n * entry_size, f"{label} entry {n}", "table", self_value=block
                )

    table_index(sb.id_table_start, sb.no_ids, ID_ENTRY.size, "id table", ID_ENTRY)
    if sb.fragment_table_start != SQUASHFS_INVALID_BLK and sb.fragments:
        table_index(
            sb.fragment_table_start,
            sb.fragments,
            FRAGMENT_ENTRY.size,
            "fragment table",
            FRAGMENT_ENTRY,
        )
    if sb.lookup_table_start != SQUASHFS_INVALID_BLK:
        table_index(sb.lookup_table_start, sb.inodes, 8, "export table", None)
    if sb.xattr_id_table_start != SQUASHFS_INVALID_BLK:
        at = sb.xattr_id_table_start
        c.struct(XATTR_ID_TABLE, at, "xattr id table", "table", skip=("unused",), self_value=at)
        ids = XATTR_ID_TABLE.unpack_record(data, at).xattr_ids
        table_index(at + XATTR_ID_TABLE.size, ids, XATTR_ID.size, "xattr id table", XATTR_ID)

    inode_start = sb.inode_table_start
    dir_start = sb.directory_table_start
    data_blocks = 0
    fragments: set[int] = set()
    for ino in _reachable(volume):
        ref = volume._refs[ino]
        inode = volume.inodes.read(ref)
        layout = INODE_LAYOUTS[inode.inode_type]
        block, offset = inode_start + (ref >> 16), ref & 0xFFFF
        label = f"inode {ino}"
        # Pointing back at itself: the inode's own metadata block, as the table's offset.
        meta_struct(layout, block, offset, label, "inode", self_value=ref >> 16)
        if inode.is_reg:
            full, tail = divmod(inode.size, sb.block_size)
            count = full + (1 if tail and inode.fragment == SQUASHFS_INVALID_FRAG else 0)
            # The start of its first data block and of its fragment block: compressed
            # streams for the codecs to choke on.
            if count and data_blocks < 8:
                data_blocks += 1
                c.region(inode.start_block, 256)
            if inode.fragment != SQUASHFS_INVALID_FRAG and inode.fragment_block not in fragments:
                fragments.add(inode.fragment_block)
                c.region(inode.fragment_block, 256)
            for k in range(min(count, 16)):
                pos, offset = inode.tail
                meta_field(pos, offset + 4 * k, 4, f"{label} block size word {k}", "block list")
        elif inode.is_dir:
            if inode.inode_type == SQUASHFS_LDIR_TYPE:
                _squashfs_dir_index(volume, inode, label, meta_struct)
            _squashfs_listing(volume, inode, dir_start, label, meta_struct)
    return c.regions, c.fields


def _squashfs_dir_index(
    volume: SquashfsVolume, inode: Any, label: str, meta_struct: Callable[..., None]
) -> None:
    pos, offset = inode.tail
    for k in range(inode.index_count):
        raw, next_pos, next_offset = volume.meta.read(
            volume.inode_region, pos, offset, DIR_INDEX.size
        )
        meta_struct(DIR_INDEX, pos, offset, f"{label} directory index {k}", "directory index")
        size = DIR_INDEX.unpack_record(raw).size
        _, pos, offset = volume.meta.read(volume.inode_region, next_pos, next_offset, size + 1)


def _squashfs_listing(
    volume: SquashfsVolume, inode: Any, dir_start: int, label: str, meta_struct: Callable[..., None]
) -> None:
    """Headers and entries of a directory's listing (``file_size - 3`` bytes)."""
    region = volume.directories.region
    pos, offset = dir_start + inode.start_block, inode.start_offset
    remaining = inode.size - 3
    headers = 0
    while remaining >= DIR_HEADER.size and headers < 64:
        raw, next_pos, next_offset = volume.meta.read(region, pos, offset, DIR_HEADER.size)
        header = DIR_HEADER.unpack_record(raw)
        meta_struct(
            DIR_HEADER,
            pos,
            offset,
            f"{label} listing header {headers}",
            "directory header",
            self_value=inode.start_block,
        )
        pos, offset = next_pos, next_offset
        remaining -= DIR_HEADER.size
        for k in range(header.count + 1):
            raw, next_pos, next_offset = volume.meta.read(region, pos, offset, SQ_DIR_ENTRY.size)
            entry = SQ_DIR_ENTRY.unpack_record(raw)
            if k < 4 or k == header.count:
                meta_struct(
                    SQ_DIR_ENTRY,
                    pos,
                    offset,
                    f"{label} listing entry {k}",
                    "directory entry",
                    self_value=offset,
                )
            _, pos, offset = volume.meta.read(region, next_pos, next_offset, entry.size + 1)
            remaining -= SQ_DIR_ENTRY.size + entry.size + 1
        headers += 1


# ----- FAT


def _fat_layout(volume: FatVolume, data: bytes) -> tuple[list[tuple[int, int]], list[Field]]:
    """Boot sector (and FAT32's FSInfo and backup), the FAT entries of every chain,
    every directory entry (short, long-name slots, "." and "..")."""
    c = _Collector(data)
    g = volume.geometry
    fat32 = g.fat_bits == 32
    cs = g.cluster_size
    c.region(0, 512)
    c.struct(BPB, 0, "boot sector", "boot sector", skip=("BS_jmpBoot", "BS_OEMName"))
    c.struct(
        BPB32 if fat32 else BPB16,
        0,
        "boot sector",
        "boot sector",
        skip=("BPB_Reserved", "BS_VolLab", "BS_FilSysType"),
    )
    if fat32:
        backup = BPB32.unpack_record(data, BPB.size).BPB_BkBootSec * g.bytes_per_sector
        c.region(backup, 512)
        c.struct(
            BPB, backup, "backup boot sector", "boot sector", skip=("BS_jmpBoot", "BS_OEMName")
        )
        if g.fsinfo is not None:
            at = g.fsinfo.sector * g.bytes_per_sector
            c.region(at, 512)
            c.struct(FSINFO, at, "FSInfo", "boot sector", skip=("FSI_Reserved1", "FSI_Reserved2"))
    else:
        c.region(g.root_offset, min(g.root_bytes, 4096))

    def cluster_of(offset: int) -> int:
        return max(0, (offset - g.data_offset) // cs + 2)

    def fat_entry(cluster: int) -> tuple[int, int]:
        """(image offset, value) of FAT[cluster] in the first FAT."""
        if g.fat_bits == 12:
            at = g.fat_offset + cluster * 3 // 2
            raw = c.u(at, 2)
            return at, raw >> 4 if cluster & 1 else raw & 0xFFF
        width = g.fat_bits // 8
        at = g.fat_offset + cluster * width
        return at, c.u(at, width) & 0x0FFFFFFF

    def chain(start: int) -> list[int]:
        out: list[int] = []
        cluster = start
        while 2 <= cluster < g.max_cluster and cluster not in out[-1:]:
            out.append(cluster)
            if len(out) > g.max_cluster:
                break
            cluster = fat_entry(cluster)[1]
        return out

    def chain_fields(start: int, label: str) -> list[int]:
        clusters = chain(start)
        for k in sorted({0, 1, 2, len(clusters) - 1} & set(range(len(clusters)))):
            at, _ = fat_entry(clusters[k])
            width = 2 if g.fat_bits < 32 else 4
            c.add(
                at,
                width,
                f"FAT[{clusters[k]}] ({label}, link {k})",
                "FAT",
                unit=cs,
                self_value=clusters[k],
            )
        return clusters

    for k in (0, 1):
        at, _ = fat_entry(k)
        c.add(at, 2 if g.fat_bits < 32 else 4, f"FAT[{k}]", "FAT")
    highest = 2
    pending: list[tuple[int, int, str]] = [(volume.root_ino, g.root_cluster if fat32 else 0, "/")]
    seen = {volume.root_ino}
    while pending:
        dir_ino, start, path = pending.pop()
        if start:
            clusters = chain_fields(start, f"directory {path}")
            highest = max(highest, *clusters)
            for cluster in clusters[:4]:
                c.region(g.cluster_offset(cluster), cs)
            if dir_ino != volume.root_ino:
                dot = g.cluster_offset(start)
                for n, name in ((0, "."), (1, "..")):
                    for fname in ("DIR_FstClusLO", "DIR_FstClusHI", "DIR_Attr"):
                        c.add(
                            dot + 32 * n + DIR_ENTRY.offset_of(fname),
                            DIR_ENTRY.size_of(fname),
                            f"{path} '{name}' entry {fname}",
                            "directory entry",
                            unit=cs,
                            self_value=start,
                        )
        for entry in volume.readdir(dir_ino):
            if entry.ino in seen:
                continue
            seen.add(entry.ino)
            at = entry.ino * 32
            child = path.rstrip("/") + "/" + entry.name.decode(errors="replace")
            rec = DIR_ENTRY.unpack_record(data, at)
            here = cluster_of(at)
            c.add(at, 1, f"{child} DIR_Name[0]", "directory entry")
            c.struct(
                DIR_ENTRY,
                at,
                child,
                "directory entry",
                only=("DIR_Attr", "DIR_NTRes", "DIR_FstClusHI", "DIR_FstClusLO", "DIR_FileSize"),
                unit=cs,
                self_value=here,
            )
            slot = at - 32
            for _ in range(3):
                if slot < 0 or data[slot + 11] != 0x0F:
                    break
                c.struct(
                    LDIR_ENTRY,
                    slot,
                    f"{child} long-name slot",
                    "long name",
                    only=("LDIR_Ord", "LDIR_Attr", "LDIR_Chksum", "LDIR_FstClusLO"),
                )
                slot -= 32
            first = rec.DIR_FstClusLO | (rec.DIR_FstClusHI << 16 if fat32 else 0)
            if rec.DIR_Attr & 0x10:
                pending.append((entry.ino, first, child))
            elif first:
                highest = max(highest, *(chain_fields(first, child) or [2]))
    width_bits = g.fat_bits
    c.region(g.fat_offset, min(g.fat_bytes, (highest + 1) * width_bits // 8 + 8))
    return c.regions, c.fields


# --------------------------------------------------------------------------- mutations


@dataclass(frozen=True)
class Flip:
    """Invert bit ``bit`` of the byte at ``offset``."""

    offset: int
    bit: int


@dataclass(frozen=True)
class SetByte:
    """Overwrite the byte at ``offset`` with ``value``."""

    offset: int
    value: int


@dataclass(frozen=True)
class Splice:
    """Copy ``length`` bytes from ``source`` over ``offset`` (metadata from elsewhere)."""

    source: int
    offset: int
    length: int


@dataclass(frozen=True)
class SetField:
    """Set field number ``index`` of the seed to ``value`` (``why`` says how it was picked)."""

    index: int
    value: int
    why: str
    description: str = ""


Mutation = Flip | SetByte | Splice | SetField


def apply(seed: Seed, changes: Iterable[Mutation]) -> bytes:
    """The seed's image with ``changes`` made in order; then the checksums of the
    structures whose fields were set are recomputed (crafted, not damaged)."""
    image = bytearray(seed.image)
    seals: dict[int, Callable[[bytearray], None]] = {}
    for change in changes:
        if isinstance(change, Flip):
            image[change.offset] ^= 1 << change.bit
        elif isinstance(change, SetByte):
            image[change.offset] = change.value
        elif isinstance(change, Splice):
            piece = image[change.source : change.source + change.length]
            image[change.offset : change.offset + len(piece)] = piece
            del image[len(seed.image) :]
        else:
            f = seed.fields[change.index]
            _put(image, f.offset, f.width, change.value)
            if f.seal is not None:
                seals[id(f.seal)] = f.seal
    for seal in seals.values():
        seal(image)
    return bytes(image)


def _offsets(seed: Seed) -> st.SearchStrategy[int]:
    """An offset inside a metadata region (regions equally likely, whatever their size)."""

    @st.composite
    def pick(draw: st.DrawFn) -> int:
        offset, length = seed.regions[draw(st.integers(0, len(seed.regions) - 1))]
        return offset + draw(st.integers(0, length - 1))

    return pick()


def byte_mutation(seed: Seed) -> st.SearchStrategy[Mutation]:
    """One flip, set or splice of bytes inside the seed's metadata."""
    where = _offsets(seed)
    return st.one_of(
        st.builds(Flip, where, st.integers(0, 7)),
        st.builds(SetByte, where, st.sampled_from([0, 0xFF, 0x80, 0x7F, 1]) | st.integers(0, 255)),
        st.builds(Splice, where, where, st.integers(1, 32)),
    )


VALUE_KINDS = ("zero", "ones", "plus one", "minus one", "self", "huge", "any")


def field_mutation(seed: Seed) -> st.SearchStrategy[Mutation]:
    """One field of the seed set to a value a crafted image would use."""
    kinds = list(seed.kinds)

    @st.composite
    def pick(draw: st.DrawFn) -> Mutation:
        members = seed.kinds[draw(st.sampled_from(kinds))]
        index = members[draw(st.integers(0, len(members) - 1))]
        f = seed.fields[index]
        top = (1 << (8 * f.width)) - 1
        current = int.from_bytes(seed.image[f.offset : f.offset + f.width], "little")
        why = draw(st.sampled_from(VALUE_KINDS))
        if why == "zero":
            value = 0
        elif why == "ones":
            value = top
        elif why == "plus one":
            value = (current + 1) & top
        elif why == "minus one":
            value = (current - 1) & top
        elif why == "self":
            value = f.self_value & top
        elif why == "huge":
            past_end = len(seed.image) // max(f.unit, 1) + 1
            value = draw(st.sampled_from(sorted({top // 2 + 1, top - 1, min(top, past_end)})))
        else:
            value = draw(st.integers(0, top))
        return SetField(index, value, why, f.description)

    return pick()


def byte_mutations(seed: Seed, max_size: int = 8) -> st.SearchStrategy[list[Mutation]]:
    """1 to ``max_size`` byte flips, sets and splices inside the seed's metadata."""
    return st.lists(byte_mutation(seed), min_size=1, max_size=max_size)


def field_mutations(seed: Seed, max_size: int = 3) -> st.SearchStrategy[list[Mutation]]:
    """1 to ``max_size`` fields set to hostile values (checksums re-sealed)."""
    return st.lists(field_mutation(seed), min_size=1, max_size=max_size)


def mutations(seed: Seed) -> st.SearchStrategy[list[Mutation]]:
    """Byte damage, crafted fields, or both mixed: 1 to 8 changes."""
    if not seed.fields:
        return byte_mutations(seed)
    return st.lists(byte_mutation(seed) | field_mutation(seed), min_size=1, max_size=8)


# --------------------------------------------------------------------------- exercising


@dataclass
class Summary:
    """What one walk of a volume did, and which allowed errors it met."""

    directories: int = 0
    entries: int = 0
    files: int = 0
    bytes_read: int = 0
    symlinks: int = 0
    xattrs: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def failures(self) -> int:
        return sum(self.errors.values())


def exercise(volume: Volume, deadline_s: float = TIME_LIMIT) -> Summary:
    """Every request the FUSE layer can make, on everything reachable; the allowed errors
    are counted, anything else propagates.

    Each directory is listed (and resumed from its entries' offsets), each entry looked
    up by name and each inode visited once: stat, xattrs (listed, each read, and one
    that is absent), readlink, and reads at the start, middle and end of regular files.
    The walk is bounded (:data:`MAX_INODES`, :data:`MAX_ENTRIES_PER_DIR`) and must end
    within ``deadline_s`` seconds of wall time.
    """
    summary = Summary()
    deadline = time.monotonic() + deadline_s

    def attempt(request: Callable[..., Any], *args: Any) -> Any:
        if time.monotonic() > deadline:
            raise AssertionError(f"the walk took more than {deadline_s} s ({summary})")
        try:
            return request(*args)
        except ALLOWED as exc:
            _check_cause(exc, request.__name__)
            summary.errors[f"{request.__name__}: {type(exc).__name__}"] += 1
            return None

    def listing(dir_ino: int, offset: int, limit: int) -> list[Any]:
        entries = []
        for entry in volume.readdir(dir_ino, offset):
            assert isinstance(entry.name, bytes) and isinstance(entry.ino, int), entry
            entries.append(entry)
            if len(entries) >= limit:
                break
        return entries

    def visit(ino: int) -> None:
        attr = attempt(volume.getattr, ino)
        names = attempt(volume.listxattr, ino) or []
        for name in names[:MAX_XATTRS]:
            if attempt(volume.getxattr, ino, name) is not None:
                summary.xattrs += 1
        attempt(volume.getxattr, ino, b"user.absent-from-every-seed")
        if attr is None:
            return
        if attr.is_dir:
            stack.append(ino)
            attempt(volume.lookup, ino, b"..")
        elif attr.is_symlink:
            if attempt(volume.readlink, ino) is not None:
                summary.symlinks += 1
        elif attr.is_regular:
            summary.files += 1
            for offset in (0, attr.size // 2, max(0, attr.size - 5000), attr.size):
                data = attempt(volume.read, ino, offset, READ_SIZE)
                if data is not None:
                    assert len(data) <= READ_SIZE, f"read of {READ_SIZE} returned {len(data)}"
                    summary.bytes_read += len(data)

    stack: list[int] = []
    visited = {volume.root_ino}
    visit(volume.root_ino)
    while stack and len(visited) < MAX_INODES:
        dir_ino = stack.pop()
        entries = attempt(listing, dir_ino, 0, MAX_ENTRIES_PER_DIR) or []
        summary.directories += 1
        for entry in entries[:1] + entries[len(entries) // 2 :][:1] + entries[-1:]:
            attempt(listing, dir_ino, entry.next_offset, 3)
        for entry in entries:
            summary.entries += 1
            attempt(volume.lookup, dir_ino, entry.name)
            if entry.ino in visited or len(visited) >= MAX_INODES:
                continue
            visited.add(entry.ino)
            visit(entry.ino)
    attempt(volume.statfs)
    return summary


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Outcome:
    """How one image fared: refused at open (``refusal``) or opened and walked."""

    refusal: str | None
    summary: Summary | None
    seconds: float
    peak_bytes: int

    @property
    def opened(self) -> bool:
        return self.refusal is None


class _Overtime(BaseException):
    """Raised by the alarm inside a driver call that does not return (not an Exception,
    so no ``except Exception`` in the code under test can swallow it)."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """SIGALRM after ``seconds`` (main thread only): a driver stuck in one call is
    interrupted where it loops, and the traceback shows where.  An alarm set by the
    caller (a test's own watchdog) is put back afterwards with the time it had left."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ring(signum: int, frame: object) -> None:
        raise _Overtime(f"still running after {seconds} s")

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, ring)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            left = outer - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * _PAGE


def _peak_rss() -> int:
    """VmHWM: the peak resident size since the last :func:`_reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> int:
    """Reset VmHWM to the current resident size (Linux >= 4.0) and return that."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _peak_rss()


@contextlib.contextmanager
def _memory_bound() -> Iterator[list[int]]:
    """Measure the growth of the peak resident size inside the block, and cap the
    address space at :data:`RUNAWAY_CAP` over its size before it.

    The budget is checked on the resident peak (VmHWM, reset on entry): what the
    driver really filled, measured for free (tracemalloc would be exact but slows a
    walk five- to tenfold).  The cap (RLIMIT_AS) only keeps a runaway allocation from
    taking the machine down: it makes it fail at once with MemoryError, which the
    drivers turn into CorruptImage and :func:`_check_cause` turns back into a finding.
    It is generous because a tight one breaks CPython itself: a thread started near
    the limit (squashfs decompresses on worker threads, 8 MiB of stack each) can die
    before it reports it started, and Thread.start() then waits forever.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + RUNAWAY_CAP
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    before = _reset_peak_rss()
    result = [0]
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield result
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        result[0] = max(0, _peak_rss() - before)


def _check_cause(exc: BaseException, what: str) -> None:
    """An allowed error caused by MemoryError is the driver exceeding the budget."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, MemoryError):
            raise AssertionError(f"{what}: the driver ran out of memory (MemoryError)") from exc
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__


def _memfd(data: bytes) -> int:
    """A memfd holding ``data`` (holes where it is zero, so big FAT32 images are cheap)."""
    fd = os.memfd_create("pyfsmount-fuzz", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, len(data))
        view = memoryview(data)
        zero = bytes(1 << 16)
        for start in range(0, len(data), 1 << 16):
            chunk = view[start : start + (1 << 16)]
            if chunk != zero[: len(chunk)]:
                os.pwrite(fd, chunk, start)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def volume_of(data: bytes, fs_type: str | None = None) -> Iterator[Volume]:
    """The volume on an image held in memory (a memfd, closed afterwards)."""
    fd = _memfd(data)
    try:
        yield open_volume(BlockReader(fd), fs_type)
    finally:
        os.close(fd)


def check_image(
    data: bytes,
    fs_type: str | None = None,
    *,
    time_limit: float = TIME_LIMIT,
    memory_limit: int = MEMORY_BUDGET,
) -> Outcome:
    """Open ``data`` as the registry would and :func:`exercise` all of it.

    Returns how it went; raises for a driver bug: an error outside :data:`ALLOWED`
    (as it is), a call still running after ``time_limit`` seconds or a walk longer
    than that (AssertionError, with where it was), or more than ``memory_limit`` bytes
    of Python allocations at the peak (AssertionError).
    """
    fd = _memfd(data)
    started = time.monotonic()
    refusal: str | None = None
    summary: Summary | None = None
    try:
        with _memory_bound() as peak:
            try:
                with _alarm(time_limit * 1.5):
                    try:
                        volume = open_volume(BlockReader(fd), fs_type)
                    except (CorruptImage, Unsupported) as exc:
                        _check_cause(exc, "open")
                        refusal = f"{type(exc).__name__}: {exc}"
                    else:
                        summary = exercise(volume, time_limit - (time.monotonic() - started))
            except _Overtime as exc:
                raise AssertionError(f"the driver hangs: no answer after {exc}") from exc
    finally:
        os.close(fd)
    assert peak[0] <= memory_limit, (
        f"the driver grew by {peak[0] / MiB:.0f} MiB (budget {memory_limit / MiB:.0f} MiB)"
    )
    return Outcome(refusal, summary, time.monotonic() - started, peak[0])


# --------------------------------------------------------------------------- file contents


def _regular_files(volume: Volume, limit: int = 2000) -> dict[bytes, tuple[int, int]]:
    """Path -> (inode, size) of every regular file reachable from the root."""
    out: dict[bytes, tuple[int, int]] = {}
    stack: list[tuple[bytes, int]] = [(b"", volume.root_ino)]
    seen = {volume.root_ino}
    while stack and len(out) < limit:
        path, dir_ino = stack.pop()
        for entry in volume.readdir(dir_ino):
            if entry.ino in seen:
                continue
            seen.add(entry.ino)
            attr = volume.getattr(entry.ino)
            if attr.is_dir:
                stack.append((path + b"/" + entry.name, entry.ino))
            elif attr.is_regular:
                out[path + b"/" + entry.name] = (entry.ino, attr.size)
    return out


def _read_all(volume: Volume, ino: int, size: int) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while offset < size:
        piece = volume.read(ino, offset, min(READ_SIZE, size - offset))
        if not piece:
            break
        parts.append(piece)
        offset += len(piece)
    return b"".join(parts)


@functools.cache
def pristine_files(name: str) -> dict[bytes, bytes]:
    """Path (``b"/dir/name"``) -> contents of every regular file of seed ``name``."""
    s = seed(name)
    with volume_of(s.image, s.fs_type) as volume:
        files = _regular_files(volume)
        return {path: _read_all(volume, ino, size) for path, (ino, size) in files.items()}


def intact_files(s: Seed, data: bytes, time_limit: float = TIME_LIMIT) -> dict[bytes, bytes]:
    """The files of the seed that the library still reads exactly as in the pristine
    image when it opens ``data`` (a mutation of it), found by path: what a mount of
    ``data`` must serve unchanged.  Driver bugs propagate as in :func:`check_image`."""
    fd = _memfd(data)
    intact: dict[bytes, bytes] = {}
    try:
        with _alarm(time_limit):
            try:
                volume = open_volume(BlockReader(fd), s.fs_type)
            except (CorruptImage, Unsupported):
                return {}
            for path, contents in pristine_files(s.name).items():
                with contextlib.suppress(*ALLOWED):
                    # As the kernel walks a path through FUSE: a lookup answers with the
                    # attributes, so a directory whose getattr fails cannot be entered.
                    ino = volume.root_ino
                    attr = volume.getattr(ino)
                    for part in path.strip(b"/").split(b"/"):
                        ino = volume.lookup(ino, part)
                        attr = volume.getattr(ino)
                    same_size = attr.is_regular and attr.size == len(contents)
                    if same_size and _read_all(volume, ino, attr.size) == contents:
                        intact[path] = contents
    except _Overtime as exc:
        raise AssertionError(f"the driver hangs: no answer after {exc}") from exc
    finally:
        os.close(fd)
    return intact
