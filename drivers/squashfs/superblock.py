"""The superblock: its checks, in the kernel's order, and the compressor it names.

As ``squashfs_fill_super`` in the kernel's fs/squashfs/super.c: the magic, the version
(4.0 only), the compressor, ``bytes_used`` within the device, the block size (at most
1 MiB, at least a 4 KiB page) agreeing with ``block_log``, the root inode's offset within
a metadata block; then the compressor options block when SQUASHFS_COMP_OPT is set (read
and checked as the kernel's decompressor setup does).  The tables' positions are checked
against each other by :mod:`drivers.squashfs.tables`.  Unknown flag bits are ignored, as
the kernel ignores them (they only describe how mksquashfs built the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.base import BlockReader, CorruptImage, Unsupported
from drivers.squashfs.compression import COMPRESSOR_NAMES, Codec, make_codec
from drivers.squashfs.layout import (
    SQUASHFS_BLOCK_OFFSET,
    SQUASHFS_COMP_OPT,
    SQUASHFS_COMPRESSED_BIT,
    SQUASHFS_FILE_MAX_LOG,
    SQUASHFS_FILE_MAX_SIZE,
    SQUASHFS_FILE_MIN_SIZE,
    SQUASHFS_INVALID_BLK,
    SQUASHFS_MAGIC,
    SQUASHFS_MAJOR,
    SQUASHFS_METADATA_SIZE,
    SQUASHFS_MINOR,
    SUPER_BLOCK,
)

__all__ = ["MAGIC_BYTES", "Superblock", "parse_superblock"]

MAGIC_BYTES = SQUASHFS_MAGIC.to_bytes(4, "little")  # b"hsqs"
#: The kernel reads compressor options into one page.
_COMP_OPTS_MAX = 4096


@dataclass(frozen=True, slots=True)
class Superblock:
    """The checked superblock fields the driver uses, and the image's codec."""

    raw: Any  # the SUPER_BLOCK record, every field by its squashfs_fs.h name
    block_size: int
    block_log: int
    bytes_used: int
    inodes: int
    fragments: int
    no_ids: int
    flags: int
    root_inode: int
    inode_table_start: int
    directory_table_start: int
    id_table_start: int
    xattr_id_table_start: int
    fragment_table_start: int
    lookup_table_start: int
    codec: Codec
    comp_options: bytes | None

    @property
    def has_xattr_table(self) -> bool:
        """Whether the image has an xattr table (the kernel's only test of it)."""
        return self.xattr_id_table_start != SQUASHFS_INVALID_BLK


def _check_version(major: int, minor: int) -> None:
    if major < SQUASHFS_MAJOR:
        raise Unsupported(
            f"Major/Minor mismatch, older Squashfs {major}.{minor} filesystems are unsupported"
        )
    if major > SQUASHFS_MAJOR or minor > SQUASHFS_MINOR:
        raise Unsupported(f"Major/Minor mismatch, trying to mount newer {major}.{minor} filesystem")


def _check_geometry(sb: Any, device_size: int) -> None:
    """bytes_used, block size and log, root inode offset: super.c's sanity checks."""
    if sb.bytes_used > device_size:
        raise CorruptImage(
            f"bytes_used {sb.bytes_used} is beyond the end of the image ({device_size} bytes)"
        )
    if sb.block_size > SQUASHFS_FILE_MAX_SIZE:
        raise CorruptImage(f"squashfs image failed sanity check: block size {sb.block_size}")
    if sb.block_size < SQUASHFS_FILE_MIN_SIZE:
        raise Unsupported(
            f"Page size > filesystem block size ({sb.block_size}).  This is currently not"
            " supported!"
        )
    if sb.block_log > SQUASHFS_FILE_MAX_LOG or sb.block_size != 1 << sb.block_log:
        raise CorruptImage(
            f"squashfs image failed sanity check: block_size {sb.block_size} and block_log"
            f" {sb.block_log} disagree"
        )
    if sb.root_inode & 0xFFFF > SQUASHFS_METADATA_SIZE:
        raise CorruptImage(f"squashfs image failed sanity check: root inode {sb.root_inode:#x}")


def _read_comp_options(reader: BlockReader, bytes_used: int) -> bytes:
    """The compressor options: one uncompressed metadata block right after the superblock.

    The kernel reads it before any decompressor exists, so a compressed one fails there.
    """
    start = SUPER_BLOCK.size
    header = reader.read_upto(start, SQUASHFS_BLOCK_OFFSET)
    if len(header) < SQUASHFS_BLOCK_OFFSET or start + SQUASHFS_BLOCK_OFFSET > bytes_used:
        raise CorruptImage("compressor options block is missing")
    word = header[0] | header[1] << 8
    length = word & (SQUASHFS_COMPRESSED_BIT - 1)
    if not word & SQUASHFS_COMPRESSED_BIT:
        raise CorruptImage("compressor options block is compressed")
    if not 0 < length <= _COMP_OPTS_MAX or start + SQUASHFS_BLOCK_OFFSET + length > bytes_used:
        raise CorruptImage(f"compressor options block has a bad length ({length})")
    return reader.read(start + SQUASHFS_BLOCK_OFFSET, length)


def parse_superblock(reader: BlockReader) -> Superblock:
    """Read and check the superblock; raise Unsupported or CorruptImage with the reason."""
    raw = reader.read_upto(0, SUPER_BLOCK.size)
    if len(raw) < SUPER_BLOCK.size:
        raise CorruptImage(f"image too small for a squashfs superblock ({len(raw)} bytes)")
    sb = SUPER_BLOCK.unpack_record(raw)
    if sb.s_magic != SQUASHFS_MAGIC:
        raise CorruptImage(f"Can't find a SQUASHFS superblock (magic {sb.s_magic:#010x})")
    _check_version(sb.s_major, sb.s_minor)
    if sb.compression not in COMPRESSOR_NAMES:
        raise Unsupported(
            f"Filesystem uses unknown compression (id {sb.compression}).  This is not supported"
        )
    _check_geometry(sb, reader.size)
    options = _read_comp_options(reader, sb.bytes_used) if sb.flags & SQUASHFS_COMP_OPT else None
    codec = make_codec(sb.compression, options, sb.block_size)
    return Superblock(
        raw=sb,
        block_size=sb.block_size,
        block_log=sb.block_log,
        bytes_used=sb.bytes_used,
        inodes=sb.inodes,
        fragments=sb.fragments,
        no_ids=sb.no_ids,
        flags=sb.flags,
        root_inode=sb.root_inode,
        inode_table_start=sb.inode_table_start,
        directory_table_start=sb.directory_table_start,
        id_table_start=sb.id_table_start,
        xattr_id_table_start=sb.xattr_id_table_start,
        fragment_table_start=sb.fragment_table_start,
        lookup_table_start=sb.lookup_table_start,
        codec=codec,
        comp_options=options,
    )
