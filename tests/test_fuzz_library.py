"""Hostile images through the library: whatever the bytes, only the driver's own errors.

One property per format, over every seed of that format (tests/support/fuzzing.py):
ext4 without checksums (inline data, extents, htree), ext4 with metadata_csum and a
journal, ext2 (indirect blocks); squashfs with patchable metadata at 128 KiB and 4 KiB
blocks, and one with everything compressed; FAT12, FAT16 and FAT32.  Each example
damages bytes of the metadata or sets fields to crafted values, opens the result
through the registry and walks all of it: only CorruptImage, Unsupported,
FileNotFoundError, NotADirectoryError, IsADirectoryError and NoSuchAttribute may come
out, within :data:`TIME_LIMIT` seconds and :data:`MEMORY_BUDGET` bytes.

The runs are derandomized and keep no database, so CI sees the same examples every
time; ``PYFSMOUNT_FUZZ_EXAMPLES=N`` runs N examples per seed instead.  Open-ended
fuzzing with a database is ``make fuzz`` (scripts/fuzz.py).

The first tests check the framework itself: the seeds are walked cleanly, the fields
are where the driver reads them, re-sealed fields reach the parser, and the checker
does catch a hang, a memory blowup and a stray exception.
"""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from drivers.base import CorruptImage
from tests.support.fuzzing import (
    MEMORY_BUDGET,
    RUNAWAY_CAP,
    TIME_LIMIT,
    SetByte,
    SetField,
    apply,
    check_image,
    mutations,
    pristine_files,
    seed,
    seed_names,
    seed_unavailable,
    volume_of,
)

#: Examples per seed (three seeds per format).  An example costs 5-100 ms here, so the
#: whole file takes about 45 s on an idle 2-core machine.
EXAMPLES = int(os.environ.get("PYFSMOUNT_FUZZ_EXAMPLES", "0"))
DEFAULT_EXAMPLES = {"ext4": 200, "squashfs": 300, "fat": 300}


def fuzz_settings(fmt: str) -> settings:
    return settings(
        max_examples=EXAMPLES or DEFAULT_EXAMPLES[fmt],
        deadline=None,  # check_image enforces its own limits, with a better message
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def needs(fmt: str) -> pytest.MarkDecorator:
    reason = seed_unavailable(fmt)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


ALL_SEEDS = [
    pytest.param(name, marks=needs(fmt))
    for fmt in ("ext4", "squashfs", "fat")
    for name in seed_names(fmt)
]


def survive(name: str, data: st.DataObject) -> None:
    """The property: a mutation of seed ``name`` gets only driver errors out, in bounds."""
    s = seed(name)
    changes = data.draw(mutations(s), label="mutations")
    outcome = check_image(apply(s, changes), s.fs_type)
    event("opened" if outcome.opened else "refused at open")


# -- the framework -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SEEDS)
def test_a_pristine_seed_is_walked_without_errors(name: str) -> None:
    """Untouched, a seed is all there (so a failure of a mutation is the mutation's)."""
    s = seed(name)
    outcome = check_image(s.image, s.fs_type)
    assert outcome.opened and outcome.summary is not None
    assert set(outcome.summary.errors) == {"getxattr: NoSuchAttribute"}  # the absent name
    assert outcome.summary.files >= 425 and outcome.summary.directories >= 7
    assert outcome.seconds < TIME_LIMIT / 5
    assert len(s.image) <= 4 << 20  # an example copies it: a few MiB at most
    assert set(s.kinds) >= {"superblock" if s.format != "fat" else "boot sector"}


@pytest.mark.parametrize("name", ALL_SEEDS)
def test_fields_hold_their_values_and_reseal_to_the_same_bytes(name: str) -> None:
    """Setting every field to what it holds changes nothing, checksums included: the
    seals compute exactly what mke2fs wrote."""
    s = seed(name)
    same = [
        SetField(i, int.from_bytes(s.image[f.offset : f.offset + f.width], "little"), "same")
        for i, f in enumerate(s.fields)
    ]
    assert apply(s, same) == s.image
    assert all(offset + length <= len(s.image) for offset, length in s.regions)


def field_values(name: str, suffix: str) -> dict[str, int]:
    """Description -> stored value of the seed's fields whose description ends so."""
    s = seed(name)
    return {
        f.description: int.from_bytes(s.image[f.offset : f.offset + f.width], "little")
        for f in s.fields
        if f.description.endswith(suffix)
    }


@needs("ext4")
def test_ext4_fields_are_the_ones_the_driver_parses() -> None:
    for name in seed_names("ext4"):
        assert field_values(name, "superblock s_magic") == {"superblock s_magic": 0xEF53}
        assert {"inode", "directory entry", "htree", "group descriptor"} <= set(seed(name).kinds)
        links = field_values(name, " i_links_count")
        assert len(links) >= 440
        with volume_of(seed(name).image) as volume:
            for description, value in links.items():
                ino = int(description.split()[1])
                if ino != 8:  # the journal: not reachable through the interface
                    assert volume.getattr(ino).nlink == value, description


@needs("squashfs")
def test_squashfs_fields_are_the_ones_the_driver_parses() -> None:
    for name in ("squashfs-gzip", "squashfs-4k"):
        numbers = field_values(name, " inode_number")
        inodes = {d: v for d, v in numbers.items() if len(d.split()) == 3}  # "inode N field"
        assert len(inodes) >= 440
        assert {"directory index", "directory header", "block list"} <= set(seed(name).kinds)
        assert all(int(d.split()[1]) == v for d, v in inodes.items())
        sizes = field_values(name, " file_size")
        assert sizes, "regular files and directories have a file_size"
    assert field_values("squashfs-packed", "superblock s_magic") == {
        "superblock s_magic": 0x73717368
    }


@needs("fat")
def test_fat_fields_are_the_ones_the_driver_parses() -> None:
    for name in seed_names("fat"):
        files = pristine_files(name)
        sizes = field_values(name, " DIR_FileSize")
        for path, contents in files.items():
            assert sizes[f"{path.decode()} DIR_FileSize"] == len(contents)
        assert set(field_values(name, "boot sector BPB_BytsPerSec").values()) == {512}


@needs("ext4")
def test_a_crafted_field_is_resealed_so_that_it_reaches_the_parser() -> None:
    """On metadata_csum, a field set through the strategy keeps a valid checksum (the
    new size shows), where the same bytes patched raw are refused by the checksum."""
    s = seed("ext4-csum")
    with volume_of(s.image) as volume:
        ino = volume.lookup(volume.root_ino, b"small.txt")
    index = next(i for i, f in enumerate(s.fields) if f.description == f"inode {ino} i_size_lo")
    size_at = s.fields[index].offset
    crafted = apply(s, [SetField(index, 5, "any")])
    raw = apply(s, [SetByte(size_at, 5)])
    assert crafted[size_at] == raw[size_at] == 5
    with volume_of(crafted) as volume:
        assert volume.getattr(ino).size == 5
        assert volume.read(ino, 0, 100) == b"hello"
    with volume_of(raw) as volume, pytest.raises(CorruptImage, match="checksum"):
        volume.getattr(ino)


@needs("fat")
def test_the_checker_catches_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    from drivers.fat import FatVolume

    def spin(self: object) -> None:
        while True:
            pass

    monkeypatch.setattr(FatVolume, "statfs", spin)
    s = seed("fat12")
    with pytest.raises(AssertionError, match="hangs"):
        check_image(s.image, s.fs_type, time_limit=0.5)


@needs("fat")
def test_the_checker_catches_a_memory_blowup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory filled beyond the budget is reported after the walk; an allocation so big
    that it fails (MemoryError, which the driver makes a CorruptImage) at once."""
    from drivers.base import guarded
    from drivers.fat import FatVolume

    kept: list[bytes] = []

    @guarded
    def fills(self: object) -> None:
        kept.append(b"x" * (2 * MEMORY_BUDGET))

    @guarded
    def asks_too_much(self: object) -> None:
        kept.append(bytes(2 * RUNAWAY_CAP))

    s = seed("fat12")
    monkeypatch.setattr(FatVolume, "statfs", fills)
    with pytest.raises(AssertionError, match="budget"):
        check_image(s.image, s.fs_type)
    kept.clear()
    monkeypatch.setattr(FatVolume, "statfs", asks_too_much)
    with pytest.raises(AssertionError, match="MemoryError"):
        check_image(s.image, s.fs_type)


@needs("fat")
def test_the_checker_lets_a_stray_exception_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from drivers.fat import FatVolume

    def broken(self: object, ino: int, name: bytes) -> int:
        raise TypeError("a bug")

    monkeypatch.setattr(FatVolume, "lookup", broken)
    s = seed("fat12")
    with pytest.raises(TypeError, match="a bug"):
        check_image(s.image, s.fs_type)


# -- the properties ------------------------------------------------------------------------


@needs("ext4")
@pytest.mark.parametrize("name", seed_names("ext4"))
@fuzz_settings("ext4")
@given(data=st.data())
def test_mutated_ext4_images_raise_only_driver_errors(name: str, data: st.DataObject) -> None:
    survive(name, data)


@needs("squashfs")
@pytest.mark.parametrize("name", seed_names("squashfs"))
@fuzz_settings("squashfs")
@given(data=st.data())
def test_mutated_squashfs_images_raise_only_driver_errors(name: str, data: st.DataObject) -> None:
    survive(name, data)


@needs("fat")
@pytest.mark.parametrize("name", seed_names("fat"))
@fuzz_settings("fat")
@given(data=st.data())
def test_mutated_fat_images_raise_only_driver_errors(name: str, data: st.DataObject) -> None:
    survive(name, data)


def test_the_seed_tree_has_every_kind_of_file() -> None:
    """Guard against a seed tree that lost its special files (devices need root)."""
    if seed_unavailable("ext4"):
        pytest.skip("no ext4 seeds here")
    with volume_of(seed("ext2").image) as volume:
        kinds = {stat.S_IFMT(volume.getattr(e.ino).mode) for e in volume.readdir(volume.root_ino)}
    wanted = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK}
    assert kinds >= wanted | {stat.S_IFIFO, stat.S_IFSOCK}
