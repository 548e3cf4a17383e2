"""squashfs through a real pyfsmount mount: detection, refusals, and bad blocks.

The sample image (images/sample-squashfs.img, zstd) is the same tree as the ext4 sample.
What the kernel would refuse at mount is refused with one line and exit 32; a corrupt
block fails only the file it belongs to, with EIO, and the mount keeps serving.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
from pathlib import Path

from drivers.registry import open_image
from drivers.squashfs import SquashfsVolume
from tests.launcher import (
    PROJECT,
    mount_image,
    mounted_fs_type,
    mountpoint,
    run_pyfsmount,
)

__all__ = ["mountpoint"]

SAMPLE_SQUASHFS = PROJECT / "images" / "sample-squashfs.img"
COMPRESSION_OFFSET = 20  # squashfs_super_block.compression (le16)


def sample_copy(tmp_path: Path) -> Path:
    image = tmp_path / "sample.sqfs"
    shutil.copy(SAMPLE_SQUASHFS, image)
    return image


def patch(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def fragment_block_of(image: Path, path: str) -> int:
    """Where the fragment block holding the tail of ``path`` starts in the image."""
    volume = open_image(image)
    assert isinstance(volume, SquashfsVolume)
    ino = volume.root_ino
    for name in path.split("/"):
        ino = volume.lookup(ino, name.encode())
    return int(volume._inode(ino).fragment_block)


def errno_of(action: object) -> int | None:
    try:
        action()  # type: ignore[operator]
    except OSError as exc:
        return exc.errno
    return None


def test_the_type_is_detected_from_the_magic(mountpoint: Path) -> None:
    mount_image(SAMPLE_SQUASHFS, mountpoint)
    assert mounted_fs_type(mountpoint) == "fuse.pyfsmount"
    assert (mountpoint / "README.txt").read_text().startswith("This is the pyfsmount")
    assert (mountpoint / "docs" / "readme-link").read_text().startswith("This is")
    assert os.getxattr(mountpoint / "README.txt", "user.comment") == b"an extended attribute"


def test_dash_t_squashfs_mounts_and_a_wrong_type_is_refused(mountpoint: Path) -> None:
    result = run_pyfsmount("-t", "ext4", str(SAMPLE_SQUASHFS), str(mountpoint))
    assert result.returncode == 32
    assert result.stderr.strip().endswith("the image holds squashfs, not ext4"), result.stderr
    assert mounted_fs_type(mountpoint) is None
    result = run_pyfsmount("-t", "squashfs", str(SAMPLE_SQUASHFS), str(mountpoint))
    assert result.returncode == 0, result.stderr
    assert (mountpoint / "docs" / "notes" / "one.txt").read_text() == "first note\n"


def test_an_unknown_compressor_is_refused_with_its_number(tmp_path: Path, mountpoint: Path) -> None:
    image = sample_copy(tmp_path)
    patch(image, COMPRESSION_OFFSET, struct.pack("<H", 9))
    result = run_pyfsmount(str(image), str(mountpoint))
    assert result.returncode == 32, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "compress" in lines[0] and "9" in lines[0], lines
    assert mounted_fs_type(mountpoint) is None


def test_a_corrupt_fragment_block_fails_its_files_and_nothing_else(
    tmp_path: Path, mountpoint: Path
) -> None:
    """mksquashfs packs every small file of the sample into one fragment block."""
    image = sample_copy(tmp_path)
    patch(image, fragment_block_of(image, "docs/numbers.txt"), b"\0" * 16)
    mount_image(image, mountpoint)
    numbers = mountpoint / "docs" / "numbers.txt"
    assert numbers.stat().st_size == 108894  # metadata is intact
    assert errno_of(numbers.read_bytes) == errno.EIO
    assert errno_of(numbers.read_bytes) == errno.EIO  # not cached as good, not fatal
    assert sorted(os.listdir(mountpoint / "docs")) == [
        "notes",
        "numbers.txt",
        "readme-link",
        "slow-symlink",
    ]
    assert os.readlink(mountpoint / "docs" / "readme-link") == "../README.txt"
    assert os.getxattr(mountpoint / "README.txt", "user.comment") == b"an extended attribute"
    assert mounted_fs_type(mountpoint) == "fuse.pyfsmount"
