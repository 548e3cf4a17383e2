"""Helpers for the squashfs driver's unit tests (no tests here): trees, images, comparisons.

Images are made by mksquashfs (or sqfstar) from a tree built here, and every check
compares what the library shows with what the kernel's read-only loop mount of the same
image shows.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

from drivers.base import Attr, BlockReader, Volume
from drivers.squashfs import SquashfsVolume
from tests.support.commands import run
from tests.support.scan import attr_of_stat

__all__ = [
    "compare_tree",
    "make_tree",
    "mksquashfs",
    "open_squashfs",
    "path_ino",
]

#: mtimes squashfs can hold (unsigned 32-bit seconds).
MTIMES = (0, 1, 2**31 - 1, 2**31 + 5, 2**32 - 1)
BIG_DIR_ENTRIES = 1000
#: As big as the source file system (ext4, 4 KiB blocks) allows; three of them (the
#: table's metadata blocks are 8 KiB) make at least one cross a block boundary.
BIG_VALUE = bytes(range(256)) * 14


def can_build() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("mksquashfs") is not None
        and Path("/dev/loop-control").exists()
    )


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, compressible, but not trivially so."""
    line = b"".join(b"%07d:%d\n" % (i, seed) for i in range(2048))
    return (line * (size // len(line) + 1))[:size]


def setx(path: Path, name: str, value: bytes) -> None:
    os.setxattr(path, name, value, follow_symlinks=False)


def _files(root: Path) -> None:
    sizes = (0, 1, 100, 4095, 4096, 4097, 131071, 131072, 131073, 262144, 1 << 20)
    for n, size in enumerate(sizes):
        (root / f"size-{size}").write_bytes(pattern(size, n))
    (root / "size-1M-plus").write_bytes(pattern((1 << 20) + 3 * 4096 + 17, 99))
    (root / "random.bin").write_bytes(os.urandom(300_000))  # stored uncompressed
    with open(root / "sparse.bin", "wb") as f:  # holes at the start, middle and end
        f.seek(400_000)
        f.write(pattern(150_000, 7))
        f.seek(2_000_000)
        f.write(b"end")
        f.truncate(3_000_000)
    with open(root / "huge-sparse.bin", "wb") as f:  # 6144 blocks of 4 KiB: several chunks
        f.seek(12_000_000)
        f.write(b"in the middle")
        f.truncate(24 << 20)
    for i, mtime in enumerate(MTIMES):
        path = root / f"time-{i}"
        path.write_bytes(b"t%d" % i)
        os.utime(path, (mtime, mtime))


def _links_and_specials(root: Path) -> None:
    (root / "dir" / "sub" / "deeper").mkdir(parents=True)
    (root / "dir" / "empty").mkdir()
    (root / "dir" / "sub" / "deeper" / "leaf").write_bytes(b"leaf\n")
    os.link(root / "size-100", root / "dir" / "hardlink")
    os.link(root / "size-100", root / "dir" / "sub" / "hardlink2")
    os.symlink("size-1", root / "fast-link")
    os.symlink("/" + "x" * 1000, root / "long-link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("dir", root / "link-with-xattr")
    setx(root / "link-with-xattr", "trusted.on-link", b"link value")
    os.mknod(root / "chr-old", 0o620 | stat.S_IFCHR, os.makedev(4, 64))
    os.mknod(root / "blk-new", 0o660 | stat.S_IFBLK, os.makedev(259, 70000))
    os.mknod(root / "chr-xattr", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    setx(root / "chr-xattr", "trusted.dev", b"device value")
    os.mkfifo(root / "fifo")
    os.mkfifo(root / "fifo-xattr")
    setx(root / "fifo-xattr", "trusted.fifo", b"fifo value")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "socket"))
    finally:
        sock.close()


def _big_dir(root: Path) -> None:
    big = root / "bigdir"
    big.mkdir()
    for i in range(BIG_DIR_ENTRIES):
        name = f"entry-{i:04d}-{'n' * (i % 50)}"
        if i % 97 == 0:
            name = "\u00e9" + name  # a first byte >= 0x80
        (big / name).write_bytes(b"%d\n" % i)
    (big / ("L" * 255)).write_bytes(b"longest name")
    (big / "~tilde").mkdir()


def _owners_modes_xattrs(root: Path) -> None:
    owned = root / "owned"
    owned.write_bytes(b"owned\n")
    os.chown(owned, 100_000, 200_000)
    os.chmod(owned, 0o4751)
    for i, mode in enumerate((0o2755, 0o1777, 0o000, 0o777)):
        path = root / f"mode-{i}"
        path.write_bytes(b"m")
        os.chmod(path, mode)
        os.chown(path, 1000 + i, 70_000 + i)
    setx(root / "size-1", "user.comment", b"a comment")
    setx(root / "size-1", "trusted.t", b"\x00\x01binary")
    setx(root / "size-1", "security.label", b"label")
    setx(root / "size-4096", "user.big", BIG_VALUE)
    setx(root / "size-131072", "user.big", BIG_VALUE[::-1])
    setx(root / "size-131073", "trusted.big", BIG_VALUE[1:])
    for name in ("size-4095", "size-4097", "owned"):  # one value, stored out of line
        setx(root / name, "user.shared", b"the same value on three files")
    setx(root / "dir", "user.on-dir", b"dir value")
    setx(root / "dir" / "empty", "user.empty", b"")


def make_tree(root: Path) -> None:
    """One of everything the driver must show."""
    root.mkdir(parents=True)
    _files(root)
    _links_and_specials(root)
    _big_dir(root)
    _owners_modes_xattrs(root)


def mksquashfs(source: Path, image: Path, *options: str) -> Path:
    image.unlink(missing_ok=True)
    run("mksquashfs", str(source), str(image), "-quiet", "-no-progress", *options)
    return image


def sqfstar(source: Path, image: Path, *options: str) -> Path:
    """An image of ``source`` made from a tar stream (sqfstar)."""
    image.unlink(missing_ok=True)
    tar = subprocess.run(
        ["tar", "-C", str(source), "--xattrs", "--xattrs-include=*", "-cf", "-", "."],
        capture_output=True,
        check=True,
    ).stdout
    run("sqfstar", "-quiet", "-no-progress", *options, str(image), stdin=tar)
    return image


def open_squashfs(image: Path) -> SquashfsVolume:
    """The library's volume on ``image`` (the descriptor lives as long as the process)."""
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    return SquashfsVolume.open(BlockReader(fd), {})


def path_ino(volume: Volume, path: str) -> int:
    ino = volume.root_ino
    for part in path.strip("/").split("/"):
        ino = volume.lookup(ino, os.fsencode(part))
    return ino


def kernel_attr(path: Path) -> Attr:
    return attr_of_stat(os.lstat(path))


def kernel_xattrs(path: Path) -> list[tuple[bytes, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:  # an image without an xattr table
            raise
        return []
    return [(n.encode(), os.getxattr(path, n, follow_symlinks=False)) for n in names]


def library_xattrs(volume: Volume, ino: int) -> list[tuple[bytes, bytes]]:
    return [(name, volume.getxattr(ino, name)) for name in volume.listxattr(ino)]


def digest_library(volume: Volume, ino: int, size: int, chunk: int = 131072) -> str:
    """Hash of a file read in FUSE-sized pieces (and checked to end exactly at ``size``)."""
    h = hashlib.sha256()
    offset = 0
    while True:
        data = volume.read(ino, offset, chunk)
        if not data:
            break
        h.update(data)
        offset += len(data)
    assert offset == size
    return h.hexdigest()


def digest_kernel(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    return h.hexdigest()


def compare_entry(volume: Volume, ino: int, path: Path) -> Attr:
    """One inode against the kernel's view of ``path``: attributes, xattrs, content."""
    attr = volume.getattr(ino)
    assert attr == kernel_attr(path), path
    assert library_xattrs(volume, ino) == kernel_xattrs(path), path
    if attr.is_symlink:
        assert volume.readlink(ino) == os.fsencode(os.readlink(path)), path
    elif attr.is_regular:
        assert digest_library(volume, ino, attr.size) == digest_kernel(path), path
    return attr


def compare_tree(volume: Volume, mnt: Path) -> int:
    """Walk both views from the root, in listing order; return the entries compared."""
    compared = 0
    compare_entry(volume, volume.root_ino, mnt)
    stack: list[tuple[int, Path]] = [(volume.root_ino, mnt)]
    while stack:
        dir_ino, path = stack.pop()
        entries = [(e.name, e.ino) for e in volume.readdir(dir_ino)]
        with os.scandir(path) as it:
            kernel = [(os.fsencode(e.name), e.inode()) for e in it]
        assert entries == kernel, path
        for name, ino in entries:
            child = path / os.fsdecode(name)
            assert volume.lookup(dir_ino, name) == ino
            if compare_entry(volume, ino, child).is_dir:
                stack.append((ino, child))
            compared += 1
    return compared
