"""Deterministic source trees that exercise everything a file system has to reproduce.

``build_tree(dest, params)`` creates a tree under ``dest`` (as root: owners, devices,
trusted.* xattrs) and returns a :class:`Manifest`: what the generator meant to make
(:attr:`Manifest.made`), what the source file system shows of it (:attr:`Manifest.entries`,
a :func:`tests.support.scan.scan_path` scan) and which paths carry which feature
(:attr:`Manifest.features`), so that tests can ask for "the sparse file" or "every
device" without knowing the layout.

The same seed and parameters give the same tree: names, contents, modes, owners, xattrs
and times (ctimes cannot be set and differ between builds).  Times are set last,
deepest first, so that creating children does not move directory mtimes.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.support.scan import Scan, scan_path

KiB = 1024
MiB = 1024 * KiB

NS = 1_000_000_000

#: ext4 can store times in [-2**31, 2**34 - 2**31) seconds (1901-12-13 .. 2446-05-10).
EXT4_TIME_MIN = -(2**31)
EXT4_TIME_MAX = 2**34 - 2**31 - 1

UIDS = (0, 1, 1000, 65534, 65535, 65536, 100000, 2**31 - 1, 2**32 - 2)

# POSIX ACL xattr format (include/uapi/linux/posix_acl_xattr.h).
ACL_XATTR_VERSION = 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 16, 32
ACL_UNDEFINED_ID = 0xFFFFFFFF


def posix_acl(*entries: tuple[int, int, int | None]) -> bytes:
    """The ``system.posix_acl_*`` value for ``(tag, perm, id)`` entries (id None: undefined)."""
    body = b"".join(
        struct.pack("<HHI", tag, perm, ACL_UNDEFINED_ID if ident is None else ident)
        for tag, perm, ident in sorted(entries, key=lambda e: (e[0], e[2] or 0))
    )
    return struct.pack("<I", ACL_XATTR_VERSION) + body


def file_capability(permitted: int, effective: bool = True) -> bytes:
    """A ``security.capability`` value (VFS_CAP_REVISION_2) granting ``permitted``."""
    magic = 0x02000000 | (1 if effective else 0)
    return struct.pack("<IIIII", magic, permitted & 0xFFFFFFFF, 0, permitted >> 32, 0)


@dataclass(frozen=True)
class TreeParams:
    """Size knobs of a generated tree.  Every field changes the tree deterministically."""

    seed: int = 1
    #: Everything but the big directory (files, sparse, links, devices, xattrs, names...).
    basics: bool = True
    #: Entries of ``/bigdir`` (0: no big directory).
    big_dir_entries: int = 0
    #: Data islands of ``/sparse/islands``: > 1360 gives a depth-2 extent tree at 4 KiB blocks.
    sparse_islands: int = 1400
    #: The ~1 and ~4 MiB random files and the 64 MiB sparse file crossing indirect levels.
    large_files: bool = True


#: Named parameter sets: ``standard`` for every option set, ``bigdir`` (10k entries in one
#: directory) for a few, ``tiny`` for quick tests of the support code.
PRESETS: dict[str, TreeParams] = {
    "standard": TreeParams(),
    "bigdir": TreeParams(basics=False, big_dir_entries=10_000),
    "tiny": TreeParams(sparse_islands=40, large_files=False),
}


@dataclass(frozen=True)
class Made:
    """What the generator asked for one path (None: left to the system)."""

    kind: str
    perm: int | None = None
    uid: int = 0
    gid: int = 0
    atime_ns: int | None = None
    mtime_ns: int | None = None
    size: int | None = None
    sha256: str | None = None
    target: bytes | None = None
    rdev: int | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict, hash=False)
    #: Another path of the same inode (a hard link made after the first name).
    link_of: bytes | None = None


@dataclass
class Manifest:
    """A generated tree: where it is, what was meant, what the source file system shows."""

    root: Path
    params: TreeParams
    made: dict[bytes, Made]
    entries: Scan
    features: dict[str, tuple[bytes, ...]]

    def paths(self, feature: str) -> tuple[bytes, ...]:
        """Paths carrying ``feature`` (see :data:`FEATURES`)."""
        return self.features.get(feature, ())

    @property
    def data_bytes(self) -> int:
        """Bytes of file data actually allocated in the source (a sizing hint)."""
        return sum(e.blocks * 512 for e in self.entries.values() if e.kind == "reg")


#: Features a manifest can list, and what they mean.
FEATURES: dict[str, str] = {
    "regular": "regular files of sizes around block and mapping boundaries",
    "large": "random files of a few MiB",
    "zeros": "a file of zero bytes only (mke2fs makes it a hole)",
    "sparse": "files with holes",
    "deep_extents": "a file fragmented enough for a depth-2 extent tree",
    "indirect_levels": "a sparse file with data at each indirect-block boundary",
    "nested": "directories nested deeply",
    "subdirs": "a directory with many subdirectories (nlink)",
    "multiblock_dir": "a directory of several blocks (hashed by e2fsck -D)",
    "big_dir": "a directory with many entries",
    "hardlink2": "inodes with 2 names",
    "hardlink3": "inodes with 3 names",
    "fast_symlink": "symlinks short enough for the inode (< 60 bytes)",
    "slow_symlink": "symlinks of 60 bytes and more",
    "chrdev": "character devices",
    "blkdev": "block devices",
    "big_devnum": "devices with a major or minor above 255",
    "fifo": "named pipes",
    "socket": "unix sockets",
    "xattr_user": "user.* xattrs",
    "xattr_trusted": "trusted.* xattrs",
    "xattr_security": "security.* xattrs",
    "acl": "POSIX ACLs (system.posix_acl_access/default)",
    "big_xattr": "an xattr value that needs an xattr block",
    "large_id": "uid or gid above 65535",
    "setuid": "setuid files",
    "setgid": "setgid files and directories",
    "sticky": "sticky files and directories",
    "time_pre1970": "times before the epoch",
    "time_post2038": "times after 2038-01-19",
    "time_ns": "times with nanoseconds",
    "name255": "names of 255 bytes",
    "name_non_utf8": "names that are not UTF-8",
}


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextmanager
def _cwd(path: bytes) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class _Builder:
    """Creates entries and remembers what it meant; metadata is applied in :meth:`finish`."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = os.fsencode(root)
        self.rng = random.Random(seed)
        self.made: dict[bytes, Made] = {}
        self.features: dict[str, list[bytes]] = {}

    # -- helpers

    def full(self, rel: bytes) -> bytes:
        return self.root if rel == b"/" else self.root + rel

    def mark(self, rel: bytes, *features: str) -> None:
        for name in features:
            assert name in FEATURES, name
            paths = self.features.setdefault(name, [])
            if rel not in paths:
                paths.append(rel)

    def default_time(self) -> int:
        # 1990..2030, with nanoseconds.
        return self.rng.randrange(631152000, 1893456000) * NS + self.rng.randrange(NS)

    def record(
        self,
        rel: bytes,
        kind: str,
        *,
        perm: int | None,
        uid: int = 0,
        gid: int = 0,
        times: tuple[int, int] | None = None,
        xattrs: dict[bytes, bytes] | None = None,
        features: tuple[str, ...] = (),
        size: int | None = None,
        sha256: str | None = None,
        target: bytes | None = None,
        rdev: int | None = None,
    ) -> None:
        atime, mtime = times if times is not None else (self.default_time(), self.default_time())
        self.made[rel] = Made(
            kind,
            perm=perm,
            uid=uid,
            gid=gid,
            atime_ns=atime,
            mtime_ns=mtime,
            size=size,
            sha256=sha256,
            target=target,
            rdev=rdev,
            xattrs=dict(xattrs or {}),
        )
        self.mark(rel, *features)
        if uid > 65535 or gid > 65535:
            self.mark(rel, "large_id")
        if perm is not None:
            if perm & stat.S_ISUID:
                self.mark(rel, "setuid")
            if perm & stat.S_ISGID:
                self.mark(rel, "setgid")
            if perm & stat.S_ISVTX:
                self.mark(rel, "sticky")
        for when in (atime, mtime):
            if when < 0:
                self.mark(rel, "time_pre1970")
            if when >= 2**31 * NS:
                self.mark(rel, "time_post2038")
        for key in xattrs or {}:
            prefix = key.split(b".", 1)[0]
            if key.startswith(b"system.posix_acl"):
                self.mark(rel, "acl")
            elif prefix in (b"user", b"trusted", b"security"):
                self.mark(rel, "xattr_" + prefix.decode())
        name = rel.rsplit(b"/", 1)[1]
        if len(name) == 255:
            self.mark(rel, "name255")
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            self.mark(rel, "name_non_utf8")

    # -- entry makers; ``meta`` is record()'s uid, gid, times, xattrs and features

    def dir(self, rel: bytes, perm: int = 0o755, **meta: Any) -> bytes:
        os.mkdir(self.full(rel), 0o700)
        self.record(rel, "dir", perm=perm, **meta)
        return rel

    def file(self, rel: bytes, data: bytes = b"", perm: int = 0o644, **meta: Any) -> bytes:
        with open(self.full(rel), "xb") as f:
            f.write(data)
        digest = hashlib.sha256(data).hexdigest()
        self.record(rel, "reg", perm=perm, size=len(data), sha256=digest, **meta)
        return rel

    def sparse(
        self,
        rel: bytes,
        pieces: list[tuple[int, bytes]],
        size: int,
        perm: int = 0o644,
        features: tuple[str, ...] = (),
        **meta: Any,
    ) -> bytes:
        """A file of ``size`` bytes, zero except ``pieces`` (offset, data), holes elsewhere."""
        fd = os.open(self.full(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for offset, data in pieces:
                os.pwrite(fd, data, offset)
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        digest = hashlib.sha256()
        position = 0
        for offset, data in sorted(pieces):
            assert offset >= position, "pieces overlap"
            digest.update(bytes(offset - position))
            digest.update(data)
            position = offset + len(data)
        digest.update(bytes(size - position))
        self.record(
            rel,
            "reg",
            perm=perm,
            size=size,
            sha256=digest.hexdigest(),
            features=(*features, "sparse"),
            **meta,
        )
        return rel

    def symlink(
        self, rel: bytes, target: bytes, features: tuple[str, ...] = (), **meta: Any
    ) -> bytes:
        os.symlink(target, self.full(rel))
        feature = "fast_symlink" if len(target) < 60 else "slow_symlink"
        self.record(
            rel,
            "lnk",
            perm=None,
            size=len(target),
            target=target,
            features=(*features, feature),
            **meta,
        )
        return rel

    def node(
        self,
        rel: bytes,
        kind: str,
        perm: int,
        major: int = 0,
        minor: int = 0,
        features: tuple[str, ...] = (),
        **meta: Any,
    ) -> bytes:
        type_bits = {"chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}[kind]
        rdev = os.makedev(major, minor) if kind in ("chr", "blk") else 0
        os.mknod(self.full(rel), type_bits | 0o600, rdev)
        features = (*features, {"chr": "chrdev", "blk": "blkdev", "fifo": "fifo"}[kind])
        if major > 255 or minor > 255:
            features = (*features, "big_devnum")
        self.record(
            rel,
            kind,
            perm=perm,
            rdev=rdev if kind != "fifo" else None,
            size=0,
            features=features,
            **meta,
        )
        return rel

    def unix_socket(
        self, rel: bytes, perm: int = 0o755, features: tuple[str, ...] = (), **meta: Any
    ) -> bytes:
        parent, name = self.full(rel).rsplit(b"/", 1)
        with _cwd(parent), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(name)
        self.record(rel, "sock", perm=perm, size=0, features=(*features, "socket"), **meta)
        return rel

    def hardlink(self, existing: bytes, rel: bytes) -> bytes:
        os.link(self.full(existing), self.full(rel), follow_symlinks=False)
        first = self.made[existing]
        self.made[rel] = Made(
            first.kind,
            perm=first.perm,
            uid=first.uid,
            gid=first.gid,
            size=first.size,
            sha256=first.sha256,
            target=first.target,
            rdev=first.rdev,
            xattrs=first.xattrs,
            link_of=existing,
        )
        return rel

    # -- metadata, last

    def finish(self) -> None:
        """Owners, modes, xattrs, then times deepest first (so directory mtimes stick)."""
        for rel, made in self.made.items():
            if made.link_of is not None:
                continue
            path = self.full(rel)
            if made.uid or made.gid:
                os.chown(path, made.uid, made.gid, follow_symlinks=False)
            if made.perm is not None:
                os.chmod(path, made.perm)  # after chown, which clears setuid/setgid
        for rel, made in self.made.items():
            if made.link_of is not None:
                continue
            for key, value in made.xattrs.items():
                os.setxattr(self.full(rel), key, value, follow_symlinks=False)
        by_depth = sorted(self.made, key=lambda r: (-r.count(b"/") if r != b"/" else 1, r))
        for rel in by_depth:
            made = self.made[rel]
            if made.link_of is not None:
                continue
            assert made.atime_ns is not None and made.mtime_ns is not None
            os.utime(self.full(rel), ns=(made.atime_ns, made.mtime_ns), follow_symlinks=False)
        # Links share the inode: give them the first name's times in the record.
        for rel, made in list(self.made.items()):
            if made.link_of is not None:
                first = self.made[made.link_of]
                self.made[rel] = replace(made, atime_ns=first.atime_ns, mtime_ns=first.mtime_ns)


# --------------------------------------------------------------------------- the layout

REGULAR_SIZES = (
    0,
    1,
    2,
    59,
    60,
    61,
    100,
    150,
    200,
    511,
    512,
    1023,
    1024,
    1025,
    2048,
    4095,
    4096,
    4097,
    8191,
    8192,
    8193,
    12287,
    12288,
    12289,
    49151,
    49152,
    49153,
    65536,
    65537,
    (12 + 256) * KiB + 1,
)
LARGE_SIZES = (MiB, (12 + 1024) * 4 * KiB + 1)  # the second needs double indirect at 4 KiB

NAMES: tuple[bytes, ...] = (
    b"n" * 255,
    ("\u00e9" * 127 + "x").encode(),  # 255 bytes of two-byte UTF-8
    b"caf\xe9",  # latin-1
    b"\xff\xfe\xfd",
    b"\x80",
    b"bad-\xc3\x28-utf8",
    b"with space",
    b"with\nnewline",
    b"tab\there",
    b"\x01\x7f-controls",
    b"-leading-dash",
    b"*?[glob]",
    b"...",
    b".hidden",
    "\u65e5\u672c\u8a9e".encode(),
    "\U0001f600".encode(),
    "e\u0301".encode(),  # NFD ...
    "\u00e9".encode(),  # ... and NFC of the same letter: two names
    b"UPPER",
    b"upper",
    b"=",
)

DEVICES: tuple[tuple[str, str, int, int, int], ...] = (
    # name, kind, perm, major, minor
    ("null", "chr", 0o666, 1, 3),
    ("whiteout", "chr", 0o000, 0, 0),
    ("tty64", "chr", 0o620, 4, 64),
    ("major300", "chr", 0o600, 300, 5),
    ("minor300", "chr", 0o640, 8, 300),
    ("max", "chr", 0o600, 4095, 1048575),
    ("sda", "blk", 0o660, 8, 0),
    ("loop1", "blk", 0o660, 7, 1),
    ("nvme", "blk", 0o600, 259, 70000),
    ("major511", "blk", 0o600, 511, 255),
)


def _layout(b: _Builder, p: TreeParams) -> None:
    rng = b.rng
    ids = UIDS

    b.dir(b"/files")
    for index, size in enumerate(REGULAR_SIZES):
        b.file(
            b"/files/size-%07d" % size,
            rng.randbytes(size),
            perm=(0o644, 0o600, 0o755, 0o444, 0o640)[index % 5],
            uid=ids[index % len(ids)],
            gid=ids[(index * 3) % len(ids)],
            features=("regular",),
        )
    b.file(b"/files/zeros-64k", bytes(64 * KiB), features=("zeros",))
    b.file(b"/files/text", b"".join(b"line %d of some text\n" % i for i in range(3000)))
    if p.large_files:
        for size in LARGE_SIZES:
            b.file(b"/files/large-%d" % size, rng.randbytes(size), features=("large",))

    b.dir(b"/sparse")
    pieces: list[tuple[int, bytes]] = []
    position = 0
    for _ in range(p.sparse_islands):
        position += rng.randint(2, 6) * 4 * KiB
        data = rng.randbytes(rng.randint(1, 256))
        pieces.append((position + rng.randrange(0, 4 * KiB - len(data)), data))
    b.sparse(b"/sparse/islands", pieces, position + 12 * KiB, features=("deep_extents",))
    b.sparse(b"/sparse/hole-at-start", [(5 * MiB, b"0123456789")], 5 * MiB + 10)
    b.sparse(b"/sparse/hole-at-end", [(0, rng.randbytes(4 * KiB))], 8 * MiB)
    b.sparse(b"/sparse/all-hole", [], MiB)
    b.sparse(b"/sparse/mid-block", [(3 * KiB + 5, b"x" * 2000)], 100 * KiB)
    if p.large_files:
        boundaries = (
            12 * KiB,  # first single-indirect block at 1 KiB
            48 * KiB,  # ... at 4 KiB
            (12 + 256) * KiB,  # double indirect at 1 KiB
            (12 + 1024) * 4 * KiB,  # double indirect at 4 KiB
            (12 + 256 + 256 * 256) * KiB,  # triple indirect at 1 KiB
        )
        far = [(0, b"start")] + [(at - 8, rng.randbytes(16)) for at in boundaries]
        b.sparse(
            b"/sparse/indirect-levels", far, boundaries[-1] + 100, features=("indirect_levels",)
        )

    b.dir(b"/dirs")
    path = b"/dirs"
    for depth in range(1, 13):
        path = b.dir(path + b"/d%d" % depth, features=("nested",))
    b.file(path + b"/leaf", b"deep\n")
    b.dir(b"/dirs/empty")
    b.dir(b"/dirs/subdirs", features=("subdirs",))
    for index in range(40):
        b.dir(b"/dirs/subdirs/s%02d" % index, perm=(0o755, 0o700, 0o555)[index % 3])
    b.dir(b"/dirs/medium", features=("multiblock_dir",))
    for index in range(300):
        b.file(b"/dirs/medium/entry-%03d-" % index + b"m" * (index % 17))
    b.dir(b"/dirs/sticky", perm=0o1777)
    b.dir(b"/dirs/setgid", perm=0o2775, gid=100000)
    b.dir(b"/dirs/all-bits", perm=0o7777, uid=65536, gid=65536)
    b.dir(b"/dirs/no-perms", perm=0o000)
    b.file(b"/dirs/no-perms/inside", b"still here\n", perm=0o000)

    b.dir(b"/links")
    b.file(
        b"/links/three", b"one inode, three names\n", uid=1000, gid=1000, features=("hardlink3",)
    )
    b.mark(b.hardlink(b"/links/three", b"/links/three-b"), "hardlink3")
    b.mark(b.hardlink(b"/links/three", b"/dirs/d1/three-c"), "hardlink3")
    b.file(b"/links/two", rng.randbytes(5000), features=("hardlink2",))
    b.mark(b.hardlink(b"/links/two", b"/files/two-b"), "hardlink2")
    b.symlink(b"/links/sym", b"three", features=("hardlink2",))
    b.mark(b.hardlink(b"/links/sym", b"/links/sym-b"), "hardlink2")
    b.node(b"/links/fifo", "fifo", 0o644, features=("hardlink2",))
    b.mark(b.hardlink(b"/links/fifo", b"/links/fifo-b"), "hardlink2")

    b.dir(b"/symlinks")
    targets = {
        b"fast-1": b"a",
        b"fast-59": (b"abcdefgh/" * 7)[:59],
        b"slow-60": (b"abcdefgh/" * 7)[:59] + b"Z",
        b"slow-61": (b"abcdefgh/" * 7)[:59] + b"YZ",
        b"slow-100": b"d/" * 50,
        b"slow-200": bytes(rng.choice(b"abcdefghij/") for _ in range(199)) + b"e",
        b"slow-1000": b"/".join(b"c%03d" % i for i in range(200)) + b"x",
        b"absolute": b"/etc/passwd",
        b"dangling": b"does/not/exist",
        b"to-dir": b"../dirs",
        b"dot": b".",
        b"non-utf8": b"caf\xe9/\xff\xfe",
        b"spaces": b"a target with spaces",
    }
    for index, (name, target) in enumerate(targets.items()):
        b.symlink(
            b"/symlinks/" + name,
            target[:1000],
            uid=ids[index % len(ids)],
            gid=ids[(index + 2) % len(ids)],
        )
    b.symlink(b"/symlinks/with-xattr", b"three", xattrs={b"trusted.on-symlink": b"yes"})

    b.dir(b"/special")
    for device, kind, perm, major, minor in DEVICES:
        b.node(b"/special/" + device.encode(), kind, perm, major, minor, uid=0, gid=6)
    b.node(b"/special/fifo", "fifo", 0o620, uid=1000, gid=100000)
    b.unix_socket(b"/special/socket", perm=0o755)
    b.unix_socket(b"/special/socket-owned", perm=0o600, uid=100000, gid=1000)
    b.node(b"/special/dev-xattr", "chr", 0o600, 1, 5, xattrs={b"trusted.dev": b"attr on a device"})

    b.dir(b"/xattrs", xattrs={b"user.on-dir": b"directory value"})
    b.file(b"/xattrs/user-one", b"x", xattrs={b"user.one": b"1"})
    b.file(
        b"/xattrs/user-many",
        b"many",
        xattrs={b"user.attr%02d" % i: b"value-%d" % i * (i % 4 + 1) for i in range(20)},
    )
    b.file(b"/xattrs/user-empty", b"", xattrs={b"user.empty": b""})
    b.file(b"/xattrs/user-binary", b"", xattrs={b"user.bin": bytes(range(256))[::7] + b"\0\xff"})
    b.file(b"/xattrs/user-long-name", b"", xattrs={b"user." + b"n" * 250: b"long name"})
    b.file(
        b"/xattrs/big",
        b"big xattr",
        xattrs={b"user.big": rng.randbytes(900)},
        features=("big_xattr",),
    )
    b.file(b"/xattrs/trusted", b"", xattrs={b"trusted.overlay.opaque": b"y", b"trusted.t": b"2"})
    b.file(b"/xattrs/security", b"", xattrs={b"security.test": b"sec"})
    b.file(
        b"/xattrs/capability",
        b"#!/bin/sh\n",
        perm=0o755,
        xattrs={b"security.capability": file_capability(1 << 10)},  # cap_net_bind_service
    )
    b.file(
        b"/xattrs/mixed",
        b"",
        xattrs={b"user.u": b"user", b"trusted.t": b"trusted", b"security.s": b"security"},
    )
    access = posix_acl(
        (ACL_USER_OBJ, 6, None),
        (ACL_USER, 4, 1000),
        (ACL_USER, 6, 70000),
        (ACL_GROUP_OBJ, 4, None),
        (ACL_GROUP, 6, 2000),
        (ACL_MASK, 6, None),
        (ACL_OTHER, 4, None),
    )
    b.file(b"/xattrs/acl", b"acl\n", perm=0o664, xattrs={b"system.posix_acl_access": access})
    default = posix_acl(
        (ACL_USER_OBJ, 7, None),
        (ACL_USER, 5, 65536),
        (ACL_GROUP_OBJ, 5, None),
        (ACL_MASK, 7, None),
        (ACL_OTHER, 1, None),
    )
    dir_access = posix_acl(
        (ACL_USER_OBJ, 7, None),
        (ACL_GROUP_OBJ, 5, None),
        (ACL_GROUP, 7, 100000),
        (ACL_MASK, 7, None),
        (ACL_OTHER, 5, None),
    )
    b.dir(
        b"/xattrs/acl-dir",
        perm=0o775,
        xattrs={b"system.posix_acl_access": dir_access, b"system.posix_acl_default": default},
    )
    b.file(b"/xattrs/acl-dir/inside", b"made before the default ACL\n")

    b.dir(b"/owners")
    modes = (0o4755, 0o2755, 0o6755, 0o1644, 0o7777, 0o000, 0o4000, 0o2644, 0o1000, 0o777)
    for index, perm in enumerate(modes):
        b.file(
            b"/owners/mode-%04o" % perm,
            b"mode\n",
            perm=perm,
            uid=ids[(index + 3) % len(ids)],
            gid=ids[(index + 5) % len(ids)],
        )
    for uid in ids:
        b.file(b"/owners/uid-%d" % uid, b"", uid=uid, gid=ids[-1 - ids.index(uid)])

    b.dir(b"/times")
    special_times = {
        b"epoch": (0, 0),
        b"minus-1ns": (-1, -1),
        b"y1901-min": (EXT4_TIME_MIN * NS, EXT4_TIME_MIN * NS),
        b"y1901-min-ns": ((EXT4_TIME_MIN + 1) * NS + 1, (EXT4_TIME_MIN + 1) * NS + 999999999),
        b"y1950-ns": (-631152000 * NS + 123456789, -631152000 * NS + 987654321),
        b"y1969": (-86400 * NS, -3600 * NS + 5),
        b"y2038-last": ((2**31 - 1) * NS + 999999999, (2**31 - 1) * NS),
        b"y2038-past": (2**31 * NS, 2**31 * NS + 500000000),
        b"y2106-past": (2**32 * NS + 1, (2**32 + 86400) * NS),
        b"y2242": (8589934592 * NS, 8589934591 * NS + 999999999),
        b"y2446-max": (EXT4_TIME_MAX * NS, EXT4_TIME_MAX * NS),
        b"y2446-max-ns": ((EXT4_TIME_MAX - 1) * NS + 999999999, (EXT4_TIME_MAX - 1) * NS + 1),
        b"ns-1": (1_700_000_000 * NS + 1, 1_700_000_000 * NS + 999999999),
    }
    for name, times in special_times.items():
        b.file(b"/times/" + name, name, times=times, features=("time_ns",))
    b.dir(b"/times/dir-1960", times=(-315619200 * NS + 7, -315619200 * NS + 3))
    b.dir(b"/times/dir-2100", times=(4102444800 * NS + 11, 4102444800 * NS + 13))
    b.symlink(b"/times/link-1965", b"epoch", times=(-157766400 * NS + 1, -157766400 * NS + 2))

    b.dir(b"/names")
    for name in NAMES:
        b.file(b"/names/" + name, name)
    long_dir = b.dir(b"/names/" + b"D" * 254 + b"d")
    b.file(long_dir + b"/" + b"F" * 255, b"255/255\n")


def _big_dir(b: _Builder, count: int) -> None:
    b.dir(b"/bigdir", features=("big_dir",))
    for index in range(count):
        # Short names of varied length (mke2fs -d inserts in O(entries x dir blocks)),
        # and now and then the longest name there is.
        name = b"e%05d" % index + b"x" * (index * 7 % 23)
        if index % 1000 == 999:
            name = name + b"L" * (255 - len(name))
        fd = os.open(b.full(b"/bigdir/" + name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        b.made[b"/bigdir/" + name] = Made(
            "reg",
            perm=None,
            size=0,
            sha256=hashlib.sha256().hexdigest(),
            atime_ns=None,
            mtime_ns=None,
        )
    b.file(b"/bigdir/with-data", b"found among many\n")


def build_tree(dest: str | os.PathLike[str], params: TreeParams | str = "standard") -> Manifest:
    """Create the tree in ``dest`` (which must not exist) and return its manifest.

    Needs root (owners, devices, trusted.* xattrs); ``dest`` must be on a file system
    with user, trusted and security xattrs and POSIX ACLs (ext4, xfs, btrfs, tmpfs).
    """
    if isinstance(params, str):
        params = PRESETS[params]
    root = Path(dest)
    with _umask(0):
        root.mkdir(mode=0o755)
        builder = _Builder(root, params.seed)
        builder.made[b"/"] = Made(
            "dir",
            perm=0o775,
            gid=100000,
            atime_ns=builder.default_time(),
            mtime_ns=builder.default_time(),
            xattrs={b"user.root": b"on the root directory"},
        )
        if params.basics:
            _layout(builder, params)
        if params.big_dir_entries:
            _big_dir(builder, params.big_dir_entries)
        # Entries made with no times of their own (the big directory) keep creation times.
        for rel, made in list(builder.made.items()):
            if made.atime_ns is None and made.link_of is None:
                builder.made[rel] = replace(
                    made, atime_ns=builder.default_time(), mtime_ns=builder.default_time()
                )
        builder.finish()
    features = {name: tuple(paths) for name, paths in builder.features.items()}
    return Manifest(root, params, builder.made, scan_path(root), features)
