"""Every squashfs 4.0 on-disk structure, declared once, and the format's constants.

Each structure is a ``construct.Struct`` whose field names are those of the kernel's
``fs/squashfs/squashfs_fs.h`` (``s_magic``, ``inode_number``, ``start_block``...).  The
declarations are pleasant to read and are what the tests use to locate and patch bytes,
but parsing with construct costs tens of microseconds per record and a directory walk
parses thousands, so :class:`Layout` derives a :class:`struct.Struct` from each
declaration and the drivers' hot paths decode with ``unpack_from`` into named tuples.

Only the fixed-size part of a structure is declared; the variable tails the format puts
after some of them (a directory entry's name, a file's block list, a symlink's target, a
directory index's name) are read by the modules that own them.
"""

from __future__ import annotations

import construct as c

from drivers.layout import Layout

__all__ = ["Layout"]


# -- constants (names as squashfs_fs.h) -------------------------------------------------------

SQUASHFS_MAGIC = 0x73717368  # "hsqs" little-endian
SQUASHFS_MAJOR = 4
SQUASHFS_MINOR = 0
SQUASHFS_METADATA_SIZE = 8192
SQUASHFS_BLOCK_OFFSET = 2  # the length word before each metadata block
SQUASHFS_FILE_MAX_SIZE = 1 << 20
SQUASHFS_FILE_MAX_LOG = 20
#: The kernel refuses blocks smaller than its page size (4 KiB here); mksquashfs's minimum.
SQUASHFS_FILE_MIN_SIZE = 4096
SQUASHFS_NAME_LEN = 256
SQUASHFS_DIR_COUNT = 256
SQUASHFS_MAX_DIR_TYPE = 7
SQUASHFS_INVALID_FRAG = 0xFFFFFFFF
SQUASHFS_INVALID_XATTR = 0xFFFFFFFF
SQUASHFS_INVALID_BLK = 0xFFFFFFFFFFFFFFFF
SQUASHFS_COMPRESSED_BIT = 1 << 15  # metadata length word: set = stored uncompressed
SQUASHFS_COMPRESSED_BIT_BLOCK = 1 << 24  # data block size word: set = stored uncompressed
#: A symlink longer than a page is refused by the kernel's squashfs_read_inode.
SQUASHFS_SYMLINK_MAX = 4096

# Superblock flags (bit numbers as squashfs-tools' squashfs_fs.h).
FLAG_NAMES = {
    0: "NOI (uncompressed inodes)",
    1: "NOD (uncompressed data)",
    2: "CHECK",
    3: "NOF (uncompressed fragments)",
    4: "NO_FRAG",
    5: "ALWAYS_FRAG",
    6: "DUPLICATE",
    7: "EXPORT",
    8: "NOX (uncompressed xattrs)",
    9: "NO_XATTR",
    10: "COMP_OPT",
    11: "NOID (uncompressed ids)",
}
SQUASHFS_NO_XATTR = 1 << 9
SQUASHFS_COMP_OPT = 1 << 10

# Compressor ids.
ZLIB_COMPRESSION = 1
LZMA_COMPRESSION = 2
LZO_COMPRESSION = 3
XZ_COMPRESSION = 4
LZ4_COMPRESSION = 5
ZSTD_COMPRESSION = 6

# Inode types, basic then extended ("long").
SQUASHFS_DIR_TYPE = 1
SQUASHFS_REG_TYPE = 2
SQUASHFS_SYMLINK_TYPE = 3
SQUASHFS_BLKDEV_TYPE = 4
SQUASHFS_CHRDEV_TYPE = 5
SQUASHFS_FIFO_TYPE = 6
SQUASHFS_SOCKET_TYPE = 7
SQUASHFS_LDIR_TYPE = 8
SQUASHFS_LREG_TYPE = 9
SQUASHFS_LSYMLINK_TYPE = 10
SQUASHFS_LBLKDEV_TYPE = 11
SQUASHFS_LCHRDEV_TYPE = 12
SQUASHFS_LFIFO_TYPE = 13
SQUASHFS_LSOCKET_TYPE = 14

# Xattr name prefixes.
SQUASHFS_XATTR_USER = 0
SQUASHFS_XATTR_TRUSTED = 1
SQUASHFS_XATTR_SECURITY = 2
SQUASHFS_XATTR_VALUE_OOL = 0x100
SQUASHFS_XATTR_PREFIX_MASK = 0xFF

# -- structures -------------------------------------------------------------------------------

SUPER_BLOCK = Layout(
    "squashfs_super_block",
    c.Struct(
        "s_magic" / c.Int32ul,
        "inodes" / c.Int32ul,
        "mkfs_time" / c.Int32ul,
        "block_size" / c.Int32ul,
        "fragments" / c.Int32ul,
        "compression" / c.Int16ul,
        "block_log" / c.Int16ul,
        "flags" / c.Int16ul,
        "no_ids" / c.Int16ul,
        "s_major" / c.Int16ul,
        "s_minor" / c.Int16ul,
        "root_inode" / c.Int64ul,
        "bytes_used" / c.Int64ul,
        "id_table_start" / c.Int64ul,
        "xattr_id_table_start" / c.Int64ul,
        "inode_table_start" / c.Int64ul,
        "directory_table_start" / c.Int64ul,
        "fragment_table_start" / c.Int64ul,
        "lookup_table_start" / c.Int64ul,
    ),
)
assert SUPER_BLOCK.size == 96

_BASE_FIELDS = (
    "inode_type" / c.Int16ul,
    "mode" / c.Int16ul,
    "uid" / c.Int16ul,
    "guid" / c.Int16ul,
    "mtime" / c.Int32ul,
    "inode_number" / c.Int32ul,
)

BASE_INODE = Layout("squashfs_base_inode", c.Struct(*_BASE_FIELDS))
IPC_INODE = Layout("squashfs_ipc_inode", c.Struct(*_BASE_FIELDS, "nlink" / c.Int32ul))
LIPC_INODE = Layout(
    "squashfs_lipc_inode", c.Struct(*_BASE_FIELDS, "nlink" / c.Int32ul, "xattr" / c.Int32ul)
)
DEV_INODE = Layout(
    "squashfs_dev_inode", c.Struct(*_BASE_FIELDS, "nlink" / c.Int32ul, "rdev" / c.Int32ul)
)
LDEV_INODE = Layout(
    "squashfs_ldev_inode",
    c.Struct(*_BASE_FIELDS, "nlink" / c.Int32ul, "rdev" / c.Int32ul, "xattr" / c.Int32ul),
)
#: Followed by ``symlink_size`` bytes of target, then (extended type only) a __le32 xattr.
SYMLINK_INODE = Layout(
    "squashfs_symlink_inode",
    c.Struct(*_BASE_FIELDS, "nlink" / c.Int32ul, "symlink_size" / c.Int32ul),
)
#: Followed by the block list: one __le32 per block stored outside a fragment.
REG_INODE = Layout(
    "squashfs_reg_inode",
    c.Struct(
        *_BASE_FIELDS,
        "start_block" / c.Int32ul,
        "fragment" / c.Int32ul,
        "offset" / c.Int32ul,
        "file_size" / c.Int32ul,
    ),
)
LREG_INODE = Layout(
    "squashfs_lreg_inode",
    c.Struct(
        *_BASE_FIELDS,
        "start_block" / c.Int64ul,
        "file_size" / c.Int64ul,
        "sparse" / c.Int64ul,
        "nlink" / c.Int32ul,
        "fragment" / c.Int32ul,
        "offset" / c.Int32ul,
        "xattr" / c.Int32ul,
    ),
)
DIR_INODE = Layout(
    "squashfs_dir_inode",
    c.Struct(
        *_BASE_FIELDS,
        "start_block" / c.Int32ul,
        "nlink" / c.Int32ul,
        "file_size" / c.Int16ul,
        "offset" / c.Int16ul,
        "parent_inode" / c.Int32ul,
    ),
)
#: Followed by ``i_count`` directory index entries.
LDIR_INODE = Layout(
    "squashfs_ldir_inode",
    c.Struct(
        *_BASE_FIELDS,
        "nlink" / c.Int32ul,
        "file_size" / c.Int32ul,
        "start_block" / c.Int32ul,
        "parent_inode" / c.Int32ul,
        "i_count" / c.Int16ul,
        "offset" / c.Int16ul,
        "xattr" / c.Int32ul,
    ),
)
#: Followed by ``size + 1`` bytes of name.
DIR_INDEX = Layout(
    "squashfs_dir_index",
    c.Struct("index" / c.Int32ul, "start_block" / c.Int32ul, "size" / c.Int32ul),
)
DIR_HEADER = Layout(
    "squashfs_dir_header",
    c.Struct("count" / c.Int32ul, "start_block" / c.Int32ul, "inode_number" / c.Int32ul),
)
#: Followed by ``size + 1`` bytes of name; ``inode_number`` is a signed delta in practice.
DIR_ENTRY = Layout(
    "squashfs_dir_entry",
    c.Struct(
        "offset" / c.Int16ul,
        "inode_number" / c.Int16sl,
        "type" / c.Int16ul,
        "size" / c.Int16ul,
    ),
)
FRAGMENT_ENTRY = Layout(
    "squashfs_fragment_entry",
    c.Struct("start_block" / c.Int64ul, "size" / c.Int32ul, "unused" / c.Int32ul),
)
#: Followed by ``size`` bytes of name (without its prefix).
XATTR_ENTRY = Layout("squashfs_xattr_entry", c.Struct("type" / c.Int16ul, "size" / c.Int16ul))
#: Followed by ``vsize`` bytes of value (an 8-byte reference for out-of-line values).
XATTR_VAL = Layout("squashfs_xattr_val", c.Struct("vsize" / c.Int32ul))
XATTR_ID = Layout(
    "squashfs_xattr_id",
    c.Struct("xattr" / c.Int64ul, "count" / c.Int32ul, "size" / c.Int32ul),
)
XATTR_ID_TABLE = Layout(
    "squashfs_xattr_id_table",
    c.Struct("xattr_table_start" / c.Int64ul, "xattr_ids" / c.Int32ul, "unused" / c.Int32ul),
)

# Compressor options (squashfs-tools' *_wrapper.h), stored in the metadata block after the
# superblock when SQUASHFS_COMP_OPT is set.
GZIP_COMP_OPTS = Layout(
    "gzip_comp_opts",
    c.Struct("compression_level" / c.Int32ul, "window_size" / c.Int16ul, "strategy" / c.Int16ul),
)
XZ_COMP_OPTS = Layout("xz_comp_opts", c.Struct("dictionary_size" / c.Int32ul, "flags" / c.Int32ul))
LZ4_COMP_OPTS = Layout("lz4_comp_opts", c.Struct("version" / c.Int32ul, "flags" / c.Int32ul))
ZSTD_COMP_OPTS = Layout("zstd_comp_opts", c.Struct("compression_level" / c.Int32ul))
LZO_COMP_OPTS = Layout(
    "lzo_comp_opts", c.Struct("algorithm" / c.Int32ul, "compression_level" / c.Int32ul)
)
LZ4_LEGACY = 1

#: Where each inode type's fixed part is declared.
INODE_LAYOUTS: dict[int, Layout] = {
    SQUASHFS_DIR_TYPE: DIR_INODE,
    SQUASHFS_REG_TYPE: REG_INODE,
    SQUASHFS_SYMLINK_TYPE: SYMLINK_INODE,
    SQUASHFS_BLKDEV_TYPE: DEV_INODE,
    SQUASHFS_CHRDEV_TYPE: DEV_INODE,
    SQUASHFS_FIFO_TYPE: IPC_INODE,
    SQUASHFS_SOCKET_TYPE: IPC_INODE,
    SQUASHFS_LDIR_TYPE: LDIR_INODE,
    SQUASHFS_LREG_TYPE: LREG_INODE,
    SQUASHFS_LSYMLINK_TYPE: SYMLINK_INODE,
    SQUASHFS_LBLKDEV_TYPE: LDEV_INODE,
    SQUASHFS_LCHRDEV_TYPE: LDEV_INODE,
    SQUASHFS_LFIFO_TYPE: LIPC_INODE,
    SQUASHFS_LSOCKET_TYPE: LIPC_INODE,
}
