"""A pyfsmount mount shows exactly what the kernel's own mount of the same image shows.

For every ext and squashfs option set (tests.support.images.OPTION_SETS and
SQUASHFS_SETS) the image is mounted with
``pyfsmount`` (a real FUSE mount, confined driver, default options) and compared, entry
by entry, with the kernel's read-only loop mount: names, types, modes, owners, sizes,
contents, symlink targets, device numbers, link counts and hard-link groups, the three
timestamps to the nanosecond, and every xattr.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from tests.launcher import mount_image, mounted_fs_type, mountpoint
from tests.support.images import BIGDIR_SETS, OPTION_SETS, SQUASHFS_SETS, ImageCache
from tests.support.scan import assert_same_tree

__all__ = ["mountpoint"]


@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_mount_equals_the_kernel_mount(
    images: ImageCache, option_set: str, mountpoint: Path
) -> None:
    expected = images.kernel_scan("standard", option_set)
    mount_image(images.get("standard", option_set), mountpoint)
    assert_same_tree(None, mountpoint, expected=expected, label=option_set)


@pytest.mark.parametrize("option_set", list(SQUASHFS_SETS))
def test_squashfs_mount_equals_the_kernel_mount(
    images: ImageCache, option_set: str, mountpoint: Path
) -> None:
    """Every squashfs writer and option set; legacy lzma against the gzip image's view."""
    expected = images.kernel_scan("standard", option_set)
    mount_image(images.get("standard", option_set), mountpoint)
    assert mounted_fs_type(mountpoint) == "fuse.pyfsmount"
    assert_same_tree(None, mountpoint, expected=expected, label=option_set)


@pytest.mark.parametrize("option_set", BIGDIR_SETS)
def test_ten_thousand_entry_directory_equals_the_kernel_mount(
    images: ImageCache, option_set: str, mountpoint: Path
) -> None:
    expected = images.kernel_scan("bigdir", option_set)
    mount_image(images.get("bigdir", option_set), mountpoint)
    assert_same_tree(None, mountpoint, expected=expected, label=f"bigdir/{option_set}")


def test_statfs_matches_the_kernel(images: ImageCache, mountpoint: Path) -> None:
    image = images.get("standard", "ext4")
    from tests.support.kernel import kernel_mount

    with kernel_mount(image, "ext4") as kernel_root:
        want = os.statvfs(kernel_root)
    mount_image(image, mountpoint)
    got = os.statvfs(mountpoint)
    assert (got.f_bsize, got.f_blocks, got.f_files, got.f_namemax) == (
        want.f_bsize,
        want.f_blocks,
        want.f_files,
        want.f_namemax,
    )
    assert (got.f_bfree, got.f_ffree) == (want.f_bfree, want.f_ffree)


def test_random_reads_equal_the_kernel(images: ImageCache, mountpoint: Path) -> None:
    """Reads at arbitrary offsets and sizes, through the page cache and FUSE, as the kernel."""
    image = images.get("standard", "ext4-1k")
    from tests.support.kernel import kernel_mount

    rng = random.Random(7)
    mount_image(image, mountpoint)
    with kernel_mount(image, "ext4") as kernel_root:
        files = [
            Path(dirpath, name).relative_to(kernel_root)
            for dirpath, _, names in os.walk(kernel_root)
            for name in names
            if Path(dirpath, name).is_file() and not Path(dirpath, name).is_symlink()
        ]
        big = sorted(files, key=lambda p: (kernel_root / p).stat().st_size)[-5:]
        for relative in big:
            size = (kernel_root / relative).stat().st_size
            with (
                (kernel_root / relative).open("rb") as want,
                (mountpoint / relative).open("rb") as got,
            ):
                for _ in range(40):
                    offset = rng.randrange(0, size + 10)
                    length = rng.choice([1, 511, 4096, 65537, 1 << 20])
                    want.seek(offset)
                    got.seek(offset)
                    assert got.read(length) == want.read(length), (relative, offset, length)


@pytest.mark.parametrize("sample", ["sample-ext4.img", "sample-squashfs.img"])
def test_listings_carry_dot_and_dotdot_as_the_kernels_do(sample: str, mountpoint: Path) -> None:
    """getdents, not os.listdir (which hides them): "." and ".." in every directory."""
    from tests.launcher import PROJECT
    from tests.support.kernel import kernel_mount

    image = PROJECT / "images" / sample

    def listings(root: Path) -> dict[str, list[str]]:
        out = {}
        for dirpath, _, _ in os.walk(root):
            ls = subprocess.run(["ls", "-a", "-1", dirpath], capture_output=True, text=True)
            out[os.path.relpath(dirpath, root)] = sorted(ls.stdout.splitlines())
        return out

    with kernel_mount(image, "squashfs" if "squashfs" in sample else "ext4") as kernel_root:
        want = listings(Path(kernel_root))
    mount_image(image, mountpoint)
    got = listings(mountpoint)
    assert got == want
    assert all(names[:2] == [".", ".."] for names in got.values())
