"""Inodes: the on-disk struct, the checks the kernel's ``ext4_iget`` makes, and attributes.

An inode is decoded once into an immutable :class:`Inode` (kept in the volume's bounded
cache); what stat(2) shows is computed exactly as the kernel computes it: 32-bit owners
from the split fields, 64-bit sizes only where the kernel uses ``i_size_high``, i_blocks
scaled for huge_file, timestamps with the epoch bits of the ``*_extra`` fields, and device
numbers in the old (16-bit) or new (32-bit) encoding.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import construct as c

from drivers.base import Attr, CorruptImage
from drivers.ext4.checksum import ext4_chksum, inode_csum_seed
from drivers.ext4.superblock import (
    EXT4_GOOD_OLD_INODE_SIZE,
    EXT4_OS_HURD,
    INCOMPAT_64BIT,
    INCOMPAT_EA_INODE,
    INCOMPAT_LARGEDIR,
    RO_COMPAT_HUGE_FILE,
    Superblock,
)
from drivers.layout import Layout

if TYPE_CHECKING:
    from drivers.ext4.extents import ExtentNode

__all__ = [
    "EXT4_GOOD_OLD_INODE_SIZE",
    "INODE",
    "I_BLOCK_SIZE",
    "Inode",
    "decode_rdev",
    "decode_time",
    "is_fast_symlink",
    "parse_inode",
]

INODE = Layout(
    "inode",
    c.Struct(
        "i_mode" / c.Int16ul,
        "i_uid" / c.Int16ul,
        "i_size_lo" / c.Int32ul,
        "i_atime" / c.Int32ul,
        "i_ctime" / c.Int32ul,
        "i_mtime" / c.Int32ul,
        "i_dtime" / c.Int32ul,
        "i_gid" / c.Int16ul,
        "i_links_count" / c.Int16ul,
        "i_blocks_lo" / c.Int32ul,
        "i_flags" / c.Int32ul,
        "l_i_version" / c.Int32ul,  # osd1
        "i_block" / c.Bytes(60),
        "i_generation" / c.Int32ul,
        "i_file_acl_lo" / c.Int32ul,
        "i_size_high" / c.Int32ul,
        "i_obso_faddr" / c.Int32ul,
        # osd2 (linux2; Hurd uses the same offsets for the owner's high halves)
        "l_i_blocks_high" / c.Int16ul,
        "l_i_file_acl_high" / c.Int16ul,
        "l_i_uid_high" / c.Int16ul,
        "l_i_gid_high" / c.Int16ul,
        "l_i_checksum_lo" / c.Int16ul,
        "l_i_reserved" / c.Int16ul,
        # the large inode (s_inode_size > 128), present up to 128 + i_extra_isize
        "i_extra_isize" / c.Int16ul,
        "i_checksum_hi" / c.Int16ul,
        "i_ctime_extra" / c.Int32ul,
        "i_mtime_extra" / c.Int32ul,
        "i_atime_extra" / c.Int32ul,
        "i_crtime" / c.Int32ul,
        "i_crtime_extra" / c.Int32ul,
        "i_version_hi" / c.Int32ul,
        "i_projid" / c.Int32ul,
    ),
)
_PAD = bytes(INODE.size)
_INODE_UNPACK = INODE.packer.unpack_from
_INO_GEN = struct.Struct("<II")
_CSUM_LO = INODE.offset_of("l_i_checksum_lo")
_CSUM_HI = INODE.offset_of("i_checksum_hi")
I_BLOCK_OFFSET = INODE.offset_of("i_block")
I_BLOCK_SIZE = 60

# i_flags
EXT4_IMMUTABLE_FL = 0x10
EXT4_APPEND_FL = 0x20
EXT4_ENCRYPT_FL = 0x800
EXT4_INDEX_FL = 0x1000
EXT4_HUGE_FILE_FL = 0x40000
EXT4_EXTENTS_FL = 0x80000
EXT4_VERITY_FL = 0x100000
EXT4_EA_INODE_FL = 0x200000
EXT4_INLINE_DATA_FL = 0x10000000
EXT4_CASEFOLD_FL = 0x40000000

EXT4_EPOCH_MASK = 3
_FILE_TYPES = frozenset(
    {
        stat.S_IFREG,
        stat.S_IFDIR,
        stat.S_IFLNK,
        stat.S_IFCHR,
        stat.S_IFBLK,
        stat.S_IFIFO,
        stat.S_IFSOCK,
    }
)


def _fits_from(field: str) -> int:
    """EXT4_FITS_IN_INODE: the least i_extra_isize for which ``field`` (4 bytes) exists."""
    return INODE.offset_of(field) + 4 - EXT4_GOOD_OLD_INODE_SIZE


_CTIME_EXTRA_FROM = _fits_from("i_ctime_extra")
_MTIME_EXTRA_FROM = _fits_from("i_mtime_extra")
_ATIME_EXTRA_FROM = _fits_from("i_atime_extra")


def _has_csum_hi(extra_isize: int) -> bool:
    """Whether i_checksum_hi lies within 128 + i_extra_isize bytes."""
    return EXT4_GOOD_OLD_INODE_SIZE + extra_isize >= _CSUM_HI + 2


def decode_time(base: int, extra: int | None) -> int:
    """Nanoseconds since the epoch, as the kernel's ext4_decode_extra_time computes them.

    The 32-bit base is signed (1901..2038); the two low bits of ``extra`` add multiples
    of 2^32 seconds (up to 2446) and its upper 30 bits are the nanoseconds.
    """
    seconds = base - (1 << 32) if base & 0x80000000 else base
    if extra is None:
        return seconds * 1_000_000_000
    seconds += (extra & EXT4_EPOCH_MASK) << 32
    return seconds * 1_000_000_000 + (extra >> 2)


def decode_rdev(i_block: bytes) -> int:
    """The device number of a special file: old 16-bit in i_block[0], else new in i_block[1]."""
    word0, word1 = struct.unpack_from("<II", i_block)
    if word0:
        old = word0 & 0xFFFF
        return os.makedev((old >> 8) & 0xFF, old & 0xFF)
    major = (word1 & 0xFFF00) >> 8
    minor = (word1 & 0xFF) | ((word1 >> 12) & 0xFFF00)
    return os.makedev(major, minor)


@dataclass(slots=True)
class Inode:
    """One decoded, checked inode (treat as immutable: it is shared through a cache).

    Not ``frozen``: a frozen dataclass's __init__ costs twice as much, and inodes are
    decoded on every cold stat.
    """

    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    blocks: int  # 512-byte units, as the kernel keeps i_blocks
    flags: int
    generation: int
    file_acl: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    i_block: bytes
    extra_isize: int
    raw: bytes  # the whole on-disk inode (in-inode xattrs live after 128 + extra_isize)
    csum_seed: int  # ei->i_csum_seed, for extent, directory and htree checksums
    # Set by the volume once it has read the in-inode xattrs: as the kernel's
    # ext4_has_inline_data, an inode is inline when it has EXT4_INLINE_DATA_FL *and* a
    # "system.data" xattr in its body; ``inline_tail`` is that xattr's value.
    inline: bool = False
    inline_tail: bytes = b""
    # Set by the volume once the inode passed every check of iget: what stat(2) shows.
    attr: Attr | None = None
    # The checked root of the extent tree (extent-mapped inodes), kept for mapping.
    extent_root: ExtentNode | None = None

    @property
    def file_type(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def uses_extents(self) -> bool:
        return bool(self.flags & EXT4_EXTENTS_FL)


def inode_checksum(sb: Superblock, ino: int, raw: bytes, generation: int, extra_isize: int) -> int:
    """ext4_inode_csum: the whole inode with both checksum fields taken as zero.

    One crc32c call over (inode number, generation, inode with zeroed fields) equals the
    kernel's chain of calls and costs a fraction of it.
    """
    if len(raw) > EXT4_GOOD_OLD_INODE_SIZE and _has_csum_hi(extra_isize):
        data = b"".join(
            (
                _INO_GEN.pack(ino, generation),
                raw[:_CSUM_LO],
                b"\0\0",
                raw[_CSUM_LO + 2 : _CSUM_HI],
                b"\0\0",
                raw[_CSUM_HI + 2 :],
            )
        )
        return ext4_chksum(sb.csum_seed, data)
    data = b"".join((_INO_GEN.pack(ino, generation), raw[:_CSUM_LO], b"\0\0", raw[_CSUM_LO + 2 :]))
    return ext4_chksum(sb.csum_seed, data) & 0xFFFF


def parse_inode(sb: Superblock, ino: int, raw: bytes) -> Inode:
    """Decode and check inode ``ino`` from its ``s_inode_size`` on-disk bytes.

    Raises CorruptImage for what the kernel's iget rejects: bad i_extra_isize, checksum
    mismatch, an unused (deleted) inode, a negative size, a bogus file type, an
    out-of-range xattr block, an impossible fast symlink.

    This runs once per entry of every cold listing, so it unpacks the whole struct in
    one call into locals (no record object) and calls nothing it can inline.
    """
    size_on_disk = len(raw)
    (
        mode,
        i_uid,
        i_size_lo,
        i_atime,
        i_ctime,
        i_mtime,
        _dtime,
        i_gid,
        nlink,
        i_blocks_lo,
        flags,
        _version,
        i_block,
        generation,
        i_file_acl_lo,
        i_size_high,
        _faddr,
        i_blocks_high,
        i_file_acl_high,
        i_uid_high,
        i_gid_high,
        checksum_lo,
        _reserved,
        extra_isize,
        checksum_hi,
        ctime_extra,
        mtime_extra,
        atime_extra,
        *_,
    ) = _INODE_UNPACK(raw if size_on_disk >= INODE.size else raw + _PAD[size_on_disk:])
    big = size_on_disk > EXT4_GOOD_OLD_INODE_SIZE
    if big:
        if EXT4_GOOD_OLD_INODE_SIZE + extra_isize > size_on_disk or extra_isize & 3:
            raise CorruptImage(f"inode {ino}: bad extra_isize {extra_isize}")
    else:
        extra_isize = 0
    csum_seed = 0
    if sb.metadata_csum:
        csum_seed = inode_csum_seed(sb.csum_seed, ino, generation)
        if sb.creator_os != EXT4_OS_HURD:
            _check_inode_checksum(sb, ino, raw, generation, extra_isize, checksum_lo, checksum_hi)
    if nlink == 0:
        raise CorruptImage(f"inode {ino} is not in use (deleted or never allocated)")
    file_type = mode & 0o170000
    if file_type not in _FILE_TYPES:
        raise CorruptImage(f"inode {ino}: bogus i_mode ({mode:o})")
    if file_type == stat.S_IFREG or sb.incompat & INCOMPAT_LARGEDIR:
        size = i_size_lo | i_size_high << 32
        if size >= 1 << 63:
            raise CorruptImage(f"inode {ino}: bad i_size value")
    else:
        size = i_size_lo
    if sb.ro_compat & RO_COMPAT_HUGE_FILE:
        blocks = i_blocks_lo | i_blocks_high << 32
        if flags & EXT4_HUGE_FILE_FL:
            blocks <<= sb.block_bits - 9
    else:
        blocks = i_blocks_lo
    file_acl = (
        i_file_acl_lo | i_file_acl_high << 32 if sb.incompat & INCOMPAT_64BIT else i_file_acl_lo
    )
    if file_type == stat.S_IFLNK and flags & (EXT4_IMMUTABLE_FL | EXT4_APPEND_FL):
        raise CorruptImage(f"inode {ino}: immutable or append flags not allowed on symlinks")
    return Inode(
        ino,
        mode,
        i_uid | i_uid_high << 16,
        i_gid | i_gid_high << 16,
        nlink,
        size,
        blocks,
        flags,
        generation,
        file_acl,
        decode_time(i_atime, atime_extra if extra_isize >= _ATIME_EXTRA_FROM else None),
        decode_time(i_mtime, mtime_extra if extra_isize >= _MTIME_EXTRA_FROM else None),
        decode_time(i_ctime, ctime_extra if extra_isize >= _CTIME_EXTRA_FROM else None),
        i_block,
        extra_isize,
        raw,
        csum_seed,
    )


def _check_inode_checksum(
    sb: Superblock,
    ino: int,
    raw: bytes,
    generation: int,
    extra_isize: int,
    checksum_lo: int,
    checksum_hi: int,
) -> None:
    """ext4_inode_csum_verify: CorruptImage unless the stored checksum matches."""
    provided = checksum_lo
    if len(raw) > EXT4_GOOD_OLD_INODE_SIZE and _has_csum_hi(extra_isize):
        provided |= checksum_hi << 16
    calculated = inode_checksum(sb, ino, raw, generation, extra_isize)
    if provided != calculated:
        raise CorruptImage(
            f"inode {ino}: checksum invalid (stored 0x{provided:x}, computed 0x{calculated:x})"
        )


def is_fast_symlink(sb: Superblock, inode: Inode) -> bool:
    """ext4_inode_is_fast_symlink: the target lives in i_block rather than a data block."""
    if inode.inline:
        return False
    if not sb.incompat & INCOMPAT_EA_INODE:
        ea_blocks = (sb.block_size * sb.cluster_ratio) >> 9 if inode.file_acl else 0
        return inode.blocks - ea_blocks == 0
    return 0 < inode.size < I_BLOCK_SIZE
