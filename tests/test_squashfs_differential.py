"""The squashfs driver as a library against the kernel, on images of every option set.

For each set of :data:`tests.support.images.SQUASHFS_SETS` (every compressor, no
compression, fragments off and always, 4 KiB and 1 MiB blocks, no xattrs, all-root, and
images written by sqfstar, tar2sqfs and gensquashfs) the kernel's read-only loop mount of
the image is the oracle: ``scan_volume`` of the driver must equal ``scan_path`` of the
mount, entry for entry.  Legacy lzma images, which the kernel refuses, are compared
with the kernel's view of the same tree made with gzip.

The FUSE differential test (tests/test_fuse_differential.py) does the same through a
pyfsmount mount.
"""

from __future__ import annotations

import os

import pytest

from tests.support.images import SQUASHFS_SETS, ImageCache
from tests.support.kernel import kernel_mount
from tests.support.scan import assert_scans_equal, opened, scan_volume

#: Sets the 10,000-entry directory is built with: the directory index at two block sizes.
SQUASHFS_BIGDIR_SETS = ("sq-gzip", "sq-4k", "sq-uncompressed")


@pytest.fixture(scope="module")
def standard(images: ImageCache) -> ImageCache:
    images.prebuild(("standard", name) for name in SQUASHFS_SETS)
    return images


@pytest.mark.parametrize("option_set", list(SQUASHFS_SETS))
def test_library_matches_kernel(standard: ImageCache, option_set: str) -> None:
    expected = standard.kernel_scan("standard", option_set)
    with opened(standard.get("standard", option_set)) as volume:
        assert volume.fs_type == "squashfs"
        actual = scan_volume(volume)
    # squashfs inode numbers are on disk: the driver's must be the kernel's.
    assert_scans_equal(expected, actual, label=option_set, check_ino=True)


@pytest.mark.parametrize("option_set", SQUASHFS_BIGDIR_SETS)
def test_big_directory_lookups_match_kernel(images: ImageCache, option_set: str) -> None:
    """Every name of a 10,000-entry directory is found by lookup (the directory index)."""
    expected = images.kernel_scan("bigdir", option_set)
    with opened(images.get("bigdir", option_set)) as volume:
        actual = scan_volume(volume, use_lookup=True, contents=False)
    assert_scans_equal(expected, actual, label=f"bigdir/{option_set}", ignore=("sha256",))


@pytest.mark.parametrize("option_set", ["sq-gzip", "sq-4k", "sq-1m"])
def test_statfs_matches_kernel(standard: ImageCache, option_set: str) -> None:
    image = standard.get("standard", option_set)
    with kernel_mount(image, "squashfs") as mounted:
        want = os.statvfs(mounted)
    with opened(image) as volume:
        got = volume.statfs()
    assert (got.block_size, got.blocks, got.blocks_free, got.files, got.files_free) == (
        want.f_bsize,
        want.f_blocks,
        want.f_bfree,
        want.f_files,
        want.f_ffree,
    )
    assert got.name_max == want.f_namemax


def test_lookup_of_missing_names_says_so(standard: ImageCache) -> None:
    with opened(standard.get("standard", "sq-gzip")) as volume:
        with pytest.raises(FileNotFoundError):
            volume.lookup(volume.root_ino, b"no such name")
        with pytest.raises(FileNotFoundError):
            volume.lookup(volume.root_ino, b"\xff" * 300)
