"""Extended attributes: in the inode body, in one external block, or in an EA inode.

Entries are checked as the kernel's ``check_xattrs`` does (names inside the region and
NUL-free, values inside it, past the end of the names, at most 16 MiB) before any is
used.  Names carry a one-byte namespace index; the prefixes shown are the ones the
kernel's handlers list: user., system.posix_acl_access, system.posix_acl_default,
trusted., security. and gnu. (Hurd).  Index 7 (``system.``, used for the inline data
"system.data") has no handler in the kernel and is never shown, nor are the Lustre,
richacl and encryption-context indexes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import construct as c

from drivers.base import CorruptImage
from drivers.ext4.checksum import ext4_chksum, le64
from drivers.ext4.device import BlockDevice
from drivers.ext4.inode import EXT4_GOOD_OLD_INODE_SIZE, Inode
from drivers.ext4.superblock import INCOMPAT_EA_INODE, Superblock
from drivers.layout import Layout

__all__ = [
    "XATTR_ENTRY",
    "XATTR_HEADER",
    "XATTR_IBODY_HEADER",
    "Xattr",
    "inode_xattrs",
    "split_name",
    "xattr_name",
]

XATTR_IBODY_HEADER = Layout("xattr_ibody_header", c.Struct("h_magic" / c.Int32ul))
XATTR_HEADER = Layout(
    "xattr_header",
    c.Struct(
        "h_magic" / c.Int32ul,
        "h_refcount" / c.Int32ul,
        "h_blocks" / c.Int32ul,
        "h_hash" / c.Int32ul,
        "h_checksum" / c.Int32ul,
        "h_reserved" / c.Bytes(12),
    ),
)
XATTR_ENTRY = Layout(
    "xattr_entry",
    c.Struct(
        "e_name_len" / c.Int8ul,
        "e_name_index" / c.Int8ul,
        "e_value_offs" / c.Int16ul,
        "e_value_inum" / c.Int32ul,
        "e_value_size" / c.Int32ul,
        "e_hash" / c.Int32ul,
    ),
)

EXT4_XATTR_MAGIC = 0xEA020000
EXT4_XATTR_SIZE_MAX = 1 << 24
EXT4_ROOT_INO = 2
_ENTRY = XATTR_ENTRY.packer
_CSUM_OFFSET = XATTR_HEADER.offset_of("h_checksum")

INDEX_USER = 1
INDEX_POSIX_ACL_ACCESS = 2
INDEX_POSIX_ACL_DEFAULT = 3
INDEX_TRUSTED = 4
INDEX_SECURITY = 6
INDEX_SYSTEM = 7
INDEX_HURD = 10

#: index -> prefix of the names the kernel lists (an ACL's stored name is empty).
PREFIXES: dict[int, bytes] = {
    INDEX_USER: b"user.",
    INDEX_POSIX_ACL_ACCESS: b"system.posix_acl_access",
    INDEX_POSIX_ACL_DEFAULT: b"system.posix_acl_default",
    INDEX_TRUSTED: b"trusted.",
    INDEX_SECURITY: b"security.",
    INDEX_HURD: b"gnu.",
}
_ACL_INDEXES = (INDEX_POSIX_ACL_ACCESS, INDEX_POSIX_ACL_DEFAULT)


@dataclass(frozen=True, slots=True)
class Xattr:
    index: int
    name: bytes  # without the prefix
    value: bytes | None  # None when it lives in an EA inode
    value_inum: int
    value_size: int
    hash: int


def _xattr_len(name_len: int) -> int:
    return (name_len + XATTR_ENTRY.size + 3) & ~3


def parse_entries(
    sb: Superblock, buf: bytes, first: int, end: int, value_base: int, where: str
) -> list[Xattr]:
    """Entries from ``buf[first:]`` up to the 4-zero-byte terminator, checked."""
    raw: list[tuple[int, int, int, int, int, int, bytes]] = []
    off = first
    while True:
        if off + 4 > end:
            raise CorruptImage(f"{where}: xattr entries run past their region")
        if buf[off : off + 4] == b"\0\0\0\0":
            break
        if off + XATTR_ENTRY.size > end:
            raise CorruptImage(f"{where}: xattr e_name out of bounds")
        name_len, index, value_offs, value_inum, value_size, ehash = _ENTRY.unpack_from(buf, off)
        nxt = off + _xattr_len(name_len)
        if nxt + 4 > end:
            raise CorruptImage(f"{where}: xattr e_name out of bounds")
        name = buf[off + XATTR_ENTRY.size : off + XATTR_ENTRY.size + name_len]
        if b"\0" in name:
            raise CorruptImage(f"{where}: bad xattr e_name length")
        raw.append((index, value_offs, value_inum, value_size, ehash, name_len, name))
        off = nxt
    names_end = off + 4
    out: list[Xattr] = []
    for index, value_offs, value_inum, value_size, ehash, _, name in raw:
        if value_inum and not sb.has_incompat(INCOMPAT_EA_INODE):
            raise CorruptImage(f"{where}: ea_inode specified without ea_inode feature enabled")
        if value_inum and (
            value_inum == EXT4_ROOT_INO or not sb.first_ino <= value_inum <= sb.inodes_count
        ):
            raise CorruptImage(f"{where}: invalid ea_ino {value_inum}")
        if value_inum and not value_size:
            # as check_xattrs (Linux 6.18 has it): only a crafted image has one (cleared entries
            # clear both), and code that trusts e_value_inum would misread it
            raise CorruptImage(f"{where}: invalid size in ea xattr (0 for EA inode {value_inum})")
        if value_size > EXT4_XATTR_SIZE_MAX:
            raise CorruptImage(f"{where}: e_value size too large")
        value: bytes | None = None
        if value_inum == 0:
            if value_size == 0:
                value = b""
            else:
                start = value_base + value_offs
                if value_offs > end - value_base:
                    raise CorruptImage(f"{where}: e_value out of bounds")
                padded = (value_size + 3) & ~3
                if start < names_end or value_size > end - start or padded > end - start:
                    raise CorruptImage(f"{where}: overlapping e_value")
                value = buf[start : start + value_size]
        out.append(Xattr(index, name, value, value_inum, value_size, ehash))
    return out


def ibody_xattrs(sb: Superblock, inode: Inode) -> list[Xattr]:
    """Entries stored after i_extra_isize in the inode itself (none without the magic)."""
    raw = inode.raw
    header = EXT4_GOOD_OLD_INODE_SIZE + inode.extra_isize
    if len(raw) <= EXT4_GOOD_OLD_INODE_SIZE or header + 4 > len(raw):
        return []
    if XATTR_IBODY_HEADER.packer.unpack_from(raw, header)[0] != EXT4_XATTR_MAGIC:
        return []
    first = header + 4
    return parse_entries(sb, raw, first, len(raw), first, f"inode {inode.ino} in-inode xattrs")


def block_checksum(block: bytes, block_nr: int, seed: int) -> int:
    csum = ext4_chksum(seed, le64(block_nr))
    csum = ext4_chksum(csum, block[:_CSUM_OFFSET])
    csum = ext4_chksum(csum, b"\0\0\0\0")
    return ext4_chksum(csum, block[_CSUM_OFFSET + 4 :])


def block_xattrs(sb: Superblock, dev: BlockDevice, inode: Inode) -> list[Xattr]:
    """Entries of the inode's external xattr block (i_file_acl), checked."""
    if not inode.file_acl:
        return []
    where = f"inode {inode.ino} xattr block {inode.file_acl}"
    data = dev.meta_block(inode.file_acl, "xattr block")
    hdr = XATTR_HEADER.unpack(data)
    if hdr["h_magic"] != EXT4_XATTR_MAGIC or hdr["h_blocks"] != 1:
        raise CorruptImage(f"{where}: bad block (magic or h_blocks)")
    if sb.metadata_csum and block_checksum(data, inode.file_acl, sb.csum_seed) != hdr["h_checksum"]:
        raise CorruptImage(f"{where}: xattr block checksum invalid")
    return parse_entries(sb, data, XATTR_HEADER.size, len(data), 0, where)


def inode_xattrs(sb: Superblock, dev: BlockDevice, inode: Inode) -> list[Xattr]:
    """All entries, in-inode first then the block's, as the kernel's listxattr orders them."""
    return ibody_xattrs(sb, inode) + block_xattrs(sb, dev, inode)


def xattr_name(entry: Xattr) -> bytes | None:
    """The full name the kernel shows for ``entry``, or None if it shows none."""
    prefix = PREFIXES.get(entry.index)
    if prefix is None:
        return None
    return prefix + entry.name


def split_name(name: bytes) -> tuple[int, bytes] | None:
    """(index, stored name) for a full xattr name, or None if ext4 cannot hold it."""
    for index in _ACL_INDEXES:
        if name == PREFIXES[index]:
            return index, b""
    for index, prefix in PREFIXES.items():
        if index not in _ACL_INDEXES and name.startswith(prefix) and len(name) > len(prefix):
            return index, name[len(prefix) :]
    return None


def xattr_entry_hash(name: bytes, value_words: tuple[int, ...], signed: bool = False) -> int:
    """ext4_xattr_hash_entry (and its old signed-char variant) over name and value words."""
    h = 0
    for ch in name:
        if signed and ch & 0x80:
            ch -= 256
        h = ((h << 5) ^ (h >> 27) ^ ch) & 0xFFFFFFFF
    for word in value_words:
        h = ((h << 16) ^ (h >> 16) ^ word) & 0xFFFFFFFF
    return h


#: Reads an EA inode's value: (ea inode number, expected size, parent inode) -> bytes.
EaReader = Callable[[int, int, Inode, Xattr], bytes]
