"""Inodes: every basic and extended type, decoded and checked as the kernel's inode.c.

An inode is found by its reference, ``block << 16 | offset``: the metadata block's
position relative to the inode table and the offset inside it.  What ``stat`` shows is
what the kernel's ``squashfs_read_inode`` makes of it:

* st_ino is the inode's ``inode_number`` (0 is refused); uid and gid go through the id
  table; the on-disk mode carries permission bits only (type bits there are refused, as
  since Linux 6.17) and the type comes from ``inode_type``;
* atime = mtime = ctime = ``mtime`` seconds;
* nlink is the inode's, except a basic regular file's, which is 1;
* st_blocks: ``((size - 1) >> 9) + 1`` for a basic file, ``(size - sparse + 511) >> 9``
  (in u64 arithmetic) for an extended one, 0 for the rest; an inode with xattrs adds
  ``((xattr_size - 1) >> 9) + 1`` (u32 arithmetic), whatever its type;
* a directory's size is its stored ``file_size`` (listing bytes + 3), a symlink's its
  ``symlink_size`` (at most 4096), a device's rdev is ``new_decode_dev(rdev)``;
* a file with a fragment cannot have a size that is a multiple of the block size, its
  fragment must exist, an extended file's size must not be negative (Linux 6.18).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from drivers.base import Attr, BoundedCache, CorruptImage
from drivers.squashfs.layout import (
    BASE_INODE,
    INODE_LAYOUTS,
    SQUASHFS_BLKDEV_TYPE,
    SQUASHFS_CHRDEV_TYPE,
    SQUASHFS_DIR_TYPE,
    SQUASHFS_FIFO_TYPE,
    SQUASHFS_INVALID_FRAG,
    SQUASHFS_INVALID_XATTR,
    SQUASHFS_LBLKDEV_TYPE,
    SQUASHFS_LCHRDEV_TYPE,
    SQUASHFS_LDIR_TYPE,
    SQUASHFS_LFIFO_TYPE,
    SQUASHFS_LREG_TYPE,
    SQUASHFS_LSOCKET_TYPE,
    SQUASHFS_LSYMLINK_TYPE,
    SQUASHFS_REG_TYPE,
    SQUASHFS_SOCKET_TYPE,
    SQUASHFS_SYMLINK_MAX,
    SQUASHFS_SYMLINK_TYPE,
    Layout,
)
from drivers.squashfs.metadata import MetadataReader, Region
from drivers.squashfs.tables import Tables

__all__ = ["Inode", "InodeTable", "new_decode_dev"]

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_S64_MAX = (1 << 63) - 1
_NS = 1_000_000_000

#: The file type each inode type gives the mode.
FILE_TYPES = {
    SQUASHFS_DIR_TYPE: stat.S_IFDIR,
    SQUASHFS_REG_TYPE: stat.S_IFREG,
    SQUASHFS_SYMLINK_TYPE: stat.S_IFLNK,
    SQUASHFS_BLKDEV_TYPE: stat.S_IFBLK,
    SQUASHFS_CHRDEV_TYPE: stat.S_IFCHR,
    SQUASHFS_FIFO_TYPE: stat.S_IFIFO,
    SQUASHFS_SOCKET_TYPE: stat.S_IFSOCK,
    SQUASHFS_LDIR_TYPE: stat.S_IFDIR,
    SQUASHFS_LREG_TYPE: stat.S_IFREG,
    SQUASHFS_LSYMLINK_TYPE: stat.S_IFLNK,
    SQUASHFS_LBLKDEV_TYPE: stat.S_IFBLK,
    SQUASHFS_LCHRDEV_TYPE: stat.S_IFCHR,
    SQUASHFS_LFIFO_TYPE: stat.S_IFIFO,
    SQUASHFS_LSOCKET_TYPE: stat.S_IFSOCK,
}


def new_decode_dev(dev: int) -> int:
    """The kernel's new_decode_dev(), as os.makedev(major, minor)."""
    major = (dev & 0xFFF00) >> 8
    minor = (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
    return os.makedev(major, minor)


class Inode:
    """One decoded inode: what stat shows and where its variable part continues.

    ``tail`` is the metadata position right after the fixed part: a file's block list,
    a symlink's target, an extended directory's index.
    """

    __slots__ = (
        "_attr",
        "blocks",
        "fragment",
        "fragment_block",
        "fragment_offset",
        "fragment_size",
        "gid",
        "index_count",
        "ino",
        "inode_type",
        "mode",
        "mtime",
        "nlink",
        "parent",
        "rdev",
        "ref",
        "size",
        "start_block",
        "start_offset",
        "tail",
        "uid",
        "xattr",
        "xattr_count",
        "xattr_ref",
    )

    def __init__(self, ref: int, base: Any, uid: int, gid: int) -> None:
        self.ref = ref
        self.inode_type: int = base.inode_type
        self.ino: int = base.inode_number
        self.mode: int = base.mode | FILE_TYPES[base.inode_type]
        self.uid = uid
        self.gid = gid
        self.mtime: int = base.mtime
        self.nlink = 1
        self.size = 0
        self.rdev = 0
        self.blocks = 0
        self.xattr = SQUASHFS_INVALID_XATTR
        self.xattr_count = 0
        self.xattr_ref = 0
        self.start_block = 0
        self.start_offset = 0
        self.fragment = SQUASHFS_INVALID_FRAG
        self.fragment_block = 0
        self.fragment_size = 0
        self.fragment_offset = 0
        self.index_count = 0
        self.parent = 0
        self.tail = (0, 0)
        self._attr: Attr | None = None

    @property
    def file_type(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        return self.inode_type in (SQUASHFS_DIR_TYPE, SQUASHFS_LDIR_TYPE)

    @property
    def is_reg(self) -> bool:
        return self.inode_type in (SQUASHFS_REG_TYPE, SQUASHFS_LREG_TYPE)

    @property
    def is_symlink(self) -> bool:
        return self.inode_type in (SQUASHFS_SYMLINK_TYPE, SQUASHFS_LSYMLINK_TYPE)

    def attr(self) -> Attr:
        """What stat shows (made once per decoded inode: shared, treat as immutable)."""
        if self._attr is not None:
            return self._attr
        t = self.mtime * _NS
        # Positional, in Attr's field order: this runs once per entry of every listing.
        self._attr = Attr(
            self.ino,
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.size,
            self.rdev,
            self.blocks,
            t,
            t,
            t,
        )
        return self._attr


Decoder = Callable[["InodeTable", Inode, Any, tuple[int, int]], None]
_MAX_FIXED = max(layout.size for layout in INODE_LAYOUTS.values())


def _layout(inode_type: int) -> Layout:
    layout = INODE_LAYOUTS.get(inode_type)
    if layout is None:
        raise CorruptImage(f"Unknown inode type {inode_type}")
    return layout


class InodeTable:
    """Inodes by reference, decoded from the inode table's metadata blocks (cached)."""

    __slots__ = ("_cache", "block_size", "meta", "region", "tables")

    def __init__(
        self,
        meta: MetadataReader,
        region: Region,
        tables: Tables,
        block_size: int,
        cache_entries: int,
    ):
        self.meta = meta
        self.region = region
        self.tables = tables
        self.block_size = block_size
        self._cache: BoundedCache[int, Inode] = BoundedCache(cache_entries)

    def read(self, ref: int) -> Inode:
        """The inode at reference ``ref`` (CorruptImage if it does not decode)."""
        inode = self._cache.get(ref)
        if inode is None:
            try:
                inode = self._decode(ref)
            except CorruptImage as exc:
                raise CorruptImage(f"Unable to read inode {ref:#x}: {exc}") from exc
            self._cache.put(ref, inode)
        return inode

    def _decode(self, ref: int) -> Inode:
        rec, tail = self._fixed_part(self.region.start + (ref >> 16), ref & 0xFFFF)
        if rec.inode_number == 0:
            raise CorruptImage("inode number 0")
        if stat.S_IFMT(rec.mode):
            raise CorruptImage(f"file type bits in the stored mode {rec.mode:#o}")
        ids = self.tables.ids
        inode = Inode(ref, rec, ids.get(rec.uid), ids.get(rec.guid))
        _DECODERS[rec.inode_type](self, inode, rec, tail)
        if inode.xattr != SQUASHFS_INVALID_XATTR and self.tables.xattr_ids is not None:
            inode.xattr_ref, inode.xattr_count, size = self.tables.xattr_ids.lookup(inode.xattr)
            inode.blocks += (((size - 1) & _U32) >> 9) + 1
        return inode

    def _fixed_part(self, pos: int, offset: int) -> tuple[Any, tuple[int, int]]:
        """The inode's fixed part as its type's record, and the position right after it."""
        data, next_pos = self.meta.block(self.region, pos)
        if offset + _MAX_FIXED <= len(data):  # the common case: all in one block
            layout = _layout(data[offset] | data[offset + 1] << 8)
            end = offset + layout.size
            tail = (pos, end) if end < len(data) else (next_pos, 0)
            return layout.unpack_record(data, offset), tail
        raw, _, _ = self.meta.read(self.region, pos, offset, BASE_INODE.size)
        layout = _layout(BASE_INODE.packer.unpack(raw)[0])
        raw, tail_pos, tail_offset = self.meta.read(self.region, pos, offset, layout.size)
        return layout.unpack_record(raw), (tail_pos, tail_offset)

    def _fragment(self, inode: Inode, rec: Any) -> None:
        """A file's tail-end fragment, looked up at iget as the kernel does."""
        if rec.fragment == SQUASHFS_INVALID_FRAG:
            return
        if inode.size & (self.block_size - 1) == 0:
            raise CorruptImage(f"file of {inode.size} bytes (whole blocks) has a fragment")
        if self.tables.fragments is None:
            raise CorruptImage(f"fragment {rec.fragment} in an image without fragments")
        inode.fragment = rec.fragment
        inode.fragment_offset = rec.offset
        inode.fragment_block, inode.fragment_size = self.tables.fragments.lookup(rec.fragment)

    def _reg(self, inode: Inode, rec: Any, tail: tuple[int, int]) -> None:
        inode.size = rec.file_size
        self._fragment(inode, rec)
        inode.blocks = ((inode.size - 1) >> 9) + 1
        inode.start_block = rec.start_block
        inode.tail = tail

    def _lreg(self, inode: Inode, rec: Any, tail: tuple[int, int]) -> None:
        if rec.file_size > _S64_MAX:
            raise CorruptImage(f"negative file size {rec.file_size - (1 << 64)}")
        inode.size = rec.file_size
        self._fragment(inode, rec)
        inode.nlink = rec.nlink
        inode.xattr = rec.xattr
        inode.blocks = ((inode.size - rec.sparse + 511) & _U64) >> 9
        inode.start_block = rec.start_block
        inode.tail = tail

    def _dir(self, inode: Inode, rec: Any, tail: tuple[int, int]) -> None:
        inode.nlink = rec.nlink
        inode.size = rec.file_size
        inode.start_block = rec.start_block
        inode.start_offset = rec.offset
        inode.parent = rec.parent_inode

    def _ldir(self, inode: Inode, rec: Any, tail: tuple[int, int]) -> None:
        self._dir(inode, rec, tail)
        inode.xattr = rec.xattr
        inode.index_count = rec.i_count
        inode.tail = tail

    def _symlink(self, inode: Inode, rec: Any, tail: tuple[int, int]) -> None:
        if rec.symlink_size > SQUASHFS_SYMLINK_MAX:
            raise CorruptImage(f"Corrupted symlink (size {rec.symlink_size})")
        inode.nlink = rec.nlink
        inode.size = rec.symlink_size
        inode.tail = tail
        if inode.inode_type == SQUASHFS_LSYMLINK_TYPE:
            _, pos, offset = self.meta.read(self.region, *tail, inode.size)
            raw, _, _ = self.meta.read(self.region, pos, offset, 4)
            inode.xattr = int.from_bytes(raw, "little")

    def _dev(self, inode: Inode, rec: Any, tail: tuple[int, int]) -> None:
        inode.nlink = rec.nlink
        inode.rdev = new_decode_dev(rec.rdev)
        inode.xattr = getattr(rec, "xattr", SQUASHFS_INVALID_XATTR)

    def _ipc(self, inode: Inode, rec: Any, tail: tuple[int, int]) -> None:
        inode.nlink = rec.nlink
        inode.xattr = getattr(rec, "xattr", SQUASHFS_INVALID_XATTR)


_DECODERS: dict[int, Decoder] = {
    SQUASHFS_DIR_TYPE: InodeTable._dir,
    SQUASHFS_LDIR_TYPE: InodeTable._ldir,
    SQUASHFS_REG_TYPE: InodeTable._reg,
    SQUASHFS_LREG_TYPE: InodeTable._lreg,
    SQUASHFS_SYMLINK_TYPE: InodeTable._symlink,
    SQUASHFS_LSYMLINK_TYPE: InodeTable._symlink,
    SQUASHFS_BLKDEV_TYPE: InodeTable._dev,
    SQUASHFS_CHRDEV_TYPE: InodeTable._dev,
    SQUASHFS_LBLKDEV_TYPE: InodeTable._dev,
    SQUASHFS_LCHRDEV_TYPE: InodeTable._dev,
    SQUASHFS_FIFO_TYPE: InodeTable._ipc,
    SQUASHFS_SOCKET_TYPE: InodeTable._ipc,
    SQUASHFS_LFIFO_TYPE: InodeTable._ipc,
    SQUASHFS_LSOCKET_TYPE: InodeTable._ipc,
}
