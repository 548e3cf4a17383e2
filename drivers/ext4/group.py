"""Block group descriptors: where they are, what they say, and what is in each group.

Descriptors are 32 bytes, or ``s_desc_size`` (>= 64) with the 64bit feature, stored in
the blocks after the superblock, or with meta_bg in the first, second and last group of
each meta group.  At open they are all checked as the kernel's ``ext4_check_descriptors``
does (bitmaps and inode table inside their group, or anywhere with flex_bg), and only
the few numbers the driver needs are kept, in flat arrays.
"""

from __future__ import annotations

import logging
from array import array

import construct as c

from drivers.base import CorruptImage
from drivers.ext4.checksum import crc16, ext4_chksum, le32
from drivers.ext4.device import BlockDevice
from drivers.ext4.superblock import (
    COMPAT_SPARSE_SUPER2,
    INCOMPAT_FLEX_BG,
    INCOMPAT_META_BG,
    RO_COMPAT_BIGALLOC,
    RO_COMPAT_GDT_CSUM,
    RO_COMPAT_SPARSE_SUPER,
    SUPERBLOCK_OFFSET,
    Superblock,
)
from drivers.layout import Layout

__all__ = ["GROUP_DESC", "GroupTable", "bg_has_super", "bg_num_gdb", "descriptor_block"]

log = logging.getLogger("pyfsmount.ext4")

GROUP_DESC = Layout(
    "group_desc",
    c.Struct(
        "bg_block_bitmap_lo" / c.Int32ul,
        "bg_inode_bitmap_lo" / c.Int32ul,
        "bg_inode_table_lo" / c.Int32ul,
        "bg_free_blocks_count_lo" / c.Int16ul,
        "bg_free_inodes_count_lo" / c.Int16ul,
        "bg_used_dirs_count_lo" / c.Int16ul,
        "bg_flags" / c.Int16ul,
        "bg_exclude_bitmap_lo" / c.Int32ul,
        "bg_block_bitmap_csum_lo" / c.Int16ul,
        "bg_inode_bitmap_csum_lo" / c.Int16ul,
        "bg_itable_unused_lo" / c.Int16ul,
        "bg_checksum" / c.Int16ul,
        # 64bit only (desc_size >= 64):
        "bg_block_bitmap_hi" / c.Int32ul,
        "bg_inode_bitmap_hi" / c.Int32ul,
        "bg_inode_table_hi" / c.Int32ul,
        "bg_free_blocks_count_hi" / c.Int16ul,
        "bg_free_inodes_count_hi" / c.Int16ul,
        "bg_used_dirs_count_hi" / c.Int16ul,
        "bg_itable_unused_hi" / c.Int16ul,
        "bg_exclude_bitmap_hi" / c.Int32ul,
        "bg_block_bitmap_csum_hi" / c.Int16ul,
        "bg_inode_bitmap_csum_hi" / c.Int16ul,
        "bg_reserved" / c.Int32ul,
    ),
)
_I = GROUP_DESC.index
_CSUM_OFFSET = GROUP_DESC.offset_of("bg_checksum")
_PAD64 = bytes(64)

EXT4_BG_BLOCK_UNINIT = 0x2


def _test_root(a: int, b: int) -> bool:
    while a > 1:
        if a % b:
            return False
        a //= b
    return a == 1


def bg_has_super(sb: Superblock, group: int) -> bool:
    """Whether ``group`` holds a copy of the superblock (sparse_super, sparse_super2)."""
    if group == 0:
        return True
    if sb.has_compat(COMPAT_SPARSE_SUPER2):
        return group in sb.raw["s_backup_bgs"]  # type: ignore[operator]
    if group <= 1 or not sb.has_ro_compat(RO_COMPAT_SPARSE_SUPER):
        return True
    if not group & 1:
        return False
    return _test_root(group, 3) or _test_root(group, 5) or _test_root(group, 7)


def bg_num_gdb(sb: Superblock, group: int) -> int:
    """Blocks of group descriptors stored in ``group`` (the kernel's ext4_bg_num_gdb)."""
    first_meta_bg: int = sb.raw["s_first_meta_bg"]  # type: ignore[assignment]
    metagroup = group // sb.desc_per_block
    if not sb.has_incompat(INCOMPAT_META_BG) or metagroup < first_meta_bg:
        if not bg_has_super(sb, group):
            return 0
        return first_meta_bg if sb.has_incompat(INCOMPAT_META_BG) else sb.gdt_blocks
    first = metagroup * sb.desc_per_block
    return 1 if group in (first, first + 1, first + sb.desc_per_block - 1) else 0


def descriptor_block(sb: Superblock, nr: int) -> int:
    """The block holding descriptor block ``nr`` (the kernel's descriptor_loc)."""
    logical_sb_block = SUPERBLOCK_OFFSET // sb.block_size
    first_meta_bg: int = sb.raw["s_first_meta_bg"]  # type: ignore[assignment]
    if not sb.has_incompat(INCOMPAT_META_BG) or nr < first_meta_bg:
        return logical_sb_block + nr + 1
    bg = sb.desc_per_block * nr
    has_super = 1 if bg_has_super(sb, bg) else 0
    if sb.block_size == 1024 and nr == 0 and sb.first_data_block == 0:
        has_super += 1
    return has_super + bg * sb.blocks_per_group + sb.first_data_block


def desc_checksum(sb: Superblock, group: int, desc: bytes) -> int | None:
    """The checksum ``desc`` should carry, or None when the volume has none."""
    if sb.metadata_csum:
        csum = ext4_chksum(sb.csum_seed, le32(group))
        csum = ext4_chksum(csum, desc[:_CSUM_OFFSET])
        csum = ext4_chksum(csum, b"\0\0")
        if sb.desc_size > _CSUM_OFFSET + 2:
            csum = ext4_chksum(csum, desc[_CSUM_OFFSET + 2 : sb.desc_size])
        return csum & 0xFFFF
    if sb.has_ro_compat(RO_COMPAT_GDT_CSUM):
        crc = crc16(0xFFFF, sb.raw["s_uuid"])  # type: ignore[arg-type]
        crc = crc16(crc, le32(group))
        crc = crc16(crc, desc[:_CSUM_OFFSET])
        if sb.is_64bit and sb.desc_size > _CSUM_OFFSET + 2:
            crc = crc16(crc, desc[_CSUM_OFFSET + 2 : sb.desc_size])
        return crc
    return None


class GroupTable:
    """What the driver keeps of the group descriptors, after checking them all."""

    __slots__ = (
        "bad_checksums",
        "block_bitmap",
        "free_blocks",
        "free_inodes",
        "inode_bitmap",
        "inode_table",
        "sb",
    )

    def __init__(self, sb: Superblock, dev: BlockDevice) -> None:
        self.sb = sb
        n = sb.groups_count
        self.inode_table = array("Q", bytes(8 * n))
        self.block_bitmap = array("Q", bytes(8 * n))
        self.inode_bitmap = array("Q", bytes(8 * n))
        self.free_blocks = 0
        self.free_inodes = 0
        self.bad_checksums: list[int] = []
        unpack = GROUP_DESC.packer.unpack_from
        desc_size = sb.desc_size
        wide = sb.is_64bit
        flex = sb.has_incompat(INCOMPAT_FLEX_BG)
        checksummed = sb.metadata_csum or sb.has_ro_compat(RO_COMPAT_GDT_CSUM)
        itb = sb.inode_table_blocks
        first_block = sb.first_data_block
        last_fs_block = sb.blocks_count - 1
        for nr in range((n + sb.desc_per_block - 1) // sb.desc_per_block):
            where = descriptor_block(sb, nr)
            if not 0 <= where < sb.blocks_count:
                raise CorruptImage(f"group descriptor block {nr} is outside the file system")
            block = dev.reader.read(where * sb.block_size, sb.block_size)
            for slot in range(min(sb.desc_per_block, n - nr * sb.desc_per_block)):
                group = nr * sb.desc_per_block + slot
                raw = block[slot * desc_size : (slot + 1) * desc_size]
                v = unpack(raw if wide else raw + _PAD64[:32])
                if wide:
                    bbitmap = v[_I["bg_block_bitmap_lo"]] | v[_I["bg_block_bitmap_hi"]] << 32
                    ibitmap = v[_I["bg_inode_bitmap_lo"]] | v[_I["bg_inode_bitmap_hi"]] << 32
                    itable = v[_I["bg_inode_table_lo"]] | v[_I["bg_inode_table_hi"]] << 32
                    free_b = (
                        v[_I["bg_free_blocks_count_lo"]] | v[_I["bg_free_blocks_count_hi"]] << 16
                    )
                    free_i = (
                        v[_I["bg_free_inodes_count_lo"]] | v[_I["bg_free_inodes_count_hi"]] << 16
                    )
                else:
                    bbitmap = v[_I["bg_block_bitmap_lo"]]
                    ibitmap = v[_I["bg_inode_bitmap_lo"]]
                    itable = v[_I["bg_inode_table_lo"]]
                    free_b = v[_I["bg_free_blocks_count_lo"]]
                    free_i = v[_I["bg_free_inodes_count_lo"]]
                if group == n - 1 or flex:
                    last_block = last_fs_block
                else:
                    last_block = first_block + sb.blocks_per_group - 1
                if not first_block <= bbitmap <= last_block:
                    raise CorruptImage(
                        f"Block bitmap for group {group} not in group (block {bbitmap})"
                    )
                if not first_block <= ibitmap <= last_block:
                    raise CorruptImage(
                        f"Inode bitmap for group {group} not in group (block {ibitmap})"
                    )
                if itable < first_block or itable + itb - 1 > last_block:
                    raise CorruptImage(
                        f"Inode table for group {group} not in group (block {itable})"
                    )
                if checksummed and desc_checksum(sb, group, raw) != v[_I["bg_checksum"]]:
                    # The kernel only logs this on a read-only mount; so does this driver.
                    self.bad_checksums.append(group)
                self.inode_table[group] = itable
                self.block_bitmap[group] = bbitmap
                self.inode_bitmap[group] = ibitmap
                self.free_blocks += free_b
                self.free_inodes += free_i
                if not flex:
                    first_block += sb.blocks_per_group
        if self.bad_checksums:
            log.warning(
                "ext4: group descriptor checksum mismatch in %d group(s), first %d"
                " (ignored on a read-only mount, as the kernel does)",
                len(self.bad_checksums),
                self.bad_checksums[0],
            )

    def overhead_clusters(self) -> int:
        """Clusters of metadata (the kernel's ext4_calculate_overhead without the journal)."""
        sb = self.sb
        overhead = sb.first_data_block // sb.cluster_ratio
        reserved_gdt: int = sb.raw["s_reserved_gdt_blocks"]  # type: ignore[assignment]
        if not sb.has_ro_compat(RO_COMPAT_BIGALLOC):
            for group in range(sb.groups_count):
                has_super = bg_has_super(sb, group)
                overhead += (
                    int(has_super)
                    + bg_num_gdb(sb, group)
                    + (reserved_gdt if has_super else 0)
                    + sb.inode_table_blocks
                    + 2
                )
            return overhead
        # bigalloc: count distinct clusters of each group that hold metadata.
        per_group: dict[int, set[int]] = {}
        bpg = sb.blocks_per_group
        ratio = sb.cluster_ratio

        def mark(block: int) -> None:
            rel = block - sb.first_data_block
            if rel >= 0:
                per_group.setdefault(rel // bpg, set()).add((rel % bpg) // ratio)

        for group in range(sb.groups_count):
            mark(self.block_bitmap[group])
            mark(self.inode_bitmap[group])
            table = self.inode_table[group]
            rel = table - sb.first_data_block
            if rel >= 0 and rel % bpg + sb.inode_table_blocks <= bpg - 1:
                for b in range(table, table + sb.inode_table_blocks):
                    mark(b)
            start = sb.first_data_block + group * bpg
            s = 0
            if bg_has_super(sb, group):
                mark(start)
                s = 1
            for j in range(min(bg_num_gdb(sb, group), bpg - s)):
                mark(start + s + j)
        for clusters in per_group.values():
            overhead += len(clusters)
        return overhead
