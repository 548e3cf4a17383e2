"""The "system zone": blocks no file may claim (the kernel's block_validity.c).

Superblock copies and group descriptor blocks (of the groups the kernel protects),
bitmaps, inode tables and the journal's blocks.  Every block a file, directory, extent
tree, indirect block or xattr block names is checked against it, as the kernel's
``ext4_inode_block_valid`` does by default (the block_validity mount option): a file
whose blocks overlap metadata fails with CorruptImage instead of showing metadata bytes.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable

from drivers.base import CorruptImage
from drivers.ext4.group import GroupTable, bg_has_super, bg_num_gdb
from drivers.ext4.superblock import INCOMPAT_FLEX_BG, Superblock

__all__ = ["BlockValidity"]


class BlockValidity:
    """Sorted, disjoint zones ``[start, end)`` with the inode that may use each (0: none)."""

    __slots__ = ("blocks_count", "ends", "first_data_block", "owners", "starts")

    def __init__(self, sb: Superblock, groups: GroupTable) -> None:
        self.first_data_block = sb.first_data_block
        self.blocks_count = sb.blocks_count
        flex_size = 1 << sb.raw["s_log_groups_per_flex"] if sb.has_incompat(INCOMPAT_FLEX_BG) else 1  # type: ignore[operator]
        zones: list[tuple[int, int]] = []
        itb = sb.inode_table_blocks
        for group in range(sb.groups_count):
            if bg_has_super(sb, group) and (group < 5 or group % flex_size == 0):
                first = sb.first_data_block + group * sb.blocks_per_group
                zones.append((first, first + bg_num_gdb(sb, group) + 1))
            zones.append((groups.block_bitmap[group], groups.block_bitmap[group] + 1))
            zones.append((groups.inode_bitmap[group], groups.inode_bitmap[group] + 1))
            zones.append((groups.inode_table[group], groups.inode_table[group] + itb))
        zones.sort()
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.owners: list[int] = []
        for start, end in zones:
            if self.starts and start <= self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], end)
            else:
                self.starts.append(start)
                self.ends.append(end)
                self.owners.append(0)

    def valid(self, start: int, count: int, ino: int) -> bool:
        """ext4_inode_block_valid: ``count`` blocks from ``start`` usable by inode ``ino``."""
        if start <= self.first_data_block or count < 1 or start + count > self.blocks_count:
            return False
        i = bisect_right(self.starts, start + count - 1) - 1
        if i >= 0 and self.ends[i] > start:
            return self.owners[i] == ino
        return True

    def protect_inode(self, ino: int, runs: Callable[[], list[tuple[int, int]]]) -> None:
        """Add the blocks of a reserved inode (the journal), which must not overlap metadata.

        ``runs`` maps the inode (checking its blocks against the zones so far) and returns
        its ``(start, count)`` runs.
        """
        try:
            extents = runs()
        except CorruptImage as exc:
            raise CorruptImage(f"failed to initialize system zone: inode {ino}: {exc}") from exc
        for start, count in extents:
            i = bisect_right(self.starts, start + count - 1) - 1
            if i >= 0 and self.ends[i] > start and self.owners[i] != ino:
                raise CorruptImage(
                    f"failed to initialize system zone: blocks {start}-{start + count - 1}"
                    f" of inode {ino} overlap the system zone"
                )
            pos = bisect_right(self.starts, start)
            self.starts.insert(pos, start)
            self.ends.insert(pos, start + count)
            self.owners.insert(pos, ino)
