"""A request that costs too much CPU is abandoned with EIO; the mount keeps serving.

The slow request is real, not simulated: a FAT32 image whose file's cluster chain zig-zags
(every other cluster), so that mapping its end means following a few hundred thousand
FAT entries one by one. That is bounded by the volume's cluster count, as every loop over
on-disk data is, and it is still a fraction of a second of Python: under a tight
``-o request_timeout=`` the read is abandoned, under the default it succeeds.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import time
from array import array
from itertools import pairwise
from pathlib import Path

import pytest

from tests.launcher import PYFSMOUNT, mount_image, mounted_fs_type, mountpoint, wait_for
from tests.support.commands import run

__all__ = ["mountpoint"]

pytestmark = pytest.mark.skipif(
    shutil.which("mkfs.fat") is None or shutil.which("mcopy") is None,
    reason="needs dosfstools and mtools",
)

#: Clusters of the zig-zag file (512-byte clusters: 100 MiB).
CLUSTERS = 204_800
FINE_TEXT = b"this file is untouched\n"
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def zigzag_image(directory: Path) -> Path:
    """FAT32 with ``/zigzag.bin`` chained over every other cluster, and ``/fine.txt``."""
    image = directory / "zigzag.img"
    run("mkfs.fat", "-F", "32", "-S", "512", "-s", "1", "-C", str(image), str(256 * 1024))
    payload = directory / "zigzag.bin"
    with payload.open("wb") as f:
        f.truncate(CLUSTERS * 512)
    fine = directory / "fine.txt"
    fine.write_bytes(FINE_TEXT)
    run("mcopy", "-i", str(image), str(fine), str(payload), "::/", env=MTOOLS_ENV)
    chain = run("mshowfat", "-i", str(image), "::/zigzag.bin", env=MTOOLS_ENV)
    start = int(re.search(r"<(\d+)-", chain).group(1))  # type: ignore[union-attr]
    zigzag_chain(image, start)
    return image


def zigzag_chain(image: Path, start: int) -> None:
    """Rewrite the chain from ``start`` as start, start+2, start+4, ... in every FAT copy."""
    with image.open("r+b") as f:
        boot = f.read(512)
        reserved = int.from_bytes(boot[14:16], "little")
        fats = boot[16]
        fat_sectors = int.from_bytes(boot[36:40], "little")
        clusters = [start + 2 * k for k in range(CLUSTERS)]
        first, last = start, clusters[-1]
        table = array("I", bytes(4 * (last + 1 - first)))
        for here, there in pairwise(clusters):
            table[here - first] = there
        table[last - first] = 0x0FFFFFFF
        for copy in range(fats):
            f.seek((reserved + copy * fat_sectors) * 512 + 4 * first)
            f.write(table.tobytes())


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zigzag_image(tmp_path_factory.mktemp("timeout"))


def read_tail(path: Path) -> bytes:
    with path.open("rb", buffering=0) as f:
        f.seek(CLUSTERS * 512 - 4096)
        return f.read(4096)


def test_an_overlong_request_gets_eio_and_the_mount_serves_on(
    image: Path, mountpoint: Path
) -> None:
    process = subprocess.Popen(
        [*PYFSMOUNT, "-f", "-o", "request_timeout=0.02", str(image), str(mountpoint)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: mounted_fs_type(mountpoint) is not None, what="the mount")
        start = time.monotonic()
        with pytest.raises(OSError) as raised:
            read_tail(mountpoint / "zigzag.bin")
        assert raised.value.errno == errno.EIO
        assert time.monotonic() - start < 2.0
        assert (mountpoint / "fine.txt").read_bytes() == FINE_TEXT
        assert sorted(os.listdir(mountpoint)) == ["fine.txt", "zigzag.bin"]
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert "read" in stderr and "request_timeout" in stderr, stderr
    assert "Traceback" not in stderr


def test_the_same_request_succeeds_within_the_default_budget(
    image: Path, mountpoint: Path
) -> None:
    mount_image(image, mountpoint)
    assert read_tail(mountpoint / "zigzag.bin") == bytes(4096)
    assert (mountpoint / "fine.txt").read_bytes() == FINE_TEXT
