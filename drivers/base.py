"""The driver interface every format implements, the block reader, and the error types.

A driver is a pure parser: it reads its image only through a :class:`BlockReader`
and answers with plain values (:class:`Attr`, :class:`StatFs`, ``bytes``).  It knows
nothing of FUSE, trio or the sandbox, so it can be used as a library and fuzzed
without a mount.

Errors a driver may raise, and nothing else:

* :class:`CorruptImage` -- the image contradicts itself; the request fails with EIO
  and the reason is logged.  The rest of the volume stays usable.
* :class:`Unsupported` -- a well-formed image that this driver cannot serve (unknown
  incompatible feature, unsupported compressor); raised at open time so the mount is
  refused with the reason, as the kernel would.
* ``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError`` and
  :class:`NoSuchAttribute` for lookups of names, types and xattrs that do not exist.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import os
import stat
import struct
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Generic, ParamSpec, TypeVar

import construct

from drivers.pagecache import fully_cached

#: Alignment of O_DIRECT reads (offset, length and buffer): the largest logical block
#: size of common disks, so right for 512-byte and 4 KiB-sector devices alike.
DIRECT_ALIGN = 4096


class DriverError(Exception):
    """Base of the errors a driver raises on purpose."""


class CorruptImage(DriverError):
    """The image is inconsistent; the operation that met it fails with EIO."""


class Unsupported(DriverError):
    """The image is valid but uses something this driver does not implement."""


class NoSuchAttribute(DriverError):
    """getxattr of a name the inode does not carry (ENODATA)."""


#: What decoding crafted bytes may raise (a short struct, an index or a table key that is
#: not there, a value out of range, a construct parse error, an allocation a bogus size
#: asked for); at a driver's public boundary each means a corrupt image.
DECODING_ERRORS = (
    struct.error,
    IndexError,
    KeyError,
    ValueError,
    OverflowError,
    ZeroDivisionError,
    RecursionError,
    MemoryError,
    construct.ConstructError,
)

P = ParamSpec("P")
R = TypeVar("R")


def guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Turn :data:`DECODING_ERRORS` escaping a volume method into CorruptImage."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except DECODING_ERRORS as exc:
            raise CorruptImage(f"malformed metadata ({type(exc).__name__}: {exc})") from exc

    return wrapper


@dataclass(slots=True)
class Attr:
    """What stat(2) shows for one inode; times are nanoseconds since the epoch.

    Treat as immutable (drivers share them through caches). Not ``frozen``: a frozen
    dataclass costs four times as much to create, and a directory walk creates one per
    entry.
    """

    ino: int
    mode: int  # file type bits and permission bits, as st_mode
    nlink: int
    uid: int
    gid: int
    size: int
    rdev: int = 0  # as os.makedev(major, minor)
    blocks: int = 0  # 512-byte units, as st_blocks
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)


@dataclass(frozen=True, slots=True)
class StatFs:
    """What statfs(2) shows; counts are in units of ``block_size``."""

    block_size: int
    blocks: int
    blocks_free: int
    blocks_available: int
    files: int
    files_free: int
    name_max: int = 255


@dataclass(slots=True)
class DirEntry:
    """One directory entry. ``next_offset`` resumes a listing just after this entry.

    Treat as immutable; not ``frozen`` for the same reason as :class:`Attr`.
    """

    name: bytes
    ino: int
    next_offset: int


class BlockReader:
    """Bounds-checked positional reads of one region of an image file descriptor.

    The region starts at ``base`` bytes into the file (``-o offset=``, a partition) and
    is ``size`` bytes long.  Every read outside it, or one the file answers short, is a
    :class:`CorruptImage`: on-disk pointers are never trusted.  The reader does no
    caching of its own; drivers keep bounded caches of what they parsed.

    ``bulk_fd``, when given, is the same image opened once more for bulk file data,
    read once on its way into the mount's page cache (:meth:`read_bulk`): buffered, or
    with ``O_DIRECT`` where filling the page cache is slow. ``random_fd``, when given,
    is the same image opened once more with the kernel's read-ahead off
    (``POSIX_FADV_RANDOM``), for reads that follow no other (:meth:`read_random`).
    """

    __slots__ = ("base", "bulk_direct", "bulk_fd", "fd", "random_fd", "size")

    def __init__(
        self,
        fd: int,
        base: int = 0,
        size: int | None = None,
        bulk_fd: int | None = None,
        random_fd: int | None = None,
    ) -> None:
        info = os.fstat(fd)
        # A block device reports st_size 0: its size is where its end is.
        file_size = info.st_size if stat.S_ISREG(info.st_mode) else os.lseek(fd, 0, os.SEEK_END)
        if base < 0 or base > file_size:
            raise Unsupported(f"offset {base} is outside the image ({file_size} bytes)")
        self.fd = fd
        self.base = base
        self.size = file_size - base if size is None else min(size, file_size - base)
        self.bulk_fd = bulk_fd
        self.bulk_direct = bulk_fd is not None and bool(
            fcntl.fcntl(bulk_fd, fcntl.F_GETFL) & os.O_DIRECT
        )
        self.random_fd = random_fd

    def window(self, offset: int, size: int) -> BlockReader:
        """A reader on ``size`` bytes of this region from ``offset`` (a partition)."""
        return BlockReader(self.fd, self.base + offset, size, self.bulk_fd, self.random_fd)

    def read(self, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes at ``offset`` of the region."""
        return self._pread(self.fd, offset, length)

    def read_random(self, offset: int, length: int) -> bytes:
        """Like :meth:`read`, for a read that follows no other (a random read of file data).

        Through ``random_fd`` when there is one: the kernel then reads just the pages
        asked for, where its read-ahead on the image would read more for each such
        read. The pages stay in the page cache, so the next read of them, or a read of
        an image that is cached already, costs no disk read. (A confined driver cannot
        ask which pages are cached: cachestat(2) is refused for a file its user may not
        write. So an O_DIRECT :meth:`read_bulk` reads the disk there, unless the driver
        found the image in the cache before it confined itself and gave no ``bulk_fd``.)
        """
        return self._pread(self.fd if self.random_fd is None else self.random_fd, offset, length)

    def _pread(self, fd: int, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise CorruptImage(
                f"read of {length} bytes at {offset} is outside the image ({self.size} bytes)"
            )
        data = os.pread(fd, length, self.base + offset)
        if len(data) != length:
            raise CorruptImage(f"short read at {offset}: image changed size?")
        return data

    def read_bulk(self, offset: int, length: int, scratch: mmap.mmap) -> bytes:
        """Like :meth:`read`, for file data read once on its way into the mount's page
        cache (drivers.readahead): through ``bulk_fd``, whose read-ahead state is its own.

        A buffered descriptor reads through the page cache, with the kernel's read-ahead
        well ahead of the reader. An ``O_DIRECT`` one reads around it, into ``scratch``:
        a page-aligned buffer of at least ``length + 2 * DIRECT_ALIGN`` bytes, as
        O_DIRECT reads whole aligned blocks, and the bytes asked for are copied out of
        them (what the page cache holds already is taken from there). Without a bulk
        descriptor, or where the file system refuses O_DIRECT reads, this is a plain
        :meth:`read` (and stays one).
        """
        if offset < 0 or length < 0 or offset + length > self.size:
            raise CorruptImage(
                f"read of {length} bytes at {offset} is outside the image ({self.size} bytes)"
            )
        position = self.base + offset
        bulk_fd = self.bulk_fd
        if bulk_fd is None:
            return self.read(offset, length)
        if not self.bulk_direct:
            return self._pread(bulk_fd, offset, length)
        if fully_cached(self.fd, position, length):
            return self.read(offset, length)  # an image just written or read
        first = position - position % DIRECT_ALIGN
        last = -(-(position + length) // DIRECT_ALIGN) * DIRECT_ALIGN
        if last - first > len(scratch):
            return self.read(offset, length)
        with memoryview(scratch) as whole, whole[: last - first] as blocks:
            try:
                got = os.preadv(bulk_fd, [blocks], first)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.bulk_fd = None  # no O_DIRECT here after all: cached reads from now
                return self.read(offset, length)
            skip = position - first
            if got < skip + length:
                raise CorruptImage(f"short read at {offset}: image changed size?")
            return bytes(blocks[skip : skip + length])

    def read_upto(self, offset: int, length: int) -> bytes:
        """Like :meth:`read`, but clipped at the end of the region (for probing)."""
        if offset < 0 or offset >= self.size:
            return b""
        return self.read(offset, min(length, self.size - offset))


K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A least-recently-used map bounded by the summed ``cost`` of its values.

    Drivers use it for parsed metadata (inodes, directory blocks, decompressed
    blocks) so that no image, however crafted, makes the cache grow without bound.
    """

    def __init__(self, max_cost: int) -> None:
        self.max_cost = max_cost
        self.cost = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, cost: int = 1) -> V:
        if cost > self.max_cost:
            return value
        old = self._items.pop(key, None)
        if old is not None:
            self.cost -= old[1]
        self._items[key] = (value, cost)
        self.cost += cost
        while self.cost > self.max_cost:
            _, (_, evicted_cost) = self._items.popitem(last=False)
            self.cost -= evicted_cost
        return value

    def __len__(self) -> int:
        return len(self._items)


class Volume(ABC):
    """One opened file system, read-only, with inode numbers as the currency.

    Subclasses set ``fs_type`` (the name users give to ``-t``), implement
    :meth:`probe` and :meth:`open`, and the operations below.  ``accepted_options``
    lists the driver-specific mount options (``-o noload``) it understands.
    """

    fs_type: ClassVar[str]
    fs_aliases: ClassVar[frozenset[str]] = frozenset()
    accepted_options: ClassVar[frozenset[str]] = frozenset()

    root_ino: int

    @classmethod
    @abstractmethod
    def probe(cls, reader: BlockReader) -> bool:
        """Whether the image looks like this format (magic numbers only, never raises)."""

    @classmethod
    @abstractmethod
    def open(cls, reader: BlockReader, options: Mapping[str, str]) -> Volume:
        """Validate the superblock and return a volume, or raise Unsupported/CorruptImage."""

    @abstractmethod
    def getattr(self, ino: int) -> Attr: ...

    @abstractmethod
    def lookup(self, dir_ino: int, name: bytes) -> int:
        """The inode number of ``name`` in directory ``dir_ino`` (FileNotFoundError if none)."""

    @abstractmethod
    def readdir(self, dir_ino: int, offset: int = 0) -> Iterator[DirEntry]:
        """Entries of a directory from ``offset`` (0 = start), without "." and ".."."""

    @abstractmethod
    def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a regular file from ``offset``; short only at EOF."""

    @abstractmethod
    def readlink(self, ino: int) -> bytes: ...

    def listxattr(self, ino: int) -> list[bytes]:
        """Full xattr names (with their namespace prefix) the inode carries."""
        return []

    def getxattr(self, ino: int, name: bytes) -> bytes:
        raise NoSuchAttribute(name.decode(errors="replace"))

    @property
    def has_xattrs(self) -> bool:
        """False when the volume can carry no xattrs at all (lets FUSE stop asking)."""
        return True

    @abstractmethod
    def statfs(self) -> StatFs: ...

    @property
    def block_size(self) -> int:
        """The unit files are stored in (``st_blksize``). Formats whose statfs() counts
        (FAT's free clusters) override this: a mount should not wait for a count."""
        return self.statfs().block_size

    @property
    def label(self) -> str:
        """A human-readable volume name, or an empty string."""
        return ""
