"""SquashfsVolume: the driver interface over the squashfs parsers of this package.

Opening does what the kernel's mount does: the superblock and compressor options, every
table index (checked against each other), then the root inode.  Inode numbers are the
inodes' own ``inode_number``; squashfs finds inodes by reference (block and offset), so
the volume remembers number -> reference for every inode a lookup or a listing has shown
(the root's comes from the superblock).  That map holds at most as many entries as the
image says it has inodes; a number that two different inodes claim, or an inode whose
own number is not the one its directory entry gave, is a corrupt image (the kernel would
show the first inode it met under that number, or a d_ino different from st_ino).

Every public method converts stray decoding errors (struct.error, IndexError, ...) into
CorruptImage at this boundary, so nothing else escapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from drivers.base import (
    DECODING_ERRORS,
    Attr,
    BlockReader,
    CorruptImage,
    DirEntry,
    NoSuchAttribute,
    StatFs,
    Volume,
    guarded,
)
from drivers.squashfs.directory import DirectoryTable
from drivers.squashfs.file import FileReader
from drivers.squashfs.inode import Inode, InodeTable
from drivers.squashfs.layout import SQUASHFS_NAME_LEN
from drivers.squashfs.metadata import Device, MetadataReader, Region
from drivers.squashfs.superblock import MAGIC_BYTES, Superblock, parse_superblock
from drivers.squashfs.tables import Tables, read_tables
from drivers.squashfs.xattr import XattrTable

__all__ = ["SquashfsVolume"]

# Cache budgets: the working set of requests in flight, not the whole volume (the kernel
# keeps attributes and entries under FUSE).
METADATA_CACHE_BYTES = 4 << 20
INODE_CACHE_ENTRIES = 2048
DIRECTORY_CACHE_BYTES = 1 << 20
DATA_CACHE_BYTES = 1 << 20


class SquashfsVolume(Volume):
    """A squashfs 4.0 image (any of its six compressors), read-only by nature."""

    fs_type = "squashfs"
    accepted_options = frozenset()

    def __init__(self, reader: BlockReader, sb: Superblock) -> None:
        self.reader = reader
        self.sb = sb
        self.device = Device(reader, sb.bytes_used, sb.codec, sb.block_size)
        self.meta = MetadataReader(self.device, METADATA_CACHE_BYTES)
        self.tables: Tables = read_tables(self.device, self.meta, sb)
        tables = self.tables
        self.inode_region = Region("inode table", sb.inode_table_start, sb.directory_table_start)
        self.inodes = InodeTable(
            self.meta, self.inode_region, tables, sb.block_size, INODE_CACHE_ENTRIES
        )
        directory_region = Region(
            "directory table", sb.directory_table_start, tables.directory_table_end
        )
        self.directories = DirectoryTable(
            self.meta, directory_region, self.inode_region, DIRECTORY_CACHE_BYTES
        )
        self.files = FileReader(
            self.device, self.meta, self.inode_region, sb.block_log, DATA_CACHE_BYTES
        )
        self.xattrs: XattrTable | None = None
        if tables.xattr_ids is not None:
            xattr_region = Region(
                "xattr table", tables.xattr_ids.xattr_table_start, tables.xattr_ids.region.start
            )
            self.xattrs = XattrTable(self.meta, xattr_region)
        self._refs: dict[int, int] = {}  # inode number -> reference, at most sb.inodes
        self.root_ino = 0

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def probe(cls, reader: BlockReader) -> bool:
        try:
            return reader.read_upto(0, 4) == MAGIC_BYTES
        except Exception:
            return False

    @classmethod
    @guarded
    def open(cls, reader: BlockReader, options: Mapping[str, str]) -> SquashfsVolume:
        volume = cls(reader, parse_superblock(reader))
        root = volume.inodes.read(volume.sb.root_inode)
        if not root.is_dir:
            raise CorruptImage(f"the root inode {root.ino} is not a directory")
        volume.root_ino = root.ino
        volume._refs[root.ino] = root.ref
        return volume

    # -- inode numbers ---------------------------------------------------------------------

    def _remember(self, ino: int, ref: int) -> None:
        known = self._refs.get(ino)
        if known == ref:
            return
        if known is not None:
            raise CorruptImage(f"inode number {ino} names two inodes ({known:#x}, {ref:#x})")
        if ino == 0 or len(self._refs) >= self.sb.inodes:
            raise CorruptImage(f"inode number {ino}: more inodes than the {self.sb.inodes} stated")
        self._refs[ino] = ref

    def _inode(self, ino: int) -> Inode:
        ref = self._refs.get(ino)
        if ref is None:
            raise CorruptImage(f"inode number {ino} was never listed")
        inode = self.inodes.read(ref)
        if inode.ino != ino:
            raise CorruptImage(f"inode {ref:#x} has number {inode.ino}, its entry says {ino}")
        return inode

    def _dir(self, ino: int) -> Inode:
        inode = self._inode(ino)
        if not inode.is_dir:
            raise NotADirectoryError(f"inode {ino} is not a directory")
        return inode

    # -- the interface ---------------------------------------------------------------------

    @guarded
    def getattr(self, ino: int) -> Attr:
        return self._inode(ino).attr()

    @guarded
    def lookup(self, dir_ino: int, name: bytes) -> int:
        inode = self._dir(dir_ino)
        if name == b".":
            return dir_ino
        if name == b"..":
            return self._parent(inode)
        if not name or len(name) > SQUASHFS_NAME_LEN or b"/" in name:
            raise FileNotFoundError(name.decode(errors="replace"))
        entry = self.directories.lookup(inode, name)
        if entry is None:
            raise FileNotFoundError(name.decode(errors="replace"))
        self._remember(entry[1], entry[2])
        return entry[1]

    def _parent(self, inode: Inode) -> int:
        if inode.ino == self.root_ino:
            return self.root_ino
        if inode.parent not in self._refs:
            raise CorruptImage(f"directory {inode.ino}: parent {inode.parent} never listed")
        return inode.parent

    def readdir(self, dir_ino: int, offset: int = 0) -> Iterator[DirEntry]:
        try:
            inode = self._dir(dir_ino)
            for name, ino, ref, position in self.directories.entries(inode, offset):
                if name in (b".", b".."):
                    continue
                if b"/" in name:  # the VFS fails getdents with EUCLEAN on such a name
                    raise CorruptImage(f"directory inode {dir_ino}: invalid entry name {name!r}")
                self._remember(ino, ref)
                yield DirEntry(name, ino, position)
        except DECODING_ERRORS as exc:
            raise CorruptImage(f"malformed directory ({type(exc).__name__}: {exc})") from exc

    @guarded
    def read(self, ino: int, offset: int, size: int) -> bytes:
        inode = self._inode(ino)
        if inode.is_dir:
            raise IsADirectoryError(f"inode {ino} is a directory")
        if not inode.is_reg:
            raise CorruptImage(f"inode {ino} is not a regular file")
        return self.files.read(inode, offset, size)

    @guarded
    def readlink(self, ino: int) -> bytes:
        inode = self._inode(ino)
        if not inode.is_symlink:
            raise CorruptImage(f"inode {ino} is not a symbolic link")
        target, _, _ = self.meta.read(self.inode_region, *inode.tail, inode.size)
        # As page_get_link: NUL-terminated, at most a page minus its terminator.
        return target[: self.SYMLINK_TARGET_MAX].partition(b"\0")[0]

    SYMLINK_TARGET_MAX = 4095

    @guarded
    def listxattr(self, ino: int) -> list[bytes]:
        inode = self._inode(ino)
        if self.xattrs is None or not inode.xattr_count:
            return []
        return self.xattrs.names(inode)

    @guarded
    def getxattr(self, ino: int, name: bytes) -> bytes:
        inode = self._inode(ino)
        if self.xattrs is None or not inode.xattr_count:
            raise NoSuchAttribute(name.decode(errors="replace"))
        return self.xattrs.get(inode, name)

    @property
    def has_xattrs(self) -> bool:
        return self.xattrs is not None

    def statfs(self) -> StatFs:
        """As squashfs_statfs: the image's blocks, all used; its inodes, none free."""
        sb = self.sb
        return StatFs(
            block_size=sb.block_size,
            blocks=((sb.bytes_used - 1) >> sb.block_log) + 1,
            blocks_free=0,
            blocks_available=0,
            files=sb.inodes,
            files_free=0,
            name_max=SQUASHFS_NAME_LEN,
        )
