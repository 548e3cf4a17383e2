"""The kernel as the oracle: read-only loop mounts that never outlive their ``with`` block.

``kernel_mount(image)`` attaches the image to a read-only loop device, mounts it
read-only (so atimes stay as they are on disk) on a fresh temporary directory and
yields that directory; on the way out -- also after an exception -- it unmounts
(lazily if the mount is busy), detaches the loop device and removes the directory.

``fuse_cleanup(path)`` gets rid of a FUSE mount left behind by a test.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class MountError(RuntimeError):
    """The kernel refused the image (the message has mount's stderr and dmesg's tail)."""


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def mounts_at(path: str | os.PathLike[str]) -> list[str]:
    """File system types mounted exactly at ``path``, bottom first."""
    target = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == target:
                found.append(fields[fields.index("-") + 1])
    return found


def is_mounted(path: str | os.PathLike[str]) -> bool:
    return bool(mounts_at(path))


def _dmesg_tail(lines: int = 5) -> str:
    result = _run("dmesg", "--notime")
    return "\n".join(result.stdout.splitlines()[-lines:]) if result.returncode == 0 else ""


def unmount(path: str | os.PathLike[str], *, attempts: int = 20) -> None:
    """Unmount everything at ``path``: normally while it succeeds, lazily if it stays busy."""
    for attempt in range(attempts):
        if not is_mounted(path):
            return
        result = _run("umount", os.fspath(path))
        if result.returncode != 0 and "busy" in result.stderr and attempt < attempts - 1:
            time.sleep(0.05)
            continue
        if result.returncode != 0:
            _run("umount", "-l", os.fspath(path))
    while is_mounted(path):
        _run("umount", "-l", os.fspath(path))


def detach_loop(device: str) -> None:
    """Detach a loop device (retrying while a lazy unmount still holds it)."""
    for _ in range(50):
        result = _run("losetup", "-d", device)
        if result.returncode == 0 or "No such device" in result.stderr:
            return
        if not os.path.exists(f"/sys/block/{os.path.basename(device)}/loop"):
            return
        time.sleep(0.05)


def loop_devices_of(image: str | os.PathLike[str]) -> list[str]:
    """Loop devices currently backed by ``image``."""
    result = _run("losetup", "-j", os.path.realpath(image), "-O", "NAME", "-n")
    return result.stdout.split()


@contextmanager
def kernel_mount(
    image: str | os.PathLike[str],
    fstype: str | None = None,
    options: str = "ro",
    *,
    parent: str | os.PathLike[str] | None = None,
) -> Iterator[Path]:
    """Mount ``image`` with the kernel on a fresh directory and yield that directory.

    The loop device is read-only whatever ``options`` say; ``fstype`` None lets mount(8)
    detect it.  Raises :class:`MountError` if the kernel refuses the image.
    """
    result = _run("losetup", "--find", "--show", "--read-only", os.fspath(image))
    if result.returncode != 0:
        raise MountError(f"losetup {image}: {result.stderr.strip()}")
    device = result.stdout.strip()
    try:
        target = Path(tempfile.mkdtemp(prefix="kmnt-", dir=parent))
        try:
            command = ["mount", "-o", options]
            if fstype:
                command += ["-t", fstype]
            result = _run(*command, device, os.fspath(target))
            if result.returncode != 0:
                raise MountError(
                    f"mount {image} ({fstype or 'auto'}, {options}): {result.stderr.strip()}"
                    f"\n{_dmesg_tail()}"
                )
            try:
                yield target
            finally:
                unmount(target)
        finally:
            os.rmdir(target)
    finally:
        detach_loop(device)


def fuse_cleanup(path: str | os.PathLike[str]) -> None:
    """Lazily unmount whatever FUSE (or other) mount is left at ``path``; never raises."""
    for _ in range(10):
        if not is_mounted(path):
            return
        if any(kind.startswith("fuse") for kind in mounts_at(path)):
            result = _run("fusermount3", "-u", "-z", os.fspath(path))
            if result.returncode == 0:
                continue
        _run("umount", "-l", os.fspath(path))
