"""The FUSE side of a driver process: any :class:`drivers.base.Volume` as pyfuse3 operations.

This module knows no on-disk format.  It translates inode numbers (FUSE's root must be
1), applies owner/permission overrides, maps driver errors to errno values, and logs.
The image is immutable, so the kernel is told to cache entries, attributes and page
contents for a long time: that is what makes a stat walk cost one request per
directory rather than one per file.
"""

from __future__ import annotations

import errno
import functools
import logging
import stat
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3
from pyfuse3 import (
    FileHandleT,
    FileNameT,
    FlagT,
    InodeT,
    ReaddirToken,
    RequestContext,
    XAttrNameT,
)

from drivers.base import Attr, CorruptImage, DriverError, NoSuchAttribute, Unsupported, Volume
from fusefs.prefetch import DirectoryPrefetcher, ListedEntry
from fusefs.watchdog import RequestTimeout, RequestWatchdog

log = logging.getLogger("pyfsmount")

#: The image never changes under us; a day of caching is as good as forever.
CACHE_TIMEOUT = 86400.0
#: "." and ".." come first in every listing, at FUSE offsets 1 and 2.
DOT_ENTRIES = 2

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class AttrOverrides:
    """Owner and permission overrides from ``-o uid=,gid=,umask=``."""

    uid: int | None = None
    gid: int | None = None
    umask: int | None = None


def errno_for(exc: BaseException) -> int:
    """The errno a request fails with when the driver raised ``exc``."""
    if isinstance(exc, FileNotFoundError):
        return errno.ENOENT
    if isinstance(exc, NotADirectoryError):
        return errno.ENOTDIR
    if isinstance(exc, IsADirectoryError):
        return errno.EISDIR
    if isinstance(exc, NoSuchAttribute):
        return errno.ENODATA
    if isinstance(exc, pyfuse3.FUSEError):
        return int(exc.errno)
    return errno.EIO


def describe_args(args: Sequence[object]) -> str:
    """Request arguments for a log line: numbers and names, not pyfuse3's context objects."""
    return ", ".join(repr(a) for a in args if isinstance(a, int | bytes | str | tuple | list))


def fuse_request(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run one request: log it under -d, turn every driver error into an errno.

    A :class:`CorruptImage` is an expected outcome of a bad image (one warning line), so
    is a request the watchdog abandoned for overrunning its CPU budget; anything else
    escaping a driver is a bug and is logged with its traceback.  Every way, the request
    gets EIO and the daemon keeps serving.
    """

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s(%s)", method.__name__, describe_args(args[1:]))
        operations = cast(VolumeOperations, args[0])
        watchdog = operations.watchdog
        try:
            watchdog.begin(method.__name__)
            try:
                return await method(*args, **kwargs)
            finally:
                watchdog.end()
        except pyfuse3.FUSEError:
            raise
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, NoSuchAttribute) as exc:
            raise pyfuse3.FUSEError(errno_for(exc)) from None
        except (CorruptImage, Unsupported, RequestTimeout) as exc:
            log.warning("%s(%s): EIO: %s", method.__name__, describe_args(args[1:]), exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception(
                "%s(%s): driver bug, answering EIO", method.__name__, describe_args(args[1:])
            )
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            operations.request_done()

    return wrapper


class VolumeOperations(pyfuse3.Operations):
    """pyfuse3 operations served from one read-only volume."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        volume: Volume,
        overrides: AttrOverrides | None = None,
        watchdog: RequestWatchdog | None = None,
    ) -> None:
        super().__init__()
        self.volume = volume
        self.overrides = overrides or AttrOverrides()
        self.overridden = self.overrides != AttrOverrides()
        #: Abandons a request that overruns its CPU budget (disabled unless given one).
        self.watchdog = watchdog or RequestWatchdog(0)
        self.block_size = max(512, min(volume.block_size, 1 << 20))
        self._no_xattrs = not volume.has_xattrs
        #: Set by the serving loop: decodes the next directories of a walk while idle.
        self.prefetcher: DirectoryPrefetcher | None = None
        #: Set by the serving loop: called after every request (busy polling).
        self.request_done: Callable[[], None] = lambda: None

    # Inode numbers: FUSE's root is 1, a driver's root is whatever its format says.
    # Swapping the two numbers keeps the mapping a bijection with no table.
    def to_driver(self, fuse_ino: int) -> int:
        root = self.volume.root_ino
        return root if fuse_ino == pyfuse3.ROOT_INODE else 1 if fuse_ino == root else fuse_ino

    def to_fuse(self, driver_ino: int) -> int:
        return self.to_driver(driver_ino)  # the swap is its own inverse

    def entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        """The reply for ``attr``: a walk makes one per entry, so it is kept to stores."""
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = InodeT(self.to_fuse(attr.ino))
        entry.entry_timeout = CACHE_TIMEOUT
        entry.attr_timeout = CACHE_TIMEOUT
        entry.st_mode = attr.mode
        entry.st_nlink = attr.nlink
        entry.st_uid = attr.uid
        entry.st_gid = attr.gid
        entry.st_rdev = attr.rdev
        entry.st_size = attr.size
        entry.st_blksize = self.block_size
        entry.st_blocks = attr.blocks
        entry.st_atime_ns = attr.atime_ns
        entry.st_mtime_ns = attr.mtime_ns
        entry.st_ctime_ns = attr.ctime_ns
        if self.overridden:
            self.override(entry)
        return entry

    def override(self, entry: pyfuse3.EntryAttributes) -> None:
        """Apply ``-o uid=,gid=,umask=`` to a reply."""
        o = self.overrides
        if o.umask is not None:
            entry.st_mode &= ~o.umask | stat.S_IFMT(entry.st_mode)
        if o.uid is not None:
            entry.st_uid = o.uid
        if o.gid is not None:
            entry.st_gid = o.gid

    def attr_of(self, fuse_ino: int) -> pyfuse3.EntryAttributes:
        return self.entry(self.volume.getattr(self.to_driver(fuse_ino)))

    @fuse_request
    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.to_driver(parent_inode)
        if name == b".":
            return self.attr_of(parent_inode)
        try:
            ino = self.volume.lookup(parent, name)
        except FileNotFoundError:
            # A negative entry the kernel may cache as long as a positive one.
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = InodeT(0)
            negative.entry_timeout = CACHE_TIMEOUT
            return negative
        return self.entry(self.volume.getattr(ino))

    @fuse_request
    async def getattr(self, inode: InodeT, ctx: RequestContext) -> pyfuse3.EntryAttributes:
        return self.attr_of(inode)

    @fuse_request
    async def readlink(self, inode: InodeT, ctx: RequestContext) -> FileNameT:
        return FileNameT(self.volume.readlink(self.to_driver(inode)))

    @fuse_request
    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        if not self.volume.getattr(self.to_driver(inode)).is_dir:
            raise NotADirectoryError()
        return FileHandleT(inode)

    @fuse_request
    async def readdir(self, fh: FileHandleT, start_id: int, token: ReaddirToken) -> None:
        """Entries after FUSE offset ``start_id``, prepared ahead by the prefetcher if it could."""
        dir_ino, reply, prefetcher = self.to_driver(fh), pyfuse3.readdir_reply, self.prefetcher
        prepared = None if prefetcher is None else prefetcher.take(dir_ino, start_id)
        entries = self.listing(dir_ino, start_id) if prepared is None else prepared
        subdirectories, complete = [], True
        for entry in entries:
            if not reply(token, entry.name, entry.attributes, entry.offset):
                complete = False
                break
            if entry.subdirectory:
                subdirectories.append(entry.subdirectory)
        if prefetcher is not None:
            prefetcher.listed(dir_ino, subdirectories, start_id == 0, complete)

    def listing(self, dir_ino: int, start_id: int = 0) -> Iterator[ListedEntry]:
        """A directory's entries from FUSE offset ``start_id``, as readdirplus replies them.

        "." and ".." come first (offsets 1 and 2): the kernel adds neither dot entry
        itself and drivers list neither. A driver's offset n travels as n + DOT_ENTRIES.
        """
        volume, entry = self.volume, self.entry  # hot loop
        if start_id < DOT_ENTRIES:
            dots = ((b".", dir_ino), (b"..", self.parent_of(dir_ino)))
            for offset, (name, ino) in enumerate(dots[start_id:], start_id + 1):
                yield ListedEntry(FileNameT(name), entry(volume.getattr(ino)), offset, 0)
        for dirent in volume.readdir(dir_ino, max(0, start_id - DOT_ENTRIES)):
            subdirectory = 0
            try:
                attr = volume.getattr(dirent.ino)
                attrs = entry(attr)
                if attr.is_dir:
                    subdirectory = dirent.ino
            except CorruptImage as exc:
                attrs = self.unreadable_entry(dirent.ino, dirent.name, exc)
            yield ListedEntry(dirent.name, attrs, dirent.next_offset + DOT_ENTRIES, subdirectory)

    def parent_of(self, dir_ino: int) -> int:
        """The directory's parent as its ".." says (the root is its own parent)."""
        if dir_ino == self.volume.root_ino:
            return dir_ino
        try:
            return self.volume.lookup(dir_ino, b"..")
        except (DriverError, OSError) as exc:
            log.warning("readdir: '..' of directory %d: %s", dir_ino, exc)
            return dir_ino

    def unreadable_entry(self, ino: int, name: bytes, exc: CorruptImage) -> pyfuse3.EntryAttributes:
        """Attributes for readdirplus; a bad inode must not hide its whole directory.

        The kernel lists a name whose inode is corrupt and fails only a stat of it.
        Here the name is listed with placeholder attributes the kernel may not cache,
        so the next lookup or stat asks again and gets EIO.
        """
        log.warning("readdir: %r (inode %d): %s", name, ino, exc)
        placeholder = pyfuse3.EntryAttributes()
        placeholder.st_ino = InodeT(self.to_fuse(ino))
        placeholder.st_mode = stat.S_IFREG
        placeholder.entry_timeout = 0
        placeholder.attr_timeout = 0
        return placeholder

    @fuse_request
    async def releasedir(self, fh: FileHandleT) -> None:
        return None

    @fuse_request
    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> pyfuse3.FileInfo:
        attr = self.volume.getattr(self.to_driver(inode))
        if attr.is_dir:
            raise IsADirectoryError()
        # keep_cache: pages read once stay valid for the life of the mount.
        return pyfuse3.FileInfo(fh=FileHandleT(inode), keep_cache=True, direct_io=False)

    @fuse_request
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        return self.volume.read(self.to_driver(fh), off, size)

    @fuse_request
    async def release(self, fh: FileHandleT) -> None:
        return None

    @fuse_request
    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> bytes:
        if self._no_xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel stops asking for this mount
        return self.volume.getxattr(self.to_driver(inode), name)

    @fuse_request
    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[XAttrNameT]:
        return [XAttrNameT(name) for name in self.volume.listxattr(self.to_driver(inode))]

    @fuse_request
    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        info = self.volume.statfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize = info.block_size
        data.f_frsize = info.block_size
        data.f_blocks = info.blocks
        data.f_bfree = info.blocks_free
        data.f_bavail = info.blocks_available
        data.f_files = info.files
        data.f_ffree = info.files_free
        data.f_favail = info.files_free
        data.f_namemax = info.name_max
        return data

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        """Nothing to release: no per-inode state is kept between requests."""
