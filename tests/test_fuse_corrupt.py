"""Bad input through a real mount: EIO for what is broken, everything else keeps working.

The daemon must never die or hang on a corrupt structure met while serving: the request
that met it fails with EIO and one log line names the reason; the mount stays up.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.launcher import (
    PYFSMOUNT,
    SAMPLE_IMAGE,
    mount_image,
    mounted_fs_type,
    mountpoint,
    run_pyfsmount,
    wait_for,
)
from tests.support.kernel import kernel_mount
from tests.test_ext4_unit_helpers import inode_offset, open_ext4, patch, path_ino

__all__ = ["mountpoint"]


def sample_copy(tmp_path: Path) -> Path:
    image = tmp_path / "sample.img"
    shutil.copy(SAMPLE_IMAGE, image)
    return image


def corrupt_inode_checksum(image: Path, path: str) -> None:
    volume = open_ext4(image)
    mtime = inode_offset(volume, path_ino(volume, path)) + 0x10
    with open(image, "rb") as f:
        f.seek(mtime)
        (value,) = struct.unpack("<I", f.read(4))
    patch(image, mtime, struct.pack("<I", value ^ 1))


def zero_first_rec_len(image: Path, path: str) -> None:
    volume = open_ext4(image)
    directory = path_ino(volume, path)
    block = volume._mapper(volume._inode(directory))(0)[0]
    patch(image, block * volume.sb.block_size + 4, b"\0\0")  # "."'s rec_len


def errno_of(action: object) -> int | None:
    try:
        action()  # type: ignore[operator]
    except OSError as exc:
        return exc.errno
    return None


def test_a_corrupt_inode_fails_alone_and_is_still_listed(tmp_path: Path, mountpoint: Path) -> None:
    image = sample_copy(tmp_path)
    corrupt_inode_checksum(image, "docs/numbers.txt")
    mount_image(image, mountpoint)
    docs = mountpoint / "docs"
    assert "numbers.txt" in os.listdir(docs)  # the kernel lists the name too
    assert errno_of(lambda: (docs / "numbers.txt").stat()) == errno.EIO
    assert errno_of(lambda: (docs / "numbers.txt").read_bytes()) == errno.EIO
    assert (docs / "notes" / "one.txt").read_text() == "first note\n"
    assert (mountpoint / "README.txt").read_bytes().startswith(b"This is the pyfsmount")
    assert mounted_fs_type(mountpoint) == "fuse.pyfsmount"


def test_a_zero_rec_len_fails_that_directory_quickly_and_nothing_else(
    tmp_path: Path, mountpoint: Path
) -> None:
    """The sample has metadata_csum: the damaged block fails its checksum, as in the kernel."""
    image = sample_copy(tmp_path)
    zero_first_rec_len(image, "docs/notes")
    with kernel_mount(image, "ext4", "ro,noload") as kernel_root:
        kernel_errno = errno_of(lambda: os.listdir(kernel_root / "docs" / "notes"))
    assert kernel_errno == errno.EBADMSG  # ext4's EFSBADCRC; pyfsmount answers EIO
    mount_image(image, mountpoint)
    start = time.monotonic()
    assert errno_of(lambda: os.listdir(mountpoint / "docs" / "notes")) == errno.EIO
    assert time.monotonic() - start < 5
    assert (mountpoint / "docs" / "numbers.txt").read_text().startswith("1\n2\n3\n")
    assert sorted(os.listdir(mountpoint / "docs")) == [
        "notes",
        "numbers.txt",
        "readme-link",
        "slow-symlink",
    ]


def test_corruption_is_logged_with_its_reason(tmp_path: Path, mountpoint: Path) -> None:
    image = sample_copy(tmp_path)
    corrupt_inode_checksum(image, "docs/numbers.txt")
    process = subprocess.Popen(
        [*PYFSMOUNT, "-f", str(image), str(mountpoint)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: mounted_fs_type(mountpoint) is not None, what="the mount")
        assert errno_of(lambda: (mountpoint / "docs" / "numbers.txt").stat()) == errno.EIO
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "EIO" in stderr and "checksum" in stderr, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("length", [0, 1024, 2048, 4096, 64 * 1024])
def test_a_truncated_image_is_refused_with_one_line(
    tmp_path: Path, mountpoint: Path, length: int
) -> None:
    image = tmp_path / "truncated.img"
    image.write_bytes(SAMPLE_IMAGE.read_bytes()[:length])
    result = run_pyfsmount(str(image), str(mountpoint))
    assert result.returncode == 32, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert mounted_fs_type(mountpoint) is None
