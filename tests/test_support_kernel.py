"""kernel_mount() and fuse_cleanup() leave nothing behind; assert_same_tree() works on a
real FUSE mount (fuse2fs, e2fsprogs' own FUSE driver, as a stand-in for pyfsmount)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.images import ImageCache
from tests.support.kernel import (
    MountError,
    fuse_cleanup,
    is_mounted,
    kernel_mount,
    loop_devices_of,
    mounts_at,
)
from tests.support.scan import assert_same_tree, scan_path
from tests.support.trees import NS


def _mount_options(path: Path) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == os.path.realpath(path):
                return set(fields[5].split(","))
    return set()


def test_mount_is_read_only_and_cleaned_up(images: ImageCache) -> None:
    image = images.get("standard", "ext4")
    with kernel_mount(image) as mounted:
        assert mounts_at(mounted) == ["ext4"]
        assert "ro" in _mount_options(mounted)
        assert loop_devices_of(image)
        with pytest.raises(OSError):
            (mounted / "new").write_bytes(b"")
    assert not mounted.exists()
    assert loop_devices_of(image) == []


def test_cleanup_on_exception_and_when_busy(images: ImageCache) -> None:
    image = images.get("standard", "ext2")
    with pytest.raises(RuntimeError, match="boom"), kernel_mount(image, "ext2") as mounted:
        held = open(mounted / "files" / "size-0000001", "rb")  # noqa: SIM115 - keep it busy
        raise RuntimeError("boom")
    assert not is_mounted(mounted) and not mounted.exists()
    held.close()
    deadline = time.monotonic() + 5
    while loop_devices_of(image) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loop_devices_of(image) == []


def test_refused_image(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    with pytest.raises(MountError), kernel_mount(junk, "ext4"):
        pass
    assert loop_devices_of(junk) == []
    assert list(Path(os.path.dirname(junk)).glob("kmnt-*")) == []


def test_fuse_cleanup_of_nothing(tmp_path: Path) -> None:
    fuse_cleanup(tmp_path)
    assert tmp_path.is_dir()


@pytest.mark.skipif(shutil.which("fuse2fs") is None, reason="fuse2fs not installed")
def test_fuse_mount_matches_kernel_mount(images: ImageCache, tmp_path: Path) -> None:
    """The FUSE differential check, with fuse2fs in the place of pyfsmount."""
    image = images.get("standard", "ext4")
    target = tmp_path / "fuse"
    target.mkdir()
    subprocess.run(
        ["fuse2fs", "-o", "ro,fakeroot", str(image), str(target)], check=True, capture_output=True
    )
    try:
        assert any(kind.startswith("fuse") for kind in mounts_at(target))
        # fuse2fs (1.47.0) shows times in whole seconds; everything else as the kernel does.
        kernel = images.kernel_scan("standard", "ext4")
        whole_seconds = {
            path: dataclasses.replace(
                entry,
                atime_ns=entry.atime_ns // NS * NS,
                mtime_ns=entry.mtime_ns // NS * NS,
                ctime_ns=entry.ctime_ns // NS * NS,
            )
            for path, entry in kernel.items()
        }
        assert_same_tree(None, target, expected=whole_seconds, label="fuse2fs")
    finally:
        fuse_cleanup(target)
    assert not is_mounted(target)
    assert scan_path(target).keys() == {b"/"}
