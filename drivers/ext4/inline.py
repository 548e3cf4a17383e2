"""inline_data: small files, directories and symlinks stored inside the inode.

The first 60 bytes live in i_block, the rest in the value of the in-inode xattr
"system.data" (index 7, name "data"; the kernel never looks for it in the external
block).  An inline directory starts with the parent's inode number (4 bytes) instead of
"." and "..", followed by a record chain filling i_block, then a second record chain
filling the xattr value.  Whether an inode is inline is decided when it is loaded (see
:class:`drivers.ext4.inode.Inode`); this module reads what that found.
"""

from __future__ import annotations

import logging
import struct

from drivers.base import CorruptImage
from drivers.ext4.directory import DirBlock, Entry, scan_entries
from drivers.ext4.inode import I_BLOCK_SIZE, Inode
from drivers.ext4.superblock import Superblock
from drivers.ext4.xattr import INDEX_SYSTEM, Xattr

log = logging.getLogger("pyfsmount.ext4")

__all__ = [
    "INLINE_DOTDOT_SIZE",
    "find_system_data",
    "inline_data",
    "inline_dir_entries",
    "inline_parent",
]

INLINE_DOTDOT_SIZE = 4
SYSTEM_DATA = b"data"


def find_system_data(ino: int, ibody: list[Xattr]) -> bytes | None:
    """The value of the in-inode "system.data" xattr, if any (ext4_find_inline_data_nolock)."""
    for entry in ibody:
        if entry.index == INDEX_SYSTEM and entry.name == SYSTEM_DATA:
            if entry.value is None:
                raise CorruptImage(
                    f"inode {ino}: inline data xattr refers to an external xattr inode"
                )
            return entry.value
    return None


def inline_data(inode: Inode) -> bytes:
    """All inline bytes (i_block + system.data), not clipped to i_size."""
    return inode.i_block + inode.inline_tail


def inline_parent(inode: Inode) -> int:
    return int(struct.unpack_from("<I", inode.i_block)[0])


def inline_dir_block(sb: Superblock, inode: Inode) -> DirBlock:
    """The live entries of an inline directory, as one block.

    Positions: i_block records at their byte offset (4..59), xattr records at 60 + their
    offset in the value, so a listing resumes exactly where it stopped.  Entries stop at
    the first bad record, as in ext4_inlinedir_to_tree (which lists what came before it);
    a lookup that reaches it fails (ext4_find_inline_entry).
    """
    where = f"inline directory inode {inode.ino}"
    entries, damage = scan_entries(
        inode.i_block,
        INLINE_DOTDOT_SIZE,
        I_BLOCK_SIZE,
        INLINE_DOTDOT_SIZE,
        sb.block_size,
        sb.inodes_count,
        where,
    )
    extra = inode.inline_tail
    if extra and not damage:
        more, damage = scan_entries(
            extra, 0, len(extra), I_BLOCK_SIZE, sb.block_size, sb.inodes_count, where
        )
        entries += more
    if damage:
        log.warning("%s; the entries after it are not listed, as in the kernel", damage)
    return DirBlock(tuple(entries), damage=damage)


def inline_dir_entries(sb: Superblock, inode: Inode, offset: int = 0) -> list[Entry]:
    """Live entries of an inline directory at positions >= ``offset``."""
    return [e for e in inline_dir_block(sb, inode).entries if e[0] >= offset]
