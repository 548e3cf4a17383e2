"""The FAT driver against mtools: the same images, through the library and through mcopy.

One source tree (names that need long entries and names that fit 8.3 in either case,
files of sizes around the cluster size, 20 levels of directories, optionally a directory
of 2000 entries) is made into an image per variant: FAT12 floppy, FAT16 with small and
with 32 KiB clusters and one FAT, FAT32 with 512-byte clusters, FAT32 with 4096-byte
sectors, and floppies and FAT32 made by ``mformat``.  Each image also gets deleted entries,
a fragmented file (files copied, every other one deleted, then a big file copied into the
holes) and DOS attributes (``mattrib``).  Everything the library shows is compared with
what ``mcopy -s -m`` extracts: names, sizes, contents, mtimes; the geometry and free
space with what mtools reports; modes, owners, link counts and st_blocks with the rules
of the kernel's vfat (fs/fat/inode.c).
"""

from __future__ import annotations

import datetime
import itertools
import os
import random
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.base import BlockReader, CorruptImage, NoSuchAttribute
from drivers.fat import FatVolume
from drivers.fat import volume as fat_volume
from drivers.fat.directory import Listing, parse_directory
from drivers.fat.layout import BPB, DIR_ENTRY, DIR_ENTRY_SIZE, FSINFO
from drivers.fat.volume import NAME_MAX
from tests.test_fat_unit_helpers import (
    can_build,
    compare_with_mtools,
    extract,
    listing,
    mattrib_flags,
    mdir_free_bytes,
    mkfs,
    mtools,
    open_fat,
    patch,
    path_ino,
    pattern,
    read_all,
    read_bytes,
)

pytestmark = pytest.mark.skipif(not can_build(), reason="needs mkfs.fat and mtools")

LONG_255 = "N" * 251 + ".txt"
NAMES = (
    "lower.txt",  # fits 8.3 in lower case: NT flags, no long name
    "UPPER.TXT",
    "UP.lo",  # upper base, lower extension: NT flag 0x10 only
    "lo.UP",
    "Mixed.Txt",  # needs a long name
    "ReadMe.TXT",
    "noext",
    "a long name with spaces.txt",
    "dots.in.the.name.tar.gz",
    "café au lait.txt",
    "日本語のファイル.txt",
    "Ωmega.bin",
    "ext.html",
    LONG_255,
)
ATTRIBUTES = {
    "attrs/hidden.txt": ("+h", {"A", "H"}),
    "attrs/system.txt": ("+s", {"A", "S"}),
    "attrs/readonly.txt": ("+r", {"A", "R"}),
    "attrs/plain.txt": ("-a", set()),
    "attrs/all.txt": ("+h +s +r", {"A", "H", "S", "R"}),
    "attrs/rodir": ("+r", {"R"}),
}
DEPTH = 20
BIG_DIR = 2000
FRAGMENT_FILES = 40


@dataclass(frozen=True)
class Variant:
    size_kb: int
    fat_bits: int
    mkfs: tuple[str, ...] = ()
    mformat: tuple[str, ...] | None = None  # made by mformat instead of mkfs.fat
    big_dir: bool = False


VARIANTS: dict[str, Variant] = {
    "fat12-floppy": Variant(1440, 12, ("-F", "12", "-n", "FLOPPY", "-i", "1234ABCD")),
    "fat16": Variant(32768, 16, ("-F", "16"), big_dir=True),
    "fat16-s64-one-fat": Variant(262144, 16, ("-F", "16", "-s", "64", "-f", "1")),
    "fat32-s1": Variant(65536, 32, ("-F", "32", "-s", "1", "-n", "BIG VOLUME"), big_dir=True),
    "fat32-4k-sectors": Variant(300000, 32, ("-F", "32", "-S", "4096")),
    "mformat-floppy": Variant(1440, 12, mformat=("-f", "1440")),
    "mformat-fat32": Variant(65536, 32, mformat=("-F", "-T", "131072")),
}


def make_tree(root: Path, variant: Variant) -> None:
    root.mkdir(parents=True)
    names = root / "names"
    names.mkdir()
    for n, name in enumerate(NAMES):
        (names / name).write_bytes(b"%d %s\n" % (n, name.encode()))
    (names / "docs").mkdir()  # a lower-case 8.3 directory name
    (names / "docs" / "inside.txt").write_bytes(b"inside\n")
    sizes = root / "sizes"
    sizes.mkdir()
    for n, size in enumerate((0, 1, 511, 512, 513, 2047, 2049, 4096, 4097, 32769, 100_003)):
        (sizes / f"size-{size}").write_bytes(pattern(size, n))
    deep = root / "deep"
    for level in range(1, DEPTH + 1):
        deep = deep / f"level{level:02d}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_bytes(b"the bottom\n")
    (root / "deep" / "level01" / "side.txt").write_bytes(b"side\n")
    attrs = root / "attrs"
    attrs.mkdir()
    for path in ATTRIBUTES:
        if path.endswith("rodir"):
            (root / path).mkdir()
        else:
            (root / path).write_bytes(path.encode())
    if variant.big_dir:
        big = root / "bigdir"
        big.mkdir()
        for i in range(1000, 1000 + BIG_DIR):
            (big / f"{i} entry of the big directory.txt").write_bytes(b"%d\n" % i)
    # Times from 1980 to 2099, odd seconds too (mtools takes 2100 for a leap year).
    span = 4_102_444_800 - 315_532_800 - 86_400
    for n, each in enumerate(sorted(root.rglob("*"))):
        stamp = 315_532_800 + (n * 86_400 * 97 + n * 3607) % span
        os.utime(each, (stamp, stamp))


def fragment(image: Path, top: Path, variant: Variant) -> None:
    """A file whose chain jumps: fill, delete every other file, copy a big one into the holes."""
    src = top / "fragments"
    src.mkdir(exist_ok=True)
    files = []
    for i in range(FRAGMENT_FILES):
        path = src / f"piece{i:02d}.bin"
        path.write_bytes(pattern(3000, 100 + i))
        files.append(path)
    mtools("mmd", image, "::/frag")
    mtools("mcopy", image, "-m", *files, "::/frag/")
    for path in files[::2]:
        mtools("mdel", image, f"::/frag/{path.name}")
    if variant.fat_bits == 32:  # mtools allocates after FSInfo's hint: point it at the start
        raw = read_bytes(image, 0, 512)
        bps = BPB.unpack_record(raw).BPB_BytsPerSec
        fsinfo_sector = int.from_bytes(raw[48:50], "little")
        patch(image, fsinfo_sector * bps + FSINFO.offset_of("FSI_Nxt_Free"), b"\2\0\0\0")
    big = src / "fragmented.bin"
    big.write_bytes(pattern(120_000, 7))
    mtools("mcopy", image, "-m", big, "::/frag/")


def build(top: Path, name: str) -> Path:
    variant = VARIANTS[name]
    src = top / f"src-{name}"
    make_tree(src, variant)
    image = top / f"{name}.img"
    if variant.mformat is not None:
        image.unlink(missing_ok=True)
        mtools("mformat", image, "-C", *variant.mformat, "::")
    else:
        mkfs(image, variant.size_kb, *variant.mkfs)
    mtools("mcopy", image, "-s", "-m", *sorted(src.iterdir()), "::/")
    fragment(image, top, variant)
    for path, (change, _) in ATTRIBUTES.items():
        mtools("mattrib", image, *change.split(), f"::/{path}")
    return image


@pytest.fixture(scope="module")
def top(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fat")


@pytest.fixture(scope="module")
def images() -> dict[str, Path]:
    """Every variant's image, built once (lazily, by ``image_of``)."""
    return {}


def image_of(images: dict[str, Path], top: Path, name: str) -> Path:
    if name not in images:
        images[name] = build(top, name)
    return images[name]


@pytest.fixture(scope="module")
def fat16(images: dict[str, Path], top: Path) -> Path:
    return image_of(images, top, "fat16")


@pytest.fixture(scope="module")
def extracted(images: dict[str, Path], top: Path) -> dict[str, Path]:
    return {}


def extracted_of(images: dict[str, Path], top: Path, cache: dict[str, Path], name: str) -> Path:
    if name not in cache:
        cache[name] = extract(image_of(images, top, name), top / f"out-{name}")
    return cache[name]


# -- the whole tree against mtools ------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_mtools(
    images: dict[str, Path], top: Path, extracted: dict[str, Path], name: str
) -> None:
    volume = open_fat(image_of(images, top, name))
    out = extracted_of(images, top, extracted, name)
    seen = compare_with_mtools(volume, out)
    assert seen > len(NAMES) + DEPTH
    assert volume.geometry.fat_bits == VARIANTS[name].fat_bits


@pytest.mark.parametrize("name", list(VARIANTS))
def test_geometry_and_statfs(images: dict[str, Path], top: Path, name: str) -> None:
    image = image_of(images, top, name)
    volume = open_fat(image)
    raw = BPB.unpack_record(read_bytes(image, 0, 512))
    g = volume.geometry
    assert g.bytes_per_sector == raw.BPB_BytsPerSec
    assert g.cluster_size == raw.BPB_BytsPerSec * raw.BPB_SecPerClus
    fat_sectors = raw.BPB_FATSz16 or int.from_bytes(read_bytes(image, 36, 4), "little")
    root_sectors = raw.BPB_RootEntCnt * 32 // raw.BPB_BytsPerSec
    data = raw.BPB_RsvdSecCnt + raw.BPB_NumFATs * fat_sectors + root_sectors
    total = raw.BPB_TotSec16 or raw.BPB_TotSec32
    clusters = (total - data) // raw.BPB_SecPerClus
    assert g.clusters == clusters
    assert (clusters < 4085) == (g.fat_bits == 12)
    assert volume.block_size == g.cluster_size  # known without counting free clusters
    fs = volume.statfs()
    assert (fs.block_size, fs.blocks, fs.files, fs.files_free) == (g.cluster_size, clusters, 0, 0)
    assert fs.blocks_free == fs.blocks_available
    assert fs.blocks_free * fs.block_size == mdir_free_bytes(image)
    assert fs.name_max == NAME_MAX


@pytest.mark.parametrize("name", list(VARIANTS))
def test_directories_as_vfat(
    images: dict[str, Path], top: Path, extracted: dict[str, Path], name: str
) -> None:
    """nlink = 2 + subdirectories, size = clusters, mode 0755, owner root, st_blocks."""
    volume = open_fat(image_of(images, top, name))
    out = extracted_of(images, top, extracted, name)
    g = volume.geometry
    root = volume.getattr(volume.root_ino)
    subdirs = sum(1 for p in out.iterdir() if p.is_dir())
    assert root.nlink == 2 + subdirs
    assert (root.mode, root.uid, root.gid) == (stat.S_IFDIR | 0o755, 0, 0)
    assert (root.mtime_ns, root.atime_ns, root.ctime_ns) == (0, 0, 0)
    if g.fat_bits != 32:
        assert root.size == g.root_entries * 32
    for path in [p for p in out.rglob("*") if p.is_dir()]:
        attr = volume.getattr(path_ino(volume, str(path.relative_to(out))))
        assert attr.nlink == 2 + sum(1 for p in path.iterdir() if p.is_dir()), path
        assert attr.size > 0 and attr.size % g.cluster_size == 0
        assert attr.blocks == attr.size // 512
        assert attr.mode == stat.S_IFDIR | 0o755  # attrs/rodir too: no rodir option
    for path in [p for p in out.rglob("*") if p.is_file()]:
        attr = volume.getattr(path_ino(volume, str(path.relative_to(out))))
        clusters = -(-attr.size // g.cluster_size)
        assert attr.blocks == clusters * g.cluster_size // 512
        assert attr.nlink == 1


@pytest.mark.parametrize("name", list(VARIANTS))
def test_inode_numbers_are_entry_positions(images: dict[str, Path], top: Path, name: str) -> None:
    image = image_of(images, top, name)
    volume = open_fat(image)
    ino = path_ino(volume, "sizes/size-100003")
    raw = DIR_ENTRY.unpack_record(read_bytes(image, ino * DIR_ENTRY_SIZE, DIR_ENTRY_SIZE))
    assert raw.DIR_FileSize == 100_003 == volume.getattr(ino).size
    assert raw.DIR_Name == b"SIZE-1~1   " or raw.DIR_Name.startswith(b"SIZE-")
    # Stable: the same number from a fresh volume, and from a listing.
    again = open_fat(image)
    assert path_ino(again, "sizes/size-100003") == ino
    assert listing(again, path_ino(again, "sizes"))[b"size-100003"] == ino


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fragmented_file(images: dict[str, Path], top: Path, name: str) -> None:
    volume = open_fat(image_of(images, top, name))
    frag = path_ino(volume, "frag")
    ino = volume.lookup(frag, b"fragmented.bin")
    size = volume.getattr(ino).size
    expected = pattern(120_000, 7)
    chain = volume._file_chain(volume._start(volume._entry(ino)), size)
    if volume.geometry.cluster_size <= 4096:
        assert chain.runs > 1, "the file should be fragmented"
    assert read_all(volume, ino, size, piece=4096) == expected
    rng = random.Random(3)
    for _ in range(300):
        offset = rng.randrange(size + 100)
        length = rng.randrange(1, 20_000)
        assert volume.read(ino, offset, length) == expected[offset : offset + length]
    # The deleted pieces left 0xE5 entries behind: they are not listed.
    names = set(listing(volume, frag))
    kept = {b"piece%02d.bin" % i for i in range(1, FRAGMENT_FILES, 2)}
    assert names == kept | {b"fragmented.bin"}


# -- names ------------------------------------------------------------------------------------


def test_short_names_and_nt_case_flags(fat16: Path) -> None:
    volume = open_fat(fat16)
    names_ino = path_ino(volume, "names")
    listed = listing(volume, names_ino)
    assert set(listed) == {os.fsencode(n) for n in NAMES} | {b"docs"}
    g = volume.geometry
    expect = {  # name -> (DIR_NTRes case bits, has a long name)
        "lower.txt": (0x18, False),
        "UPPER.TXT": (0x00, False),
        "UP.lo": (0x10, False),
        "lo.UP": (0x08, False),
        "noext": (0x08, False),
        "docs": (0x08, False),
        "Mixed.Txt": (0x00, True),
        "ReadMe.TXT": (0x00, True),
    }
    for name, (flags, has_long) in expect.items():
        ino = listed[name.encode()]
        raw = DIR_ENTRY.unpack_record(read_bytes(fat16, ino * 32, 32))
        assert raw.DIR_NTRes & 0x18 == flags, name
        before = read_bytes(fat16, ino * 32 - 32, 32)
        assert (before[11] == 0x0F) == has_long, name
    assert g.fat_bits == 16


def test_lookup_by_short_alias(fat16: Path) -> None:
    """As fat_search_long, a lookup matches the short name too (as it is shown)."""
    volume = open_fat(fat16)
    names_ino = path_ino(volume, "names")
    long_ino = volume.lookup(names_ino, b"a long name with spaces.txt")
    raw = DIR_ENTRY.unpack_record(read_bytes(fat16, long_ino * 32, 32))
    alias = raw.DIR_Name[:8].rstrip() + b"." + raw.DIR_Name[8:].rstrip()
    assert b"~" in alias
    assert volume.lookup(names_ino, alias) == long_ino
    assert volume.lookup(names_ino, b"MIXED.TXT") == volume.lookup(names_ino, b"Mixed.Txt")
    with pytest.raises(FileNotFoundError):
        volume.lookup(names_ino, b"mixed.txt")  # exact match, as vfat with iocharset=utf8
    with pytest.raises(FileNotFoundError):
        volume.lookup(names_ino, b"no such file")
    with pytest.raises(NotADirectoryError):
        volume.lookup(long_ino, b"x")


def test_long_and_unicode_names(fat16: Path) -> None:
    volume = open_fat(fat16)
    names_ino = path_ino(volume, "names")
    for n, name in enumerate(NAMES):
        ino = volume.lookup(names_ino, name.encode())
        assert volume.read(ino, 0, 1000) == b"%d %s\n" % (n, name.encode())
    assert len(LONG_255) == 255


# -- attributes, modes, owners, options -------------------------------------------------------


def test_dos_attributes(fat16: Path) -> None:
    volume = open_fat(fat16)
    for path, (_, letters) in ATTRIBUTES.items():
        assert mattrib_flags(fat16, path) == letters
        ino = path_ino(volume, path)
        words = {"A": "archive", "H": "hidden", "S": "system", "R": "readonly"}
        expected = {words[letter] for letter in letters}
        if expected:
            assert volume.listxattr(ino) == [b"user.fat.attributes"]
            value = volume.getxattr(ino, b"user.fat.attributes").decode()
            assert set(value.split(",")) == expected
        else:
            assert volume.listxattr(ino) == []
            with pytest.raises(NoSuchAttribute):
                volume.getxattr(ino, b"user.fat.attributes")
        attr = volume.getattr(ino)
        if attr.is_dir:
            assert attr.mode == stat.S_IFDIR | 0o755  # read-only is only a flag on a directory
        elif "R" in letters:
            assert attr.mode == stat.S_IFREG | 0o555
        else:
            assert attr.mode == stat.S_IFREG | 0o755


def test_options_change_owners_and_modes(fat16: Path) -> None:
    volume = open_fat(fat16, uid="1000", gid="100", fmask="0133", dmask="027")
    ro = volume.getattr(path_ino(volume, "attrs/readonly.txt"))
    rw = volume.getattr(path_ino(volume, "attrs/plain.txt"))
    rodir = volume.getattr(path_ino(volume, "attrs/rodir"))
    root = volume.getattr(volume.root_ino)
    assert (rw.uid, rw.gid, rw.mode) == (1000, 100, stat.S_IFREG | 0o644)
    assert ro.mode == stat.S_IFREG | 0o444
    assert rodir.mode == stat.S_IFDIR | 0o750 and root.mode == stat.S_IFDIR | 0o750
    volume = open_fat(fat16, umask="077", rodir="", showexec="")
    assert volume.getattr(path_ino(volume, "attrs/plain.txt")).mode == stat.S_IFREG | 0o600
    assert volume.getattr(path_ino(volume, "attrs/rodir")).mode == stat.S_IFDIR | 0o500
    assert volume.getattr(path_ino(volume, "attrs")).mode == stat.S_IFDIR | 0o700


def test_time_options(fat16: Path) -> None:
    utc = open_fat(fat16)
    east = open_fat(fat16, time_offset="90")
    ino = path_ino(utc, "sizes/size-1")
    a, b = utc.getattr(ino), east.getattr(ino)
    assert a.mtime_ns - b.mtime_ns == 90 * 60 * 10**9
    default = FatVolume.open(utc.reader, {})  # the local zone: this machine's is UTC
    offset = time.localtime().tm_gmtoff
    assert utc.getattr(ino).mtime_ns - default.getattr(ino).mtime_ns == offset * 10**9


def test_times_match_the_entry(fat16: Path) -> None:
    """mtime from DIR_WrtTime/Date, atime = DIR_LstAccDate at midnight, ctime = mtime."""
    volume = open_fat(fat16)
    for path in ("sizes/size-1", "names/lower.txt", "deep/level01"):
        ino = path_ino(volume, path)
        raw = DIR_ENTRY.unpack_record(read_bytes(fat16, ino * 32, 32))
        attr = volume.getattr(ino)
        assert attr.mtime_ns == _dos_ns(raw.DIR_WrtDate, raw.DIR_WrtTime)
        assert attr.atime_ns == _dos_ns(raw.DIR_LstAccDate, 0)
        assert attr.ctime_ns == attr.mtime_ns


def _dos_ns(date: int, tm: int) -> int:
    moment = datetime.datetime(
        1980 + (date >> 9),
        (date >> 5) & 15,
        date & 31,
        tm >> 11,
        (tm >> 5) & 63,
        (tm & 31) * 2,
        tzinfo=datetime.UTC,
    )
    return int(moment.timestamp()) * 10**9


def test_label_and_serial(images: dict[str, Path], top: Path) -> None:
    floppy = open_fat(image_of(images, top, "fat12-floppy"))
    assert floppy.label == "FLOPPY" and floppy.serial == "1234-ABCD"
    assert sorted(floppy.listxattr(floppy.root_ino)) == [b"user.fat.label", b"user.fat.serial"]
    assert floppy.getxattr(floppy.root_ino, b"user.fat.label") == b"FLOPPY"
    assert floppy.getxattr(floppy.root_ino, b"user.fat.serial") == b"1234-ABCD"
    big = open_fat(image_of(images, top, "fat32-s1"))
    assert big.label == "BIG VOLUME"
    plain = open_fat(image_of(images, top, "fat16"))
    assert plain.label == "" and plain.listxattr(plain.root_ino) == [b"user.fat.serial"]
    with pytest.raises(NoSuchAttribute):
        plain.getxattr(plain.root_ino, b"user.fat.label")


def test_label_from_mlabel(top: Path) -> None:
    image = mkfs(top / "labelled.img", 1440, "-n", "OLD")
    mtools("mlabel", image, "::NEW LABEL")
    assert open_fat(image).label == "NEW LABEL"


# -- directories ------------------------------------------------------------------------------


def test_deep_directories_and_dotdot(fat16: Path) -> None:
    volume = open_fat(fat16)
    chain = [volume.root_ino, path_ino(volume, "deep")]
    for level in range(1, DEPTH + 1):
        chain.append(volume.lookup(chain[-1], b"level%02d" % level))
    bottom = volume.lookup(chain[-1], b"bottom.txt")
    assert volume.read(bottom, 0, 100) == b"the bottom\n"
    for child, parent in zip(chain[1:], chain, strict=False):
        assert volume.lookup(child, b"..") == parent
        assert volume.lookup(child, b".") == child
    assert volume.lookup(volume.root_ino, b"..") == volume.root_ino
    # A fresh volume that never listed the parents finds them from the ".." entries.
    fresh = open_fat(fat16)
    for child, parent in zip(reversed(chain[2:]), reversed(chain[1:-1]), strict=True):
        assert fresh.lookup(child, b"..") == parent
    assert fresh.lookup(chain[1], b"..") == volume.root_ino


def test_readdir_resumes_at_offsets(fat16: Path) -> None:
    volume = open_fat(fat16)
    big = path_ino(volume, "bigdir")
    everything = list(volume.readdir(big))
    assert len(everything) == BIG_DIR
    assert {e.name for e in everything} == {
        b"%d entry of the big directory.txt" % i for i in range(1000, 1000 + BIG_DIR)
    }
    offsets = [e.next_offset for e in everything]
    assert offsets == sorted(set(offsets)) and offsets[0] > 0
    for k in (0, 1, 17, 999, BIG_DIR - 1):
        resumed = list(volume.readdir(big, everything[k].next_offset))
        assert resumed == everything[k + 1 :]
    for entry in everything[::97]:
        assert volume.lookup(big, entry.name) == entry.ino
    assert volume.getattr(big).nlink == 2


def test_a_directory_over_the_listing_budget_is_parsed_once(
    fat16: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listed in readdir-sized steps, a directory too large for the listing cache is
    still parsed once, not once per step (which made listing it quadratic)."""
    monkeypatch.setattr(fat_volume, "LISTING_CACHE_BYTES", 64 << 10)
    parsed: list[int] = []

    def counting_parse(data: bytes, *args: object) -> Listing:
        parsed.append(len(data))
        return parse_directory(data, *args)  # type: ignore[arg-type]

    volume = open_fat(fat16)
    big = path_ino(volume, "bigdir")
    monkeypatch.setattr(fat_volume, "parse_directory", counting_parse)
    listed, offset = 0, 0
    while step := list(itertools.islice(volume.readdir(big, offset), 25)):
        listed, offset = listed + len(step), step[-1].next_offset
    assert listed == BIG_DIR
    assert len(parsed) == 1 and parsed[0] > 64 << 10
    assert volume.lookup(big, b"1999 entry of the big directory.txt") > 0
    assert len(parsed) == 1


def test_entries_read_back_after_eviction(fat16: Path) -> None:
    """An inode that left every cache is found again from its position alone."""
    volume = open_fat(fat16)
    inos = {e.name: e.ino for e in volume.readdir(path_ino(volume, "sizes"))}
    attrs = {name: volume.getattr(ino) for name, ino in inos.items()}
    fresh = open_fat(fat16)  # never listed anything
    for name, ino in inos.items():
        assert fresh.getattr(ino) == attrs[name]
        assert fresh.read(ino, 0, 64) == volume.read(ino, 0, 64)


def test_errors_of_the_interface(fat16: Path) -> None:
    volume = open_fat(fat16)
    file_ino = path_ino(volume, "sizes/size-1")
    dir_ino = path_ino(volume, "sizes")
    with pytest.raises(IsADirectoryError):
        volume.read(dir_ino, 0, 10)
    with pytest.raises(IsADirectoryError):
        volume.read(volume.root_ino, 0, 10)
    with pytest.raises(NotADirectoryError):
        list(volume.readdir(file_ino))
    with pytest.raises(CorruptImage):
        volume.readlink(file_ino)
    with pytest.raises(CorruptImage):
        volume.getattr(12345)  # never listed, and no entry there
    assert volume.read(file_ino, 5, 10) == b""
    assert volume.has_xattrs


# -- other makers and formats -----------------------------------------------------------------


def test_fat32_with_few_clusters(top: Path) -> None:
    """mkfs.fat -F 32 -s 8 on 40 MB: 9.8k clusters, FAT32 all the same (as Linux reads it)."""
    image = mkfs(top / "few.img", 40000, "-F", "32", "-s", "8")
    volume = open_fat(image)
    assert volume.geometry.fat_bits == 32 and volume.geometry.clusters < 65525
    assert list(volume.readdir(volume.root_ino)) == []
    fs = volume.statfs()
    assert fs.blocks_free == fs.blocks - 1  # the root directory's cluster


def _probes(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return FatVolume.probe(BlockReader(fd))
    finally:
        os.close(fd)


def test_probe_refuses_other_formats(top: Path, fat16: Path) -> None:
    assert _probes(fat16)
    blank = top / "blank.img"
    blank.write_bytes(bytes(1 << 20))
    ext4 = top / "ext4.img"
    ext4.write_bytes(bytes(8 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", ext4], check=True, capture_output=True)
    squash = top / "squash.img"
    squash.write_bytes(b"hsqs" + bytes(4096))
    samples = Path(__file__).parent.parent / "images"
    others = [blank, ext4, squash, *samples.glob("sample-*.img")]
    # An ext4 image made over an old FAT boot sector keeps it: the ext4 magic still wins.
    fat_boot = read_bytes(fat16, 0, 512)
    stale = top / "ext4-over-fat.img"
    stale.write_bytes(fat_boot + ext4.read_bytes()[512:])
    others.append(stale)
    for path in others:
        assert not _probes(path), path


def test_fat_names_for_the_registry() -> None:
    assert FatVolume.fs_type == "vfat"
    assert FatVolume.fs_aliases == {"fat", "msdos", "fat12", "fat16", "fat32"}
    assert {"codepage", "iocharset", "tz", "uid", "gid", "umask", "dmask", "fmask"} <= set(
        FatVolume.accepted_options
    )


def test_usefree_takes_fsinfo_count(images: dict[str, Path], top: Path, tmp_path: Path) -> None:
    image = image_of(images, top, "fat32-s1")
    counted = open_fat(image).statfs()
    hinted = open_fat(image, usefree="")
    assert hinted.geometry.fsinfo is not None
    assert hinted.statfs().blocks_free == hinted.geometry.fsinfo.free_count
    assert counted.blocks_free == mdir_free_bytes(image) // counted.block_size


def test_reads_outside_the_file(fat16: Path) -> None:
    volume = open_fat(fat16)
    ino = path_ino(volume, "sizes/size-4097")
    data = pattern(4097, 8)
    assert volume.read(ino, -5, 10) == b""
    assert volume.read(ino, 4096, 100) == data[4096:]
    assert volume.read(ino, 4097, 100) == b""
    assert volume.read(ino, 10, 0) == b""
    assert volume.read(ino, 0, 1 << 30) == data


# -- speed ------------------------------------------------------------------------------------


def test_a_big_volume_walks_and_reads_whole(top: Path) -> None:
    """20k entries in 100 directories and a 32 MiB file: a stat walk sees every entry,
    random 4 KiB reads and 128 KiB sequential reads (which are read ahead) get the
    file's bytes. How fast is the benchmark's question (benchmarks/bench.py), not this
    test's: timings on a shared machine only make a test flaky."""
    src = top / "speed-src"
    for d in range(100):
        folder = src / f"dir{d:03d}"
        folder.mkdir(parents=True)
        for i in range(200):
            (folder / f"{i:03d} file {d}-{i}.txt").write_bytes(b"x" * (i * 37))
    big = src / "big.bin"
    big.write_bytes(pattern(32 << 20, 9))
    image = mkfs(top / "speed.img", 262144, "-F", "32")
    mtools("mcopy", image, "-s", "-m", *sorted(src.iterdir()), "::/")
    volume = open_fat(image)
    assert _stat_walk(volume) == 100 * 201 + 1
    ino = volume.lookup(volume.root_ino, b"big.bin")
    size = volume.getattr(ino).size
    expected = big.read_bytes()
    rng = random.Random(4)
    for _ in range(2000):
        offset = rng.randrange(size // 4096) * 4096
        assert volume.read(ino, offset, 4096) == expected[offset : offset + 4096]
    assert read_all(volume, ino, size, piece=1 << 17) == expected


def _stat_walk(volume: FatVolume) -> int:
    seen = 0
    pending = [volume.root_ino]
    while pending:
        for entry in volume.readdir(pending.pop()):
            seen += 1
            if volume.getattr(entry.ino).is_dir:
                pending.append(entry.ino)
    return seen


def test_a_boot_sector_without_55aa_is_still_fat(tmp_path: Path) -> None:
    """The kernel's fat_fill_super never checks the boot signature; neither do we.

    (Old floppies and syzkaller's images lack it; mtools and Linux read them.)
    """
    image = tmp_path / "unsigned.img"
    subprocess.run(
        ["mkfs.fat", "-F", "16", "-C", str(image), "32768"], check=True, capture_output=True
    )
    source = tmp_path / "hello.txt"
    source.write_text("hello\n")
    subprocess.run(
        ["mcopy", "-i", str(image), str(source), "::/"],
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    with open(image, "r+b") as f:
        f.seek(510)
        f.write(b"\0\0")
    fd = os.open(image, os.O_RDONLY)
    try:
        assert FatVolume.probe(BlockReader(fd))
        volume = FatVolume.open(BlockReader(fd), {})
        ino = volume.lookup(volume.root_ino, b"hello.txt")
        assert volume.read(ino, 0, 100) == b"hello\n"
    finally:
        os.close(fd)
