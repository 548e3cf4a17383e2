"""POSIX ACLs: ext4's compact on-disk form -> the xattr form getxattr(2) returns.

On disk (fs/ext4/acl.h): a 4-byte header ``a_version`` = 1, then entries of 4 bytes
(``e_tag``, ``e_perm``) for USER_OBJ, GROUP_OBJ, MASK and OTHER, and of 8 bytes (plus
``e_id``) for named USER and GROUP entries.  The kernel decodes that into a posix_acl and
``posix_acl_to_xattr`` re-encodes it: version 2, every entry 8 bytes, ``e_id`` the uid or
gid for named entries and ACL_UNDEFINED_ID (0xFFFFFFFF) for the others.
"""

from __future__ import annotations

import struct

import construct as c

from drivers.base import CorruptImage
from drivers.layout import Layout

__all__ = ["ACL_ENTRY", "ACL_ENTRY_SHORT", "ACL_HEADER", "disk_acl_to_xattr"]

ACL_HEADER = Layout("acl_header", c.Struct("a_version" / c.Int32ul))
ACL_ENTRY_SHORT = Layout("acl_entry_short", c.Struct("e_tag" / c.Int16ul, "e_perm" / c.Int16ul))
ACL_ENTRY = Layout(
    "acl_entry", c.Struct("e_tag" / c.Int16ul, "e_perm" / c.Int16ul, "e_id" / c.Int32ul)
)

EXT4_ACL_VERSION = 1
POSIX_ACL_XATTR_VERSION = 2
ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF


def _acl_count(size: int) -> int:
    """ext4_acl_count: entries in ``size`` bytes after the header, or -1 if impossible."""
    size -= ACL_HEADER.size
    s = size - 4 * ACL_ENTRY_SHORT.size
    if s < 0:
        return -1 if size % ACL_ENTRY_SHORT.size else size // ACL_ENTRY_SHORT.size
    return -1 if s % ACL_ENTRY.size else s // ACL_ENTRY.size + 4


def disk_acl_to_xattr(value: bytes, where: str) -> bytes | None:
    """The getxattr bytes for an on-disk ACL, or None for an empty ACL (ENODATA)."""
    if len(value) < ACL_HEADER.size:
        raise CorruptImage(f"{where}: ACL too short")
    if ACL_HEADER.packer.unpack_from(value)[0] != EXT4_ACL_VERSION:
        raise CorruptImage(f"{where}: unknown ACL version")
    count = _acl_count(len(value))
    if count < 0:
        raise CorruptImage(f"{where}: ACL size does not fit its entries")
    if count == 0:
        return None
    out = bytearray(struct.pack("<I", POSIX_ACL_XATTR_VERSION))
    off = ACL_HEADER.size
    for _ in range(count):
        if off + ACL_ENTRY_SHORT.size > len(value):
            raise CorruptImage(f"{where}: ACL entries run past the value")
        tag, perm = ACL_ENTRY_SHORT.packer.unpack_from(value, off)
        if tag in (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER):
            ident = ACL_UNDEFINED_ID
            off += ACL_ENTRY_SHORT.size
        elif tag in (ACL_USER, ACL_GROUP):
            if off + ACL_ENTRY.size > len(value):
                raise CorruptImage(f"{where}: ACL entries run past the value")
            ident = ACL_ENTRY.packer.unpack_from(value, off)[2]
            off += ACL_ENTRY.size
        else:
            raise CorruptImage(f"{where}: unknown ACL tag 0x{tag:x}")
        out += ACL_ENTRY.packer.pack(tag, perm, ident)
    if off != len(value):
        raise CorruptImage(f"{where}: ACL has trailing bytes")
    return bytes(out)
