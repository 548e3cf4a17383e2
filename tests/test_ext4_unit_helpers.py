"""Helpers for the ext4 driver's unit tests (no tests here): build trees and images, mount them.

The images are made by the public tools (mke2fs -d, e2fsck -D, debugfs) from small trees
built here, and every check compares the library's view with the kernel's loop mount of
the same image.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import drivers
from drivers.base import Attr, Volume
from drivers.ext4.volume import Ext4Volume
from tests.support.commands import run
from tests.support.scan import attr_of_stat

__all__ = [
    "can_mount",
    "compare_tree",
    "debugfs",
    "kernel_mount",
    "make_tree",
    "mkfs",
]

#: Interesting timestamps (ns): before 1970, the 32-bit edge, past 2038 and 2106.
TIMES_NS = (
    -1_000_000_000 * 1_000_000_000 + 123_456_789,
    0,
    (2**31 - 1) * 1_000_000_000 + 999_999_999,
    (2**31 + 5) * 1_000_000_000 + 1,
    4_000_000_000 * 1_000_000_000 + 500,
    10_000_000_000 * 1_000_000_000 + 7,
)

#: Access ACL in getxattr's form: version 2; then (tag, perm, id) entries.
ACL_XATTR = bytes.fromhex(
    "02000000"
    "01000600ffffffff"  # USER_OBJ rw-
    "02000400e8030000"  # USER 1000 r--
    "04000400ffffffff"  # GROUP_OBJ r--
    "08000600d0070000"  # GROUP 2000 rw-
    "10000600ffffffff"  # MASK rw-
    "20000000ffffffff"  # OTHER ---
)
ACL_DEFAULT_XATTR = bytes.fromhex("0200000001000700ffffffff04000500ffffffff20000100ffffffff")


def can_mount() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("mke2fs") is not None
        and Path("/dev/loop-control").exists()
    )


def make_tree(
    root: Path,
    *,
    big_dir: int = 200,
    sparse_extents: int = 0,
    big_xattr: int = 900,
    huge_sparse: bool = False,
    high_names: bool = False,
) -> None:
    """A small tree with one of everything the driver must show."""
    root.mkdir(parents=True, exist_ok=True)
    if huge_sparse:  # with 1 KiB blocks, past the double-indirect range (~64.3 MiB)
        with open(root / "huge-sparse.bin", "wb") as f:
            f.seek(70_000_000)
            f.write(b"triple indirect")
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_bytes(b"hello, ext4\n")
    (root / "fifty.bin").write_bytes(bytes(range(50)))
    (root / "block.bin").write_bytes(bytes((i * 7) & 0xFF for i in range(4096)))
    (root / "multi.bin").write_bytes(os.urandom(300_000))
    with open(root / "sparse.bin", "wb") as f:  # holes at the start, middle and end
        f.seek(100_000)
        f.write(b"middle" * 1000)
        f.seek(2_000_000)
        f.write(b"end")
        f.truncate(3_000_000)
    if sparse_extents:
        with open(root / "fragmented.bin", "wb") as f:  # many extents -> a deep tree
            for i in range(sparse_extents):
                f.seek(i * 8192)
                f.write(bytes([i % 255 + 1]) * 1024)
    (root / "dir" / "sub" / "deeper").mkdir(parents=True)
    (root / "dir" / "sub" / "deeper" / "leaf.txt").write_bytes(b"leaf\n")
    (root / "dir" / "emptydir").mkdir()
    setfattr(root / "dir", "user.empty", b"")
    os.link(root / "small.txt", root / "dir" / "hardlink.txt")
    os.symlink("small.txt", root / "fast-link")
    os.symlink("/" + "x" * 59, root / "link-59")
    os.symlink("/" + "y" * 200, root / "slow-link")
    os.symlink("does/not/exist", root / "dangling")
    os.mknod(root / "chr-old", 0o620 | stat.S_IFCHR, os.makedev(4, 64))
    os.mknod(root / "blk-new", 0o660 | stat.S_IFBLK, os.makedev(259, 70000))
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "socket"))
    finally:
        sock.close()
    big = root / "bigdir"
    big.mkdir()
    for i in range(big_dir):
        name = f"entry-{i:05d}-{'n' * (i % 40)}".encode()
        if high_names and i % 3 == 0:  # bytes >= 0x80 hash differently signed/unsigned
            name += bytes([0x80 + i % 128, 0xC3, 0xA9])
        (big / os.fsdecode(name)).write_bytes(b"%d\n" % i)
    owned = root / "owned"
    owned.write_bytes(b"owned\n")
    os.chown(owned, 100_000, 200_000)
    os.chmod(owned, 0o4751)
    setfattr(root / "small.txt", "user.comment", b"a comment")
    setfattr(root / "small.txt", "trusted.t", b"\x00\x01binary")
    # Too big for the inode: in the xattr block (mke2fs 1.47.0 fails from ~1000 bytes
    # unless the value can go to an EA inode).
    setfattr(root / "fifty.bin", "user.big", b"v" * big_xattr)
    setfattr(root / "fifty.bin", "security.label", b"label")
    setfattr(root / "dir", "user.on-dir", b"dir value")
    acl = root / "acl.txt"
    acl.write_bytes(b"acl\n")
    os.setxattr(acl, "system.posix_acl_access", ACL_XATTR)
    os.setxattr(root / "dir" / "sub", "system.posix_acl_default", ACL_DEFAULT_XATTR)
    times = root / "times"
    times.mkdir()
    for i, t in enumerate(TIMES_NS):
        path = times / f"t{i}"
        path.write_bytes(b"%d" % i)
        os.utime(path, ns=(t, t))


def setfattr(path: Path, name: str, value: bytes) -> None:
    os.setxattr(path, name, value, follow_symlinks=False)


def mkfs(image: Path, src: Path | None, *options: str, size: str = "24M") -> Path:
    """mke2fs -d with fixed UUID and hash seed (reproducible layouts)."""
    args = [
        "mke2fs",
        "-q",
        "-F",
        "-U",
        "6a1c0d3e-5b1f-4b8e-9d1a-2f0e7c3b9a10",
        "-E",
        "hash_seed=0b6f1e4c-8a2d-4f3b-9c5e-1d7a0e2b4c6f,root_owner=0:0",
    ]
    if src is not None:
        args += ["-d", str(src)]
    args += [*options, str(image), size]
    run(*args)
    return image


def fsck_rehash(image: Path) -> None:
    """e2fsck -fyD: index (htree) every directory of more than one block."""
    result = subprocess.run(["e2fsck", "-fyD", str(image)], capture_output=True, check=False)
    if result.returncode not in (0, 1):  # 1: file system modified
        raise AssertionError(result.stdout.decode() + result.stderr.decode())


def debugfs(image: Path, *commands: str, write: bool = False) -> str:
    """Run debugfs commands on ``image`` (``write``: open it read-write) and return stdout."""
    args = ["debugfs", *(["-w"] if write else []), "-f", "-", str(image)]
    return run(*args, stdin=("\n".join(commands) + "\n").encode())


def grow_inline_dir(image: Path) -> None:
    """Let the kernel add entries to an inline directory until they spill into system.data
    (mke2fs converts a directory to a block instead)."""
    target = Path(tempfile.mkdtemp(prefix="ext4-rw-"))
    try:
        run("mount", "-o", "loop", str(image), str(target))
        try:
            grown = target / "grown"
            grown.mkdir()
            for name in ("alpha-file", "beta-file", "gamma-file", "delta-file"):
                (grown / name).write_bytes(name.encode())
        finally:
            run("umount", str(target))
    finally:
        target.rmdir()


@contextmanager
def kernel_mount(image: Path, *options: str) -> Iterator[Path]:
    """The kernel's read-only loop mount of ``image`` (always unmounted afterwards)."""
    target = Path(tempfile.mkdtemp(prefix="ext4-kernel-"))
    opts = ",".join(("loop", "ro", *options))
    try:
        run("mount", "-o", opts, str(image), str(target))
        try:
            yield target
        finally:
            subprocess.run(["umount", str(target)], check=False, capture_output=True)
    finally:
        target.rmdir()


def kernel_attr(path: Path) -> Attr:
    return attr_of_stat(os.lstat(path))


def kernel_xattrs(path: Path) -> dict[bytes, bytes]:
    out = {}
    for name in os.listxattr(path, follow_symlinks=False):
        out[name.encode()] = os.getxattr(path, name, follow_symlinks=False)
    return out


def library_xattrs(volume: Volume, ino: int) -> dict[bytes, bytes]:
    return {name: volume.getxattr(ino, name) for name in volume.listxattr(ino)}


def read_all(volume: Volume, ino: int, size: int, chunk: int = 65536) -> bytes:
    parts = []
    offset = 0
    while True:
        data = volume.read(ino, offset, chunk)
        if not data:
            break
        parts.append(data)
        offset += len(data)
    assert offset == size
    return b"".join(parts)


def compare_tree(volume: Volume, mnt: Path) -> int:
    """Walk both views from the root and assert they agree; return the entries compared."""
    compared = 0
    stack: list[tuple[int, Path]] = [(volume.root_ino, mnt)]
    assert kernel_attr(mnt) == volume.getattr(volume.root_ino)
    while stack:
        dir_ino, path = stack.pop()
        entries = {e.name: e.ino for e in volume.readdir(dir_ino)}
        kernel = {os.fsencode(n): os.lstat(path / n).st_ino for n in os.listdir(path)}
        assert entries == kernel, path
        for name, ino in entries.items():
            child = path / os.fsdecode(name)
            assert volume.lookup(dir_ino, name) == ino
            attr = volume.getattr(ino)
            assert attr == kernel_attr(child), child
            assert library_xattrs(volume, ino) == kernel_xattrs(child), child
            if attr.is_dir:
                stack.append((ino, child))
            elif attr.is_symlink:
                assert volume.readlink(ino) == os.fsencode(os.readlink(child)), child
            elif attr.is_regular:
                assert read_all(volume, ino, attr.size) == child.read_bytes(), child
            compared += 1
    return compared


def open_ext4(image: Path, **options: str) -> Ext4Volume:
    volume = drivers.open_image(image, options=options or None)
    assert isinstance(volume, Ext4Volume)
    return volume


def path_ino(volume: Volume, path: str) -> int:
    ino = volume.root_ino
    for part in path.strip("/").split("/"):
        ino = volume.lookup(ino, part.encode())
    return ino


def inode_offset(volume: Ext4Volume, ino: int) -> int:
    sb = volume.sb
    group, index = divmod(ino - 1, sb.inodes_per_group)
    return volume.groups.inode_table[group] * sb.block_size + index * sb.inode_size


def patch(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read(image: Path, offset: int, size: int) -> bytes:
    with open(image, "rb") as f:
        f.seek(offset)
        return f.read(size)
