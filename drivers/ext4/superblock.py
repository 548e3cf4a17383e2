"""The superblock: its layout, the geometry derived from it, and feature gating.

The checks mirror what the kernel's ``ext4_fill_super`` refuses on a read-only mount:
an image the kernel would not mount is refused here too (with the kernel's reason where
there is one), and everything the geometry is later used for (group counts, inode table
sizes, descriptor sizes) is validated once, here, so the rest of the driver can rely on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import construct as c

from drivers.base import CorruptImage, Unsupported
from drivers.ext4.checksum import ext4_chksum
from drivers.layout import Layout

__all__ = ["SUPERBLOCK", "SUPERBLOCK_OFFSET", "Superblock", "parse_superblock"]

#: The primary superblock always sits 1024 bytes into the volume, whatever the block size.
SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
EXT4_SUPER_MAGIC = 0xEF53
MAGIC_OFFSET = SUPERBLOCK_OFFSET + 0x38

SUPERBLOCK = Layout(
    "superblock",
    c.Struct(
        "s_inodes_count" / c.Int32ul,
        "s_blocks_count_lo" / c.Int32ul,
        "s_r_blocks_count_lo" / c.Int32ul,
        "s_free_blocks_count_lo" / c.Int32ul,
        "s_free_inodes_count" / c.Int32ul,
        "s_first_data_block" / c.Int32ul,
        "s_log_block_size" / c.Int32ul,
        "s_log_cluster_size" / c.Int32ul,
        "s_blocks_per_group" / c.Int32ul,
        "s_clusters_per_group" / c.Int32ul,
        "s_inodes_per_group" / c.Int32ul,
        "s_mtime" / c.Int32ul,
        "s_wtime" / c.Int32ul,
        "s_mnt_count" / c.Int16ul,
        "s_max_mnt_count" / c.Int16ul,
        "s_magic" / c.Int16ul,
        "s_state" / c.Int16ul,
        "s_errors" / c.Int16ul,
        "s_minor_rev_level" / c.Int16ul,
        "s_lastcheck" / c.Int32ul,
        "s_checkinterval" / c.Int32ul,
        "s_creator_os" / c.Int32ul,
        "s_rev_level" / c.Int32ul,
        "s_def_resuid" / c.Int16ul,
        "s_def_resgid" / c.Int16ul,
        "s_first_ino" / c.Int32ul,
        "s_inode_size" / c.Int16ul,
        "s_block_group_nr" / c.Int16ul,
        "s_feature_compat" / c.Int32ul,
        "s_feature_incompat" / c.Int32ul,
        "s_feature_ro_compat" / c.Int32ul,
        "s_uuid" / c.Bytes(16),
        "s_volume_name" / c.Bytes(16),
        "s_last_mounted" / c.Bytes(64),
        "s_algorithm_usage_bitmap" / c.Int32ul,
        "s_prealloc_blocks" / c.Int8ul,
        "s_prealloc_dir_blocks" / c.Int8ul,
        "s_reserved_gdt_blocks" / c.Int16ul,
        "s_journal_uuid" / c.Bytes(16),
        "s_journal_inum" / c.Int32ul,
        "s_journal_dev" / c.Int32ul,
        "s_last_orphan" / c.Int32ul,
        "s_hash_seed" / c.Array(4, c.Int32ul),
        "s_def_hash_version" / c.Int8ul,
        "s_jnl_backup_type" / c.Int8ul,
        "s_desc_size" / c.Int16ul,
        "s_default_mount_opts" / c.Int32ul,
        "s_first_meta_bg" / c.Int32ul,
        "s_mkfs_time" / c.Int32ul,
        "s_jnl_blocks" / c.Array(17, c.Int32ul),
        "s_blocks_count_hi" / c.Int32ul,
        "s_r_blocks_count_hi" / c.Int32ul,
        "s_free_blocks_count_hi" / c.Int32ul,
        "s_min_extra_isize" / c.Int16ul,
        "s_want_extra_isize" / c.Int16ul,
        "s_flags" / c.Int32ul,
        "s_raid_stride" / c.Int16ul,
        "s_mmp_interval" / c.Int16ul,
        "s_mmp_block" / c.Int64ul,
        "s_raid_stripe_width" / c.Int32ul,
        "s_log_groups_per_flex" / c.Int8ul,
        "s_checksum_type" / c.Int8ul,
        "s_reserved_pad" / c.Int16ul,
        "s_kbytes_written" / c.Int64ul,
        "s_snapshot_inum" / c.Int32ul,
        "s_snapshot_id" / c.Int32ul,
        "s_snapshot_r_blocks_count" / c.Int64ul,
        "s_snapshot_list" / c.Int32ul,
        "s_error_count" / c.Int32ul,
        "s_first_error_time" / c.Int32ul,
        "s_first_error_ino" / c.Int32ul,
        "s_first_error_block" / c.Int64ul,
        "s_first_error_func" / c.Bytes(32),
        "s_first_error_line" / c.Int32ul,
        "s_last_error_time" / c.Int32ul,
        "s_last_error_ino" / c.Int32ul,
        "s_last_error_line" / c.Int32ul,
        "s_last_error_block" / c.Int64ul,
        "s_last_error_func" / c.Bytes(32),
        "s_mount_opts" / c.Bytes(64),
        "s_usr_quota_inum" / c.Int32ul,
        "s_grp_quota_inum" / c.Int32ul,
        "s_overhead_clusters" / c.Int32ul,
        "s_backup_bgs" / c.Array(2, c.Int32ul),
        "s_encrypt_algos" / c.Bytes(4),
        "s_encrypt_pw_salt" / c.Bytes(16),
        "s_lpf_ino" / c.Int32ul,
        "s_prj_quota_inum" / c.Int32ul,
        "s_checksum_seed" / c.Int32ul,
        "s_wtime_hi" / c.Int8ul,
        "s_mtime_hi" / c.Int8ul,
        "s_mkfs_time_hi" / c.Int8ul,
        "s_lastcheck_hi" / c.Int8ul,
        "s_first_error_time_hi" / c.Int8ul,
        "s_last_error_time_hi" / c.Int8ul,
        "s_first_error_errcode" / c.Int8ul,
        "s_last_error_errcode" / c.Int8ul,
        "s_encoding" / c.Int16ul,
        "s_encoding_flags" / c.Int16ul,
        "s_orphan_file_inum" / c.Int32ul,
        "s_reserved" / c.Bytes(94 * 4),
        "s_checksum" / c.Int32ul,
    ),
)
assert SUPERBLOCK.size == SUPERBLOCK_SIZE

# s_feature_compat
COMPAT_HAS_JOURNAL = 0x4
COMPAT_DIR_INDEX = 0x20
COMPAT_SPARSE_SUPER2 = 0x200

# s_feature_incompat: every bit the kernel knows, with the name e2fsprogs gives it.
INCOMPAT_COMPRESSION = 0x1
INCOMPAT_FILETYPE = 0x2
INCOMPAT_RECOVER = 0x4
INCOMPAT_JOURNAL_DEV = 0x8
INCOMPAT_META_BG = 0x10
INCOMPAT_EXTENTS = 0x40
INCOMPAT_64BIT = 0x80
INCOMPAT_MMP = 0x100
INCOMPAT_FLEX_BG = 0x200
INCOMPAT_EA_INODE = 0x400
INCOMPAT_DIRDATA = 0x1000
INCOMPAT_CSUM_SEED = 0x2000
INCOMPAT_LARGEDIR = 0x4000
INCOMPAT_INLINE_DATA = 0x8000
INCOMPAT_ENCRYPT = 0x10000
INCOMPAT_CASEFOLD = 0x20000

#: What this driver reads.  RECOVER is accepted here and handled separately (noload).
INCOMPAT_SUPPORTED = (
    INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
)

#: Known bits this driver refuses, and why (unknown bits are reported as "unknown").
INCOMPAT_REFUSED: dict[int, str] = {
    INCOMPAT_COMPRESSION: "compression: never supported by Linux ext4",
    INCOMPAT_JOURNAL_DEV: "journal_dev: an external journal device, not a file system",
    INCOMPAT_DIRDATA: "dirdata: Lustre directory data, not supported by Linux ext4",
    INCOMPAT_ENCRYPT: "encrypt: fscrypt-encrypted directories are not implemented",
    INCOMPAT_CASEFOLD: "casefold: case-insensitive directories are not implemented"
    " (kernels built without CONFIG_UNICODE refuse them too)",
}

# s_feature_ro_compat: unknown bits are fine for a read-only mount.
RO_COMPAT_SPARSE_SUPER = 0x1
RO_COMPAT_LARGE_FILE = 0x2
RO_COMPAT_HUGE_FILE = 0x8
RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_DIR_NLINK = 0x20
RO_COMPAT_EXTRA_ISIZE = 0x40
RO_COMPAT_BIGALLOC = 0x200
RO_COMPAT_METADATA_CSUM = 0x400

# s_flags
FLAGS_SIGNED_HASH = 0x1
FLAGS_UNSIGNED_HASH = 0x2

EXT4_GOOD_OLD_REV = 0
EXT4_GOOD_OLD_INODE_SIZE = 128
EXT4_GOOD_OLD_FIRST_INO = 11
EXT4_MIN_DESC_SIZE = 32
EXT4_MIN_DESC_SIZE_64BIT = 64
EXT4_MAX_DESC_SIZE = 1024
EXT4_CRC32C_CHKSUM = 1
EXT4_OS_HURD = 1
#: The kernel refuses larger blocks (and, before 6.x large-folio support, anything above
#: the page size); 64 KiB is the format's own limit, which this driver honours.
MIN_BLOCK_LOG = 10
MAX_BLOCK_LOG = 16
#: The largest cluster (bigalloc) the kernel accepts: 2^30 bytes.
MAX_CLUSTER_LOG = 30


@dataclass(frozen=True, slots=True)
class Superblock:
    """The validated superblock and the geometry derived from it."""

    raw: dict[str, object]
    block_size: int
    block_bits: int
    cluster_ratio: int  # blocks per cluster (1 without bigalloc)
    blocks_count: int
    r_blocks_count: int
    first_data_block: int
    blocks_per_group: int
    clusters_per_group: int
    inodes_per_group: int
    inodes_count: int
    inode_size: int
    first_ino: int
    groups_count: int
    desc_size: int
    desc_per_block: int
    gdt_blocks: int  # blocks of group descriptors (s_gdb_count)
    inode_table_blocks: int  # per group (s_itb_per_group)
    compat: int
    incompat: int
    ro_compat: int
    csum_seed: int  # s_csum_seed, meaningful with metadata_csum or ea_inode
    hash_seed: tuple[int, int, int, int]
    hash_unsigned: int  # 3 when names hash as unsigned chars, else 0
    creator_os: int
    label: str
    ignore_journal: bool

    def has_compat(self, bit: int) -> bool:
        return bool(self.compat & bit)

    def has_incompat(self, bit: int) -> bool:
        return bool(self.incompat & bit)

    def has_ro_compat(self, bit: int) -> bool:
        return bool(self.ro_compat & bit)

    @property
    def metadata_csum(self) -> bool:
        return bool(self.ro_compat & RO_COMPAT_METADATA_CSUM)

    @property
    def is_64bit(self) -> bool:
        return bool(self.incompat & INCOMPAT_64BIT)


def _feature_names(bits: int) -> str:
    parts = []
    bit = 1
    while bit <= bits:
        if bits & bit:
            reason = INCOMPAT_REFUSED.get(bit, "unknown")
            parts.append(f"0x{bit:x} ({reason})")
        bit <<= 1
    return ", ".join(parts)


def superblock_checksum(raw_bytes: bytes) -> int:
    return ext4_chksum(0xFFFFFFFF, raw_bytes[: SUPERBLOCK.offset_of("s_checksum")])


def parse_superblock(
    raw_bytes: bytes, image_size: int, options: Mapping[str, str] | None = None
) -> Superblock:
    """Validate the 1024 superblock bytes of an image of ``image_size`` bytes.

    Raises :class:`Unsupported` for a valid file system this driver will not serve
    (features, journal needing recovery) and :class:`CorruptImage` for nonsense.
    """
    options = options or {}
    if len(raw_bytes) != SUPERBLOCK_SIZE:
        raise CorruptImage("image too small to hold an ext2/3/4 superblock")
    sb = SUPERBLOCK.unpack(raw_bytes)
    if sb["s_magic"] != EXT4_SUPER_MAGIC:
        raise CorruptImage("no ext2/3/4 superblock (bad magic)")

    rev = sb["s_rev_level"]
    compat = sb["s_feature_compat"] if rev != EXT4_GOOD_OLD_REV else 0
    incompat = sb["s_feature_incompat"] if rev != EXT4_GOOD_OLD_REV else 0
    ro_compat = sb["s_feature_ro_compat"] if rev != EXT4_GOOD_OLD_REV else 0

    # Checksum first, as the kernel: a damaged superblock says nothing about features.
    if ro_compat & RO_COMPAT_METADATA_CSUM:
        if sb["s_checksum_type"] != EXT4_CRC32C_CHKSUM:
            raise CorruptImage("unknown superblock checksum algorithm")
        if superblock_checksum(raw_bytes) != sb["s_checksum"]:
            raise CorruptImage("invalid superblock checksum (the kernel refuses it too)")

    unsupported = incompat & ~INCOMPAT_SUPPORTED
    if unsupported:
        raise Unsupported(f"unsupported ext4 INCOMPAT feature(s): {_feature_names(unsupported)}")

    log_block = sb["s_log_block_size"]
    if log_block > MAX_BLOCK_LOG - MIN_BLOCK_LOG:
        raise CorruptImage(f"invalid log block size: {log_block}")
    block_bits = MIN_BLOCK_LOG + log_block
    block_size = 1 << block_bits

    if rev == EXT4_GOOD_OLD_REV:
        inode_size = EXT4_GOOD_OLD_INODE_SIZE
        first_ino = EXT4_GOOD_OLD_FIRST_INO
    else:
        inode_size = sb["s_inode_size"]
        first_ino = sb["s_first_ino"]
        if (
            inode_size < EXT4_GOOD_OLD_INODE_SIZE
            or inode_size > block_size
            or inode_size & (inode_size - 1)
        ):
            raise CorruptImage(f"unsupported inode size: {inode_size}")
        if first_ino < EXT4_GOOD_OLD_FIRST_INO:
            raise CorruptImage(f"invalid first ino: {first_ino}")
    if inode_size > EXT4_GOOD_OLD_INODE_SIZE and ro_compat & RO_COMPAT_EXTRA_ISIZE:
        room = inode_size - EXT4_GOOD_OLD_INODE_SIZE
        for field in ("s_want_extra_isize", "s_min_extra_isize"):
            if sb[field] > room:
                raise CorruptImage(f"bad {field}: {sb[field]}")

    if ro_compat & RO_COMPAT_BIGALLOC:
        log_cluster = sb["s_log_cluster_size"]
        if log_cluster < log_block or MIN_BLOCK_LOG + log_cluster > MAX_CLUSTER_LOG:
            raise CorruptImage(f"invalid log cluster size: {log_cluster}")
        cluster_ratio = 1 << (log_cluster - log_block)
        clusters_per_group = sb["s_clusters_per_group"]
        if clusters_per_group == 0 or clusters_per_group > block_size * 8:
            raise CorruptImage(f"#clusters per group invalid: {clusters_per_group}")
        blocks_per_group = clusters_per_group * cluster_ratio
        if sb["s_blocks_per_group"] != blocks_per_group:
            raise CorruptImage("blocks per group and clusters per group disagree")
    else:
        cluster_ratio = 1
        blocks_per_group = sb["s_blocks_per_group"]
        clusters_per_group = blocks_per_group
        if blocks_per_group == 0 or blocks_per_group > block_size * 8:
            raise CorruptImage(f"#blocks per group invalid: {blocks_per_group}")

    inodes_per_block = block_size // inode_size
    inodes_per_group = sb["s_inodes_per_group"]
    if inodes_per_group < inodes_per_block or inodes_per_group > block_size * 8:
        raise CorruptImage(f"invalid inodes per group: {inodes_per_group}")
    inode_table_blocks = inodes_per_group // inodes_per_block

    if incompat & INCOMPAT_64BIT:
        desc_size = sb["s_desc_size"]
        if (
            desc_size < EXT4_MIN_DESC_SIZE_64BIT
            or desc_size > EXT4_MAX_DESC_SIZE
            or desc_size & (desc_size - 1)
        ):
            raise CorruptImage(f"unsupported descriptor size {desc_size}")
        blocks_count = sb["s_blocks_count_lo"] | sb["s_blocks_count_hi"] << 32
        r_blocks_count = sb["s_r_blocks_count_lo"] | sb["s_r_blocks_count_hi"] << 32
    else:
        desc_size = EXT4_MIN_DESC_SIZE
        blocks_count = sb["s_blocks_count_lo"]
        r_blocks_count = sb["s_r_blocks_count_lo"]
    desc_per_block = block_size // desc_size

    first_data_block = sb["s_first_data_block"]
    if first_data_block >= blocks_count:
        raise CorruptImage(
            f"bad geometry: first data block {first_data_block} is beyond last block {blocks_count}"
        )
    if block_size == 1024 and first_data_block == 0 and cluster_ratio == 1:
        raise CorruptImage("bad geometry: first data block is 0 with a 1k block and cluster size")
    if blocks_count > image_size >> block_bits:
        raise CorruptImage(
            f"bad geometry: block count {blocks_count} exceeds size of device"
            f" ({image_size >> block_bits} blocks)"
        )
    groups_count = (blocks_count - first_data_block + blocks_per_group - 1) // blocks_per_group
    if groups_count * inodes_per_group != sb["s_inodes_count"]:
        raise CorruptImage(
            f"inodes count not valid: {sb['s_inodes_count']} vs {groups_count * inodes_per_group}"
        )
    gdt_blocks = (groups_count + desc_per_block - 1) // desc_per_block
    if incompat & INCOMPAT_META_BG and sb["s_first_meta_bg"] > gdt_blocks:
        raise CorruptImage(
            f"first meta block group too large: {sb['s_first_meta_bg']}"
            f" (group descriptor block count {gdt_blocks})"
        )

    ignore_journal = "noload" in options
    if incompat & INCOMPAT_RECOVER and compat & COMPAT_HAS_JOURNAL and not ignore_journal:
        raise Unsupported(
            "the journal needs recovery, which a read-only mount cannot do"
            " (mount with -o noload to ignore the journal and see the file system"
            " as it was at the last checkpoint)"
        )

    if incompat & INCOMPAT_CSUM_SEED:
        csum_seed = sb["s_checksum_seed"]
    else:
        csum_seed = ext4_chksum(0xFFFFFFFF, sb["s_uuid"])

    # Signed unless the volume says unsigned, as an x86 kernel assumes when neither is set.
    hash_unsigned = 3 if sb["s_flags"] & FLAGS_UNSIGNED_HASH else 0

    return Superblock(
        raw=sb,
        block_size=block_size,
        block_bits=block_bits,
        cluster_ratio=cluster_ratio,
        blocks_count=blocks_count,
        r_blocks_count=r_blocks_count,
        first_data_block=first_data_block,
        blocks_per_group=blocks_per_group,
        clusters_per_group=clusters_per_group,
        inodes_per_group=inodes_per_group,
        inodes_count=sb["s_inodes_count"],
        inode_size=inode_size,
        first_ino=first_ino,
        groups_count=groups_count,
        desc_size=desc_size,
        desc_per_block=desc_per_block,
        gdt_blocks=gdt_blocks,
        inode_table_blocks=inode_table_blocks,
        compat=compat,
        incompat=incompat,
        ro_compat=ro_compat,
        csum_seed=csum_seed,
        hash_seed=tuple(sb["s_hash_seed"]),
        hash_unsigned=hash_unsigned,
        creator_os=sb["s_creator_os"],
        label=sb["s_volume_name"].split(b"\0", 1)[0].decode("utf-8", "replace"),
        ignore_journal=ignore_journal,
    )
