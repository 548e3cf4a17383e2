"""Whole-disk images through the real command: ``--list``, ``partition=N`` and auto-pick.

A GPT disk made by sgdisk holds the two sample images (squashfs in partition 2, ext4 in
partition 3, partition 1 empty); ``pyfsmount disk.img DIR`` mounts the first partition
holding a file system, ``-o partition=N`` the one named, ``-t`` the first of that type.
The table is parsed by the confined driver, never by the launcher.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.launcher import PROJECT, mount_image, mounted_fs_type, mountpoint, run_pyfsmount

__all__ = ["mountpoint"]

SAMPLES = PROJECT / "images"
MiB = 1 << 20


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("sgdisk") is None:
        pytest.skip("sgdisk (Debian package gdisk) is not installed")
    image = tmp_path_factory.mktemp("disk") / "disk.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(
        [
            "sgdisk",
            "-n",
            "1:1M:+1M",
            "-c",
            "1:empty",
            "-n",
            "2:2M:+1M",
            "-c",
            "2:squash",
            "-n",
            "3:3M:+5M",
            "-c",
            "3:ext4",
            str(image),
        ],
        check=True,
        capture_output=True,
    )
    for number, sample in ((2, "sample-squashfs.img"), (3, "sample-ext4.img")):
        subprocess.run(
            [
                "dd",
                f"if={SAMPLES / sample}",
                f"of={image}",
                "bs=1M",
                f"seek={number}",
                "conv=notrunc",
                "status=none",
            ],
            check=True,
        )
    return image


def test_list_shows_every_partition_and_what_it_holds(disk: Path) -> None:
    result = run_pyfsmount("--list", str(disk))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gpt partition table")
    assert lines[1].startswith("  1: ") and lines[1].endswith(": -")
    assert lines[2].startswith("  2: ") and "'squash'" in lines[2]
    assert lines[2].endswith(": squashfs")
    assert lines[3].startswith("  3: ") and "at byte 3145728" in lines[3]
    assert lines[3].endswith(": ext4")


def test_without_a_number_the_first_file_system_is_mounted(disk: Path, mountpoint: Path) -> None:
    mount_image(disk, mountpoint)
    assert mounted_fs_type(mountpoint) == "fuse.pyfsmount"
    assert (mountpoint / "README.txt").read_text().startswith("This is the pyfsmount")
    assert not (mountpoint / "lost+found").exists()  # partition 2: the squashfs one


def test_partition_n_mounts_that_partition(disk: Path, mountpoint: Path) -> None:
    mount_image(disk, mountpoint, "partition=3")
    assert (mountpoint / "lost+found").is_dir()  # the ext4 sample


def test_a_type_picks_the_first_partition_of_that_type(disk: Path, mountpoint: Path) -> None:
    result = run_pyfsmount("-t", "ext4", str(disk), str(mountpoint))
    assert result.returncode == 0, result.stderr
    assert (mountpoint / "lost+found").is_dir()


def test_an_empty_or_missing_partition_is_refused_with_the_list(
    disk: Path, mountpoint: Path
) -> None:
    for number in (1, 9):
        result = run_pyfsmount("-o", f"partition={number}", str(disk), str(mountpoint))
        assert result.returncode == 32, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert mounted_fs_type(mountpoint) is None


def test_partition_of_a_bare_image_is_refused(mountpoint: Path) -> None:
    result = run_pyfsmount("-o", "partition=1", str(SAMPLES / "sample-ext4.img"), str(mountpoint))
    assert result.returncode == 32
    assert "no partition table" in result.stderr


def test_bad_partition_option_is_a_usage_error(disk: Path, mountpoint: Path) -> None:
    result = run_pyfsmount("-o", "partition=first", str(disk), str(mountpoint))
    assert result.returncode == 1
    assert "partition=" in result.stderr
