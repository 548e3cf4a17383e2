"""The ext4 driver as a library against the kernel, on images of every option set.

For each option set of :data:`tests.support.images.OPTION_SETS` the kernel's read-only
loop mount of the image is the oracle: ``scan_volume`` of the driver must equal
``scan_path`` of the mount, entry for entry (type, mode, owners, size, nlink, rdev,
st_blocks, the three times to the nanosecond, contents, symlink targets, every xattr,
hard-link grouping).  Further tests: lookups (what FUSE does), resumed readdir, reads at
arbitrary offsets, inode numbers and statfs.

The FUSE differential test does the same through a pyfsmount mount::

    expected = images.kernel_scan("standard", option_set)
    ... mount the image with pyfsmount (a subprocess) at mnt ...
    assert_same_tree(None, mnt, expected=expected, label=option_set)
"""

from __future__ import annotations

import importlib
import os
import random
import stat

import pytest

from drivers.base import DirEntry, NoSuchAttribute, Volume
from tests.support.images import BIGDIR_SETS, OPTION_SETS, ImageCache
from tests.support.kernel import kernel_mount
from tests.support.scan import assert_scans_equal, opened, scan_volume, show_path


def _driver_or_skip() -> None:
    """Skip while drivers.ext4 is not written yet; a driver that exists but breaks fails."""
    try:
        module = importlib.import_module("drivers.ext4")
    except ModuleNotFoundError as exc:
        if exc.name == "drivers.ext4":
            pytest.skip("drivers.ext4 does not exist yet", allow_module_level=True)
        raise
    if getattr(module, "__file__", None) is None:  # a bare directory: namespace package
        pytest.skip("drivers.ext4 has no __init__.py yet", allow_module_level=True)


_driver_or_skip()

STANDARD_SETS = list(OPTION_SETS)


@pytest.fixture(scope="module")
def standard(images: ImageCache) -> ImageCache:
    """The cache, with every standard image built (in parallel) before the first test."""
    images.prebuild(("standard", name) for name in STANDARD_SETS)
    return images


@pytest.fixture(scope="module")
def bigdir(images: ImageCache) -> ImageCache:
    images.prebuild(("bigdir", name) for name in BIGDIR_SETS)
    return images


@pytest.mark.parametrize("option_set", STANDARD_SETS)
def test_library_matches_kernel(standard: ImageCache, option_set: str) -> None:
    expected = standard.kernel_scan("standard", option_set)
    with opened(standard.get("standard", option_set)) as volume:
        actual = scan_volume(volume)
    assert_scans_equal(expected, actual, label=option_set)


@pytest.mark.slow
@pytest.mark.parametrize("option_set", BIGDIR_SETS)
def test_library_matches_kernel_big_directory(bigdir: ImageCache, option_set: str) -> None:
    expected = bigdir.kernel_scan("bigdir", option_set)
    with opened(bigdir.get("bigdir", option_set)) as volume:
        actual = scan_volume(volume, use_lookup=True)
    assert_scans_equal(expected, actual, label=option_set)


@pytest.mark.parametrize("option_set", STANDARD_SETS)
def test_lookup_finds_what_readdir_lists(standard: ImageCache, option_set: str) -> None:
    """Every name resolves with lookup (as FUSE does); missing names and non-directories fail."""
    expected = standard.kernel_scan("standard", option_set)
    with opened(standard.get("standard", option_set)) as volume:
        actual = scan_volume(volume, use_lookup=True, contents=False)
        problems = []
        for path, entry in actual.items():
            if entry.kind == "dir":
                for missing in (b"no-such-name", b"n" * 256, b"x\xff"):
                    try:
                        volume.lookup(entry.ino, missing)
                        problems.append(f"{show_path(path)}: lookup {missing!r} succeeded")
                    except FileNotFoundError:
                        pass
                    except Exception as exc:
                        problems.append(f"{show_path(path)}: lookup {missing!r}: {exc!r}")
            elif entry.kind == "reg":
                try:
                    volume.lookup(entry.ino, b"x")
                    problems.append(f"{show_path(path)}: lookup in a file succeeded")
                except NotADirectoryError:
                    pass
                except Exception as exc:
                    problems.append(f"{show_path(path)}: lookup in a file: {exc!r}")
        assert problems[:20] == []
    assert_scans_equal(expected, actual, ignore=("sha256",), label=option_set)


def _listing(volume: Volume, ino: int, offset: int = 0) -> list[DirEntry]:
    return list(volume.readdir(ino, offset))


@pytest.mark.parametrize("option_set", STANDARD_SETS)
def test_readdir_resumes_at_every_offset(standard: ImageCache, option_set: str) -> None:
    with opened(standard.get("standard", option_set)) as volume:
        for path in (b"/", b"/dirs/medium", b"/names", b"/files", b"/dirs/empty"):
            ino = volume.root_ino
            for name in path.split(b"/")[1:] if path != b"/" else []:
                ino = volume.lookup(ino, name)
            entries = _listing(volume, ino)
            for index, entry in enumerate(entries):
                rest = _listing(volume, ino, entry.next_offset)
                assert rest == entries[index + 1 :], (path, index, entry)


@pytest.mark.slow
@pytest.mark.parametrize("option_set", BIGDIR_SETS)
def test_readdir_resumes_in_big_directory(bigdir: ImageCache, option_set: str) -> None:
    with opened(bigdir.get("bigdir", option_set)) as volume:
        ino = volume.lookup(volume.root_ino, b"bigdir")
        entries = _listing(volume, ino)
        assert len(entries) > 10_000
        for index in random.Random(7).sample(range(len(entries)), 40):
            rest = _listing(volume, ino, entries[index].next_offset)
            assert rest == entries[index + 1 :], (option_set, index)


READ_FILES = (
    b"/files/size-0000100",
    b"/files/size-0012289",
    b"/files/size-0274433",
    b"/files/large-4243457",
    b"/sparse/islands",
    b"/sparse/indirect-levels",
    b"/sparse/mid-block",
    b"/files/zeros-64k",
)


@pytest.mark.parametrize("option_set", STANDARD_SETS)
def test_reads_at_any_offset(standard: ImageCache, option_set: str) -> None:
    """read(ino, offset, size) is pread: any offset and size, short only at end of file."""
    rng = random.Random(option_set)
    image = standard.get("standard", option_set)
    with kernel_mount(image, OPTION_SETS[option_set].fstype) as mounted, opened(image) as volume:
        root = os.fsencode(mounted)
        for path in READ_FILES:
            ino = volume.root_ino
            for name in path.split(b"/")[1:]:
                ino = volume.lookup(ino, name)
            size = os.stat(root + path).st_size
            fd = os.open(root + path, os.O_RDONLY)
            try:
                probes = [(0, 0), (size, 10), (size + 4096, 10), (max(size - 1, 0), 100)]
                for _ in range(40):
                    offset = rng.choice([rng.randrange(size + 1), rng.randrange(64) * 1024])
                    probes.append((offset, rng.choice([1, 7, 511, 4096, 4097, 70000])))
                for offset, length in probes:
                    got = volume.read(ino, offset, length)
                    want = os.pread(fd, length, offset)
                    assert got == want, (option_set, path, offset, length, len(got), len(want))
            finally:
                os.close(fd)


@pytest.mark.parametrize("option_set", STANDARD_SETS)
def test_inode_numbers_are_the_kernels(standard: ImageCache, option_set: str) -> None:
    expected = standard.kernel_scan("standard", option_set)
    with opened(standard.get("standard", option_set)) as volume:
        actual = scan_volume(volume, contents=False)
    wrong = [
        f"{show_path(p)}: {actual[p].ino} (kernel {e.ino})"
        for p, e in expected.items()
        if p in actual and actual[p].ino != e.ino
    ]
    assert wrong[:20] == []


@pytest.mark.parametrize("option_set", STANDARD_SETS)
def test_statfs_matches_kernel(standard: ImageCache, option_set: str) -> None:
    image = standard.get("standard", option_set)
    with kernel_mount(image, OPTION_SETS[option_set].fstype) as mounted, opened(image) as volume:
        kernel = os.statvfs(mounted)
        ours = volume.statfs()
    assert {
        "block_size": ours.block_size,
        "blocks": ours.blocks,
        "blocks_free": ours.blocks_free,
        "blocks_available": ours.blocks_available,
        "files": ours.files,
        "files_free": ours.files_free,
        "name_max": ours.name_max,
    } == {
        "block_size": kernel.f_bsize,
        "blocks": kernel.f_blocks,
        "blocks_free": kernel.f_bfree,
        "blocks_available": kernel.f_bavail,
        "files": kernel.f_files,
        "files_free": kernel.f_ffree,
        "name_max": kernel.f_namemax,
    }


@pytest.mark.parametrize("option_set", ["ext4", "ext2", "inline_data"])
def test_missing_xattr(standard: ImageCache, option_set: str) -> None:
    with opened(standard.get("standard", option_set)) as volume:
        for path in (b"/", b"/xattrs/user-one", b"/files/size-0000001", b"/symlinks/fast-1"):
            ino = volume.root_ino
            for name in path.split(b"/")[1:] if path != b"/" else []:
                ino = volume.lookup(ino, name)
            with pytest.raises(NoSuchAttribute):
                volume.getxattr(ino, b"user.no-such-attribute")
            attr = volume.getattr(ino)
            assert stat.S_IFMT(attr.mode) in (stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK)
