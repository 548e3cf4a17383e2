"""The FAT driver on damaged images: the documented outcome, for the right request, quickly.

Base images are made by mkfs.fat and mtools; the damage is patched in at offsets found
with the library's own layout declarations and geometry (an inode number times 32 is its
directory entry).  Every outcome is one of: the open refused with the kernel's reason,
CorruptImage (EIO) for the one file or directory that is damaged, or a documented
tolerance (cross-linked files read the same clusters, as in the kernel).
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import (
    BlockReader,
    CorruptImage,
    Unsupported,
)
from drivers.fat import FatVolume
from drivers.fat.bootsector import Geometry
from drivers.fat.layout import BPB, BPB32, DIR_ENTRY, FSINFO, LDIR_ENTRY
from tests.support.fuzzing import Seed, apply, byte_mutations, check_image, make_seed, trimmed
from tests.test_fat_unit_helpers import (
    can_build,
    listing,
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

CLUSTER = 2048
BIG_CLUSTERS = 20
THREE_SLOTS = "a long name that needs three slots.txt"


def make_source(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "big.bin").write_bytes(pattern(BIG_CLUSTERS * CLUSTER, 1))
    (root / "other.bin").write_bytes(pattern(5 * CLUSTER, 2))
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "Mixed.Txt").write_bytes(b"mixed\n")
    (root / THREE_SLOTS).write_bytes(b"three\n")
    (root / "after.txt").write_bytes(b"after\n")
    (root / "d" / "self").mkdir(parents=True)
    (root / "d" / "e" / "f").mkdir(parents=True)
    (root / "d" / "e" / "f" / "leaf.txt").write_bytes(b"leaf\n")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("fat-corrupt")
    make_source(top / "src")
    return top


@pytest.fixture(scope="module")
def base16(sources: Path) -> Path:
    image = mkfs(sources / "base16.img", 16384, "-F", "16", "-s", "4")
    mtools("mcopy", image, "-s", "-m", *sorted((sources / "src").iterdir()), "::/")
    return image


@pytest.fixture(scope="module")
def base32(sources: Path) -> Path:
    image = mkfs(sources / "base32.img", 65536, "-F", "32", "-s", "1")
    mtools("mcopy", image, "-s", "-m", *sorted((sources / "src").iterdir()), "::/")
    return image


@pytest.fixture
def image(base16: Path, tmp_path: Path) -> Path:
    """A fresh copy of the FAT16 base image for one test to damage."""
    return Path(shutil.copy(base16, tmp_path / "damaged.img"))


@pytest.fixture
def image32(base32: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(base32, tmp_path / "damaged32.img"))


def start_of(image: Path, ino: int, fat32: bool = False) -> int:
    """The first cluster in the directory entry of inode ``ino``."""
    raw = DIR_ENTRY.unpack_record(read_bytes(image, ino * 32, 32))
    start: int = raw.DIR_FstClusLO | ((raw.DIR_FstClusHI << 16) if fat32 else 0)
    return start


def set_fat(image: Path, g: Geometry, cluster: int, value: int) -> None:
    """Write one FAT entry in every FAT copy (FAT16 or FAT32)."""
    width = g.fat_bits // 8
    for copy in range(g.fat_count):
        offset = g.fat_offset + copy * g.fat_bytes + cluster * width
        patch(image, offset, value.to_bytes(width, "little"))


def set_field(image: Path, ino: int, field: str, value: int) -> None:
    size = DIR_ENTRY.size_of(field)
    patch(image, ino * 32 + DIR_ENTRY.offset_of(field), value.to_bytes(size, "little"))


def _timeout(signum: int, frame: object) -> None:
    raise TimeoutError("the driver did not finish in bounded time")


@pytest.fixture(autouse=True)
def timer() -> Iterator[None]:
    """Every damaged image is handled in bounded time (an endless loop fails the test)."""
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(20)
    began = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - began < 10


# -- cluster chains ---------------------------------------------------------------------------


def _big(image: Path) -> tuple[FatVolume, int, int]:
    volume = open_fat(image)
    ino = path_ino(volume, "big.bin")
    return volume, ino, start_of(image, ino)


def _chain_damage(image: Path, index: int, value: int) -> tuple[FatVolume, int]:
    """Make FAT[cluster ``index`` of big.bin] = value; reopen."""
    volume, ino, start = _big(image)
    assert volume._file_chain(start, BIG_CLUSTERS * CLUSTER).runs == 1
    set_fat(image, volume.geometry, start + index, value)
    return open_fat(image), ino


def _readable_up_to(volume: FatVolume, ino: int, clusters: int) -> None:
    expected = pattern(BIG_CLUSTERS * CLUSTER, 1)
    good = clusters * CLUSTER
    assert volume.read(ino, 0, good) == expected[:good]
    assert volume.getattr(ino).size == BIG_CLUSTERS * CLUSTER  # the size is not changed
    with pytest.raises(CorruptImage):
        volume.read(ino, good, 10)
    with pytest.raises(CorruptImage):
        volume.read(ino, good - 10, 20)  # a request that crosses into the lost part


def test_chain_loop_ends_the_file_where_it_repeats(image: Path) -> None:
    volume, ino, start = _big(image)
    set_fat(image, volume.geometry, start + 4, start + 1)  # 0 1 2 3 4 -> 1 2 3 4 -> 1 ...
    volume = open_fat(image)
    _readable_up_to(volume, ino, 5)
    with pytest.raises(CorruptImage, match="loops back"):
        volume.read(ino, 5 * CLUSTER, 1)


def test_chain_looping_on_itself(image: Path) -> None:
    volume, ino, start = _big(image)
    set_fat(image, volume.geometry, start + 2, start + 2)
    _readable_up_to(open_fat(image), ino, 3)


def test_chain_shorter_than_the_file(image: Path) -> None:
    volume, ino = _chain_damage(image, 3, 0xFFFF)
    _readable_up_to(volume, ino, 4)
    with pytest.raises(CorruptImage, match="chain ends"):
        volume.read(ino, 4 * CLUSTER, 1)


def test_bad_cluster_mark_ends_the_chain(image: Path) -> None:
    """0xFFF7 ends a chain as an end-of-chain mark does (fat16_ent_get)."""
    volume, ino = _chain_damage(image, 3, 0xFFF7)
    _readable_up_to(volume, ino, 4)


def test_cluster_number_past_the_end(image: Path) -> None:
    volume, ino, _ = _big(image)
    volume, ino = _chain_damage(image, 6, volume.geometry.max_cluster + 5)
    _readable_up_to(volume, ino, 7)
    with pytest.raises(CorruptImage, match="invalid cluster"):
        volume.read(ino, 7 * CLUSTER, 1)


def test_free_cluster_in_a_chain(image: Path) -> None:
    volume, ino = _chain_damage(image, 0, 0)
    _readable_up_to(volume, ino, 1)
    with pytest.raises(CorruptImage, match="free cluster"):
        volume.read(ino, CLUSTER, 1)


def test_reserved_cluster_one_in_a_chain(image: Path) -> None:
    volume, ino = _chain_damage(image, 9, 1)
    _readable_up_to(volume, ino, 10)


def test_invalid_start_cluster(image: Path) -> None:
    volume, ino, _ = _big(image)
    for start in (1, volume.geometry.max_cluster, 0xFFFE):
        set_field(image, ino, "DIR_FstClusLO", start)
        damaged = open_fat(image)
        assert damaged.getattr(ino).size == BIG_CLUSTERS * CLUSTER
        with pytest.raises(CorruptImage, match="invalid start cluster"):
            damaged.read(ino, 0, 1)


def test_no_chain_for_a_file_with_a_size(image: Path) -> None:
    """Start cluster 0 and a size: EIO (the kernel would read zeros)."""
    _, ino, _ = _big(image)
    set_field(image, ino, "DIR_FstClusLO", 0)
    with pytest.raises(CorruptImage):
        open_fat(image).read(ino, 0, 1)


def test_huge_claimed_size(image: Path) -> None:
    _, ino, _ = _big(image)
    set_field(image, ino, "DIR_FileSize", 0xFFFFFFFF)
    damaged = open_fat(image)
    assert damaged.getattr(ino).size == 0xFFFFFFFF
    assert damaged.read(ino, 0, CLUSTER) == pattern(BIG_CLUSTERS * CLUSTER, 1)[:CLUSTER]
    with pytest.raises(CorruptImage):
        damaged.read(ino, 0xFFFF0000, 10)


def test_cross_linked_files_share_their_clusters(image: Path) -> None:
    """Two entries on one chain both read it (the kernel does the same; fsck.fat complains)."""
    volume, big, start = _big(image)
    other = path_ino(volume, "other.bin")
    set_field(image, other, "DIR_FstClusLO", start)
    damaged = open_fat(image)
    big_data = pattern(BIG_CLUSTERS * CLUSTER, 1)
    assert damaged.read(other, 0, 5 * CLUSTER) == big_data[: 5 * CLUSTER]
    assert read_all(damaged, big, BIG_CLUSTERS * CLUSTER) == big_data


# -- directories ------------------------------------------------------------------------------


def test_directory_that_contains_itself(image: Path) -> None:
    volume = open_fat(image)
    d = path_ino(volume, "d")
    self_ino = volume.lookup(d, b"self")
    set_field(image, self_ino, "DIR_FstClusLO", start_of(image, d))
    damaged = open_fat(image)
    d = path_ino(damaged, "d")
    with pytest.raises(CorruptImage, match="loop"):
        damaged.lookup(d, b"self")
    with pytest.raises(CorruptImage):
        list(damaged.readdir(d))
    assert damaged.getattr(d).nlink >= 2


def test_directory_loop_through_a_child(image: Path) -> None:
    """d/e/f where f is d again: the walk down d/e/f/e is refused."""
    volume = open_fat(image)
    d = path_ino(volume, "d")
    e = volume.lookup(d, b"e")
    f = volume.lookup(e, b"f")
    set_field(image, f, "DIR_FstClusLO", start_of(image, d))
    damaged = open_fat(image)
    d = path_ino(damaged, "d")
    e = damaged.lookup(d, b"e")
    f = damaged.lookup(e, b"f")
    with pytest.raises(CorruptImage, match=r"two directories|loop"):
        damaged.lookup(f, b"e")


def test_directory_chain_loop(image: Path) -> None:
    volume = open_fat(image)
    d = path_ino(volume, "d")
    start = start_of(image, d)
    set_fat(image, volume.geometry, start, start)
    damaged = open_fat(image)
    d = path_ino(damaged, "d")
    with pytest.raises(CorruptImage, match="loops back"):
        damaged.getattr(d)
    with pytest.raises(CorruptImage):
        list(damaged.readdir(d))
    assert damaged.read(path_ino(damaged, "hello.txt"), 0, 10) == b"hello\n"


def test_directory_with_a_free_cluster_in_its_chain(image: Path) -> None:
    volume = open_fat(image)
    d = path_ino(volume, "d")
    set_fat(image, volume.geometry, start_of(image, d), 0)
    with pytest.raises(CorruptImage, match="free cluster"):
        open_fat(image).getattr(d)


def test_directory_without_dot_entries(image: Path) -> None:
    """fat_validate_dir: fewer than 2 subdirectory entries is a corrupted directory."""
    volume = open_fat(image)
    d = path_ino(volume, "d")
    self_ino = volume.lookup(d, b"self")
    first = volume.geometry.cluster_offset(start_of(image, self_ino))
    patch(image, first, b"\xe5")
    patch(image, first + 32, b"\xe5")
    damaged = open_fat(image)
    with pytest.raises(CorruptImage, match="invalid entries"):
        damaged.getattr(self_ino)


def test_subdirectory_pointing_at_the_root(image32: Path) -> None:
    volume = open_fat(image32)
    d = path_ino(volume, "d")
    root = volume.geometry.root_cluster
    set_field(image32, d, "DIR_FstClusLO", root & 0xFFFF)
    set_field(image32, d, "DIR_FstClusHI", root >> 16)
    with pytest.raises(CorruptImage, match="invalid i_start"):
        open_fat(image32).getattr(d)


def test_fat32_root_chain_loop_refuses_the_mount(image32: Path) -> None:
    volume = open_fat(image32)
    root = volume.geometry.root_cluster
    set_fat(image32, volume.geometry, root, root)
    with pytest.raises(CorruptImage, match="root directory"):
        open_fat(image32)


def test_end_marker_stops_the_listing(image: Path) -> None:
    volume = open_fat(image)
    names = list(listing(volume, volume.root_ino))
    hello = volume.lookup(volume.root_ino, b"hello.txt")
    patch(image, hello * 32, b"\0")
    damaged = open_fat(image)
    shown = list(listing(damaged, damaged.root_ino))
    assert shown == names[: names.index(b"hello.txt")]
    with pytest.raises(FileNotFoundError):
        damaged.lookup(damaged.root_ino, b"other.bin")


def test_short_name_with_a_slash(image: Path) -> None:
    volume = open_fat(image)
    hello = volume.lookup(volume.root_ino, b"hello.txt")
    patch(image, hello * 32, b"HE/LO   ")
    damaged = open_fat(image)
    with pytest.raises(CorruptImage, match="invalid entry name"):
        list(damaged.readdir(damaged.root_ino))


def test_kanji_lead_byte(image: Path) -> None:
    """0x05 as the first byte stands for 0xE5 (sigma in code page 437)."""
    volume = open_fat(image)
    hello = volume.lookup(volume.root_ino, b"hello.txt")
    patch(image, hello * 32, b"\x05ELLO")
    damaged = open_fat(image)
    assert damaged.lookup(damaged.root_ino, "\u03c3ello.txt".encode()) == hello  # sigma
    in_850 = open_fat(image, codepage="850")  # 0xE5 is O tilde, lower-cased by the NT flag
    assert in_850.lookup(damaged.root_ino, "\u00f5ello.txt".encode()) == hello


# -- long names -------------------------------------------------------------------------------


def _long_slots(image: Path, volume: FatVolume, name: str) -> tuple[int, list[int]]:
    """The short entry's inode and the positions of its long name entries, first stored first."""
    ino = volume.lookup(volume.root_ino, name.encode())
    slots: list[int] = []
    position = ino * 32 - 32
    while read_bytes(image, position + 11, 1) == b"\x0f":
        slots.insert(0, position)
        position -= 32
    return ino, slots


def test_long_name_checksum_mismatch_shows_the_short_name(image: Path) -> None:
    volume = open_fat(image)
    ino, slots = _long_slots(image, volume, "Mixed.Txt")
    assert len(slots) == 1
    offset = LDIR_ENTRY.offset_of("LDIR_Chksum")
    old = read_bytes(image, slots[0] + offset, 1)[0]
    patch(image, slots[0] + offset, bytes([old ^ 0x55]))
    damaged = open_fat(image)
    names = listing(damaged, damaged.root_ino)
    assert b"Mixed.Txt" not in names and names[b"MIXED.TXT"] == ino


def test_orphaned_long_name_is_skipped(image: Path) -> None:
    volume = open_fat(image)
    ino, slots = _long_slots(image, volume, THREE_SLOTS)
    assert len(slots) == 3
    patch(image, ino * 32, b"\xe5")  # the short entry is deleted, its long name left over
    names = listing(open_fat(image), volume.root_ino)
    assert THREE_SLOTS.encode() not in names and b"after.txt" in names


def test_long_name_out_of_sequence(image: Path) -> None:
    volume = open_fat(image)
    ino, slots = _long_slots(image, volume, THREE_SLOTS)
    patch(image, slots[1], b"\x03")  # the middle entry says 3 instead of 2
    names = listing(open_fat(image), volume.root_ino)
    assert THREE_SLOTS.encode() not in names
    assert ino in names.values()  # listed under its short name


def _set_units(image: Path, slot: int, units: list[int]) -> None:
    """Write the first UTF-16 units of LDIR_Name1 of a long name entry."""
    data = b"".join(u.to_bytes(2, "little") for u in units)
    patch(image, slot + LDIR_ENTRY.offset_of("LDIR_Name1"), data)


def test_long_name_surrogates(image: Path) -> None:
    volume = open_fat(image)
    ino, slots = _long_slots(image, volume, "Mixed.Txt")
    _set_units(image, slots[0], [0xD83D, 0xDE00])  # a valid pair: U+1F600
    assert listing(open_fat(image), 1)["😀xed.Txt".encode()] == ino
    _set_units(image, slots[0], [0xD83D, ord("i")])  # a lone high surrogate is dropped
    assert listing(open_fat(image), 1)[b"ixed.Txt"] == ino


def test_unusable_long_names_fall_back_to_the_short_name(image: Path) -> None:
    volume = open_fat(image)
    ino, slots = _long_slots(image, volume, "Mixed.Txt")
    for units in ([ord("a"), ord("/"), ord("b"), 0], [0], [ord("."), ord("."), 0]):
        _set_units(image, slots[0], units)
        assert listing(open_fat(image), 1)[b"MIXED.TXT"] == ino


# -- boot sector ------------------------------------------------------------------------------

BPB_DAMAGE = [
    ("BPB_SecPerClus", 0, "bogus sectors per cluster 0"),
    ("BPB_SecPerClus", 3, "bogus sectors per cluster 3"),
    ("BPB_RsvdSecCnt", 0, "bogus number of reserved sectors"),
    ("BPB_NumFATs", 0, "bogus number of FAT structure"),
    ("BPB_Media", 0x12, "invalid media value"),
    ("BPB_BytsPerSec", 256, "bogus logical sector size 256"),
    ("BPB_BytsPerSec", 8192, "bogus logical sector size 8192"),
    ("BPB_BytsPerSec", 1000, "bogus logical sector size 1000"),
    ("BPB_RootEntCnt", 17, "bogus number of directory entries"),
    # A FAT16 BPB without BPB_FATSz16 is read as FAT32 (as the kernel reads it), whose
    # BPB_FATSz32 is the drive number and boot signature here: far too big.
    ("BPB_FATSz16", 0, "count of clusters too big"),
    ("BPB_TotSec16", 10, "count of clusters too big"),
]


def _probe(image: Path) -> bool:
    with open(image, "rb") as f:
        return FatVolume.probe(BlockReader(f.fileno()))


@pytest.mark.parametrize(("field", "value", "message"), BPB_DAMAGE)
def test_bad_bpb_is_refused(image: Path, field: str, value: int, message: str) -> None:
    if field == "BPB_TotSec16":
        patch(image, BPB.offset_of("BPB_TotSec32"), bytes(4))
    patch(image, BPB.offset_of(field), value.to_bytes(BPB.size_of(field), "little"))
    with pytest.raises(CorruptImage, match=message):
        open_fat(image)
    assert not _probe(image)


def test_no_fat_size_at_all(image: Path) -> None:
    patch(image, BPB.offset_of("BPB_FATSz16"), bytes(2))
    patch(image, BPB32.offset_of("BPB_FATSz32"), bytes(4))
    with pytest.raises(CorruptImage, match="bogus number of FAT sectors"):
        open_fat(image)


def test_fat16_with_too_many_clusters(image: Path) -> None:
    patch(image, BPB.offset_of("BPB_SecPerClus"), b"\x01")
    patch(image, BPB.offset_of("BPB_FATSz16"), (300).to_bytes(2, "little"))
    patch(image, BPB.offset_of("BPB_TotSec16"), bytes(2))
    patch(image, BPB.offset_of("BPB_TotSec32"), (200_000).to_bytes(4, "little"))
    with pytest.raises(CorruptImage, match="count of clusters too big"):
        open_fat(image)


def test_type_label_is_ignored(image: Path) -> None:
    """BS_FilSysType says nothing: a FAT16 volume labelled FAT12 is still FAT16."""
    patch(image, 54, b"FAT12   ")
    volume = open_fat(image)
    assert volume.geometry.fat_bits == 16
    assert volume.read(path_ino(volume, "hello.txt"), 0, 10) == b"hello\n"


def test_truncated_image(image: Path) -> None:
    volume = open_fat(image)
    g = volume.geometry
    big = path_ino(volume, "big.bin")
    cut = g.cluster_offset(start_of(image, big)) + 3 * CLUSTER + 100
    with open(image, "r+b") as f:
        f.truncate(cut)
    damaged = open_fat(image)  # the data region is cut, not the FATs: it mounts
    assert damaged.read(big, 0, 3 * CLUSTER) == pattern(BIG_CLUSTERS * CLUSTER, 1)[: 3 * CLUSTER]
    with pytest.raises(CorruptImage, match="outside the image"):
        damaged.read(big, 3 * CLUSTER, CLUSTER)
    with open(image, "r+b") as f:
        f.truncate(g.fat_offset + 1000)
    with pytest.raises(CorruptImage, match="truncated"):
        open_fat(image)
    assert _probe(image)  # still a FAT boot sector: the open says why it is refused
    with open(image, "r+b") as f:
        f.truncate(300)
    assert not _probe(image)
    with pytest.raises(CorruptImage):
        open_fat(image)


def test_exfat_is_refused_by_name(tmp_path: Path) -> None:
    boot = bytearray(4096)
    boot[0:3] = b"\xeb\x76\x90"
    boot[3:11] = b"EXFAT   "
    boot[510:512] = b"\x55\xaa"
    image = tmp_path / "exfat.img"
    image.write_bytes(bytes(boot) * 256)
    assert _probe(image)
    with pytest.raises(Unsupported, match="exFAT is not supported"):
        open_fat(image)


def _zero_primary(image: Path, sector_size: int = 512) -> None:
    patch(image, 0, bytes(sector_size))


def test_fat32_backup_boot_sector(image32: Path) -> None:
    volume = open_fat(image32)
    names = listing(volume, volume.root_ino)
    _zero_primary(image32)
    assert _probe(image32)
    rescued = open_fat(image32)
    assert rescued.geometry.boot_sector == 6
    assert listing(rescued, rescued.root_ino) == names
    assert rescued.read(path_ino(rescued, "d/e/f/leaf.txt"), 0, 10) == b"leaf\n"
    assert rescued.statfs() == volume.statfs()
    patch(image32, 6 * 512 + BPB.offset_of("BPB_SecPerClus"), b"\x00")  # the backup too
    assert not _probe(image32)
    with pytest.raises(CorruptImage, match=r"bogus|valid FAT"):
        open_fat(image32)


def test_fat32_backup_found_through_bkbootsec(image32: Path) -> None:
    """A primary whose BPB is damaged but whose BPB_BkBootSec still names the copy."""
    patch(image32, BPB.offset_of("BPB_NumFATs"), b"\x00")
    assert open_fat(image32).geometry.boot_sector == 6


def test_fat32_backup_with_4k_sectors(sources: Path, tmp_path: Path) -> None:
    image = mkfs(tmp_path / "4k.img", 300000, "-F", "32", "-S", "4096")
    mtools("mcopy", image, "-m", sources / "src" / "hello.txt", "::/")
    _zero_primary(image, 4096)
    rescued = open_fat(image)
    assert rescued.geometry.boot_sector == 6 and rescued.geometry.bytes_per_sector == 4096
    assert rescued.read(path_ino(rescued, "hello.txt"), 0, 10) == b"hello\n"


def test_fat16_has_no_backup(image: Path) -> None:
    _zero_primary(image)
    assert not _probe(image)
    with pytest.raises(CorruptImage):
        open_fat(image)


def test_fsinfo_with_bad_signatures_is_ignored(image32: Path) -> None:
    volume = open_fat(image32)
    assert volume.geometry.fsinfo is not None
    sector = BPB32.unpack_record(read_bytes(image32, 0, 512), BPB.size).BPB_FSInfo
    patch(image32, sector * 512 + FSINFO.offset_of("FSI_LeadSig"), b"XXXX")
    damaged = open_fat(image32)
    assert damaged.geometry.fsinfo is None
    assert damaged.statfs() == volume.statfs()


def test_bad_options_are_refused(base16: Path) -> None:
    for options, message in (
        ({"codepage": "99999"}, "codepage cp99999 not found"),
        ({"codepage": "x"}, "bad value"),
        ({"iocharset": "iso8859-1"}, "always UTF-8"),
        ({"utf8": "0"}, "always UTF-8"),
        ({"tz": "CET"}, "only tz=UTC"),
        ({"time_offset": "2000"}, "bad value"),
        ({"umask": "999"}, "bad value"),
        ({"uid": "-1"}, "bad value"),
        ({"shortname": "odd"}, "bad value"),
        ({"showexec": "yes"}, "takes no value"),
        ({"noload": ""}, "does not know"),
    ):
        with pytest.raises(Unsupported, match=message):
            open_fat(base16, **options)
    volume = open_fat(base16, iocharset="utf8", utf8="", codepage="850", shortname="lower")
    assert b"hello.txt" in listing(volume, volume.root_ino)


# -- random damage ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damage_seeds(base16: Path, base32: Path) -> dict[str, Seed]:
    """The FAT16 and FAT32 base images as fuzzing seeds (boot sector, FATs, directories),
    cut after their last cluster in use so that an example does not copy 64 MiB."""
    return {
        "FAT16": make_seed("fat-corrupt-base16", trimmed(base16.read_bytes())),
        "FAT32": make_seed("fat-corrupt-base32", trimmed(base32.read_bytes())),
    }


@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_random_damage(damage_seeds: dict[str, Seed], data: st.DataObject) -> None:
    """Random bytes in the boot sector, FAT and directories: documented errors, quickly
    (the property of tests/test_fuzz_library.py, on this file's base images)."""
    seed = damage_seeds[data.draw(st.sampled_from(sorted(damage_seeds)), label="base")]
    damage = data.draw(byte_mutations(seed, max_size=12), label="damage")
    check_image(apply(seed, damage), "vfat", time_limit=2)
