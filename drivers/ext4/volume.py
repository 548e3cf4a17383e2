"""Ext4Volume: the driver interface over the ext2/3/4 parsers of this package.

Opening reads and checks the superblock and every group descriptor, then reads the root
inode, as the kernel's mount does.  After that, each request touches only what it needs:
one inode (cached), the blocks of one directory (cached), the mapping of one file.  Any
malformed value met on the way is a :class:`CorruptImage` for that request only; every
public method converts stray decoding errors (struct.error, IndexError, ...) into
CorruptImage at this boundary, so nothing else escapes.
"""

from __future__ import annotations

import stat
from array import array
from collections.abc import Callable, Iterator, Mapping

from drivers.base import (
    DECODING_ERRORS,
    Attr,
    BlockReader,
    BoundedCache,
    CorruptImage,
    DirEntry,
    NoSuchAttribute,
    StatFs,
    Volume,
    guarded,
)
from drivers.ext4.acl import disk_acl_to_xattr
from drivers.ext4.block_validity import BlockValidity
from drivers.ext4.blockmap import BlockMap, check_i_block
from drivers.ext4.checksum import ext4_chksum
from drivers.ext4.device import BlockDevice
from drivers.ext4.directory import EXT4_NAME_LEN, DirBlock, Directory, search_block
from drivers.ext4.extents import ExtentNode, ExtentTree, root_node
from drivers.ext4.group import GroupTable
from drivers.ext4.inline import (
    find_system_data,
    inline_data,
    inline_dir_block,
    inline_dir_entries,
    inline_parent,
)
from drivers.ext4.inode import (
    EXT4_EA_INODE_FL,
    EXT4_EXTENTS_FL,
    EXT4_INLINE_DATA_FL,
    INODE,
    Inode,
    decode_rdev,
    is_fast_symlink,
    parse_inode,
)
from drivers.ext4.superblock import (
    COMPAT_HAS_JOURNAL,
    INCOMPAT_EXTENTS,
    MAGIC_OFFSET,
    RO_COMPAT_BIGALLOC,
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
    Superblock,
    parse_superblock,
)
from drivers.ext4.xattr import (
    INDEX_POSIX_ACL_ACCESS,
    INDEX_POSIX_ACL_DEFAULT,
    Xattr,
    ibody_xattrs,
    inode_xattrs,
    split_name,
    xattr_entry_hash,
    xattr_name,
)
from drivers.readahead import ZEROS, ReadAhead, read_extents

__all__ = ["Ext4Volume"]

EXT4_ROOT_INO = 2
HOLE = -1
# Cache budgets. Under FUSE the kernel keeps attributes and directory entries for the
# life of the mount, so these caches only need to hold the working set of requests in
# flight (a readdirplus batch, an open file's mapping), not the whole volume: they
# are what keeps a driver's memory flat on a volume of any size.
INODE_CACHE_BYTES = 2 << 20
#: What a cached inode costs beyond its on-disk bytes: the decoded fields, its times, its
#: extent root, its Attr and the cache's own entry. Measured with tracemalloc over 2,000
#: inodes of the benchmark's ext4 image: 1,390 bytes each (the block cache aside), of
#: which 256 are the on-disk copy. It was 550, which let the budget hold twice its size.
INODE_OVERHEAD_BYTES = 1150
DIR_CACHE_BYTES = 2 << 20
EXTENT_CACHE_BYTES = 2 << 20
INDIRECT_CACHE_BYTES = 2 << 20
MAPPER_CACHE_ENTRIES = 1024
_S_IFMT = 0o170000
_DEVICE_TYPES = frozenset({stat.S_IFCHR, stat.S_IFBLK})
#: Inode table blocks read at once on a miss, as the kernel's default inode_readahead_blks.
INODE_READAHEAD_BLOCKS = 32


Mapper = Callable[[int], tuple[int, int, bool]]


def _attr_of(inode: Inode) -> Attr:
    """What stat(2) shows for a checked inode, as the kernel's ext4_getattr fills it."""
    mode = inode.mode
    file_type = mode & _S_IFMT
    blocks = inode.blocks
    if inode.inline and file_type == stat.S_IFREG:
        blocks += (inode.size + 511) >> 9  # as ext4_file_getattr reports inline files
    rdev = decode_rdev(inode.i_block) if file_type in _DEVICE_TYPES else 0
    # Positional, in Attr's field order: this runs once per entry of every listing.
    return Attr(
        inode.ino,
        mode,
        inode.nlink,
        inode.uid,
        inode.gid,
        inode.size,
        rdev,
        blocks,
        inode.atime_ns,
        inode.mtime_ns,
        inode.ctime_ns,
    )


class Ext4Volume(Volume):
    """A read-only ext2/ext3/ext4 volume."""

    fs_type = "ext4"
    fs_aliases = frozenset({"ext2", "ext3"})
    accepted_options = frozenset({"noload"})

    def __init__(self, reader: BlockReader, sb: Superblock) -> None:
        self.root_ino = EXT4_ROOT_INO
        self.reader = reader
        self.sb = sb
        self.dev = BlockDevice(reader, sb)
        self._readahead = ReadAhead(reader)
        self.groups = GroupTable(sb, self.dev)
        self.validity = BlockValidity(sb, self.groups)
        self._inodes: BoundedCache[int, Inode] = BoundedCache(INODE_CACHE_BYTES)
        self._dir_blocks: BoundedCache[tuple[int, int], DirBlock] = BoundedCache(DIR_CACHE_BYTES)
        self._extent_nodes: BoundedCache[tuple[int, int, int], ExtentNode] = BoundedCache(
            EXTENT_CACHE_BYTES
        )
        self._indirect: BoundedCache[tuple[int, int], array[int]] = BoundedCache(
            INDIRECT_CACHE_BYTES
        )
        self._mappers: BoundedCache[int, Mapper] = BoundedCache(MAPPER_CACHE_ENTRIES)
        self._statfs: StatFs | None = None

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def probe(cls, reader: BlockReader) -> bool:
        try:
            return reader.read_upto(MAGIC_OFFSET, 2) == b"\x53\xef"
        except Exception:
            return False

    @classmethod
    @guarded
    def open(cls, reader: BlockReader, options: Mapping[str, str]) -> Ext4Volume:
        raw = reader.read_upto(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE)
        sb = parse_superblock(raw, reader.size, options)
        volume = cls(reader, sb)
        volume._protect_journal()
        try:
            root = volume._inode(EXT4_ROOT_INO)
        except CorruptImage as exc:
            raise CorruptImage(f"get root inode failed: {exc}") from exc
        if not root.is_dir or not root.blocks or not root.size:
            raise CorruptImage("corrupt root inode, run e2fsck")
        return volume

    @property
    def label(self) -> str:
        return self.sb.label

    def _protect_journal(self) -> None:
        """Add the journal inode's blocks to the system zone, as the kernel does at mount."""
        sb = self.sb
        j_inum: int = sb.raw["s_journal_inum"]  # type: ignore[assignment]
        if not sb.has_compat(COMPAT_HAS_JOURNAL) or not j_inum:
            return

        def runs() -> list[tuple[int, int]]:
            journal = self._load(j_inum)
            nblocks = (journal.size + sb.block_size - 1) >> sb.block_bits
            if journal.inline or nblocks == 0:
                return []
            mapper = self._mapper(journal)
            out: list[tuple[int, int]] = []
            lblk = 0
            while lblk < nblocks:
                pblk, run, _ = mapper(lblk)
                run = min(run, nblocks - lblk)
                if pblk != HOLE:
                    if out and out[-1][0] + out[-1][1] == pblk:
                        out[-1] = (out[-1][0], out[-1][1] + run)
                    else:
                        out.append((pblk, run))
                lblk += run
            return out

        self.validity.protect_inode(j_inum, runs)

    # -- inodes ------------------------------------------------------------------------------

    def _valid_inum(self, ino: int) -> bool:
        return ino == EXT4_ROOT_INO or self.sb.first_ino <= ino <= self.sb.inodes_count

    def _load(self, ino: int) -> Inode:
        """Read, decode and check inode ``ino`` (any number in 1..s_inodes_count)."""
        inode = self._inodes.get(ino)
        if inode is not None:
            return inode
        sb = self.sb
        if not 1 <= ino <= sb.inodes_count:
            raise CorruptImage(f"inode number {ino} out of range 1..{sb.inodes_count}")
        group, index = divmod(ino - 1, sb.inodes_per_group)
        byte = index * sb.inode_size
        table = self.groups.inode_table[group]
        block = table + (byte >> sb.block_bits)
        ahead = min(INODE_READAHEAD_BLOCKS, table + sb.inode_table_blocks - block)
        data = self.dev.meta_block(block, "inode table block", ahead)
        start = byte & (sb.block_size - 1)
        inode = parse_inode(sb, ino, data[start : start + sb.inode_size])
        # In-inode xattrs are checked at iget, and tell whether the inode is inline.
        system_data = find_system_data(ino, ibody_xattrs(sb, inode))
        if system_data is not None and inode.flags & EXT4_INLINE_DATA_FL:
            inode.inline = True
            inode.inline_tail = system_data
        if inode.flags & EXT4_INLINE_DATA_FL and inode.flags & EXT4_EXTENTS_FL:
            raise CorruptImage(f"inode {ino} has both inline data and extents flags")
        if inode.file_acl and not self.validity.valid(inode.file_acl, 1, ino):
            raise CorruptImage(f"inode {ino}: bad extended attribute block {inode.file_acl}")
        self._check_blocks(inode)
        inode.attr = _attr_of(inode)
        self._inodes.put(ino, inode, sb.inode_size + INODE_OVERHEAD_BYTES)
        return inode

    def _check_blocks(self, inode: Inode) -> None:
        """The block-reference and symlink checks of the kernel's iget."""
        sb = self.sb
        if inode.inline:
            return
        if inode.is_symlink and is_fast_symlink(sb, inode):
            target = inode.i_block[: inode.size + 1]
            if not 0 < inode.size < len(inode.i_block) or len(target.split(b"\0", 1)[0]) != (
                inode.size
            ):
                raise CorruptImage(f"inode {inode.ino}: invalid fast symlink length {inode.size}")
            return
        if inode.is_reg or inode.is_dir or inode.is_symlink:
            if inode.flags & EXT4_EXTENTS_FL:
                inode.extent_root = root_node(self.validity, inode.ino, inode.i_block)
            else:
                check_i_block(self.validity, inode.ino, inode.i_block)

    def _inode(self, ino: int) -> Inode:
        """An inode reached through a directory or the FUSE layer (not an internal one)."""
        if not self._valid_inum(ino):
            raise CorruptImage(f"bad inode number: {ino}")
        inode = self._load(ino)
        if inode.flags & EXT4_EA_INODE_FL:
            raise CorruptImage(f"inode {ino}: unexpected EA_INODE flag")
        return inode

    def _mapper(self, inode: Inode) -> Mapper:
        mapper = self._mappers.get(inode.ino)
        if mapper is None:
            if inode.flags & EXT4_EXTENTS_FL:
                tree = ExtentTree(
                    self.sb,
                    self.validity,
                    self.dev,
                    self._extent_nodes,
                    inode.ino,
                    inode.i_block,
                    inode.csum_seed,
                    inode.extent_root,
                )
                mapper = tree.lookup
            else:
                blockmap = BlockMap(
                    self.sb, self.validity, self.dev, self._indirect, inode.ino, inode.i_block
                )
                mapper = blockmap.lookup
            self._mappers.put(inode.ino, mapper)
        return mapper

    def _read_data(self, inode: Inode, offset: int, size: int) -> bytes:
        """Bytes ``offset .. offset+size`` of a block-mapped inode (holes as zeros)."""
        if size <= 0:
            return b""
        return read_extents(self.reader.read, self._extents(inode, offset, offset + size))

    def _extents(self, inode: Inode, offset: int, end: int) -> list[tuple[int, int]]:
        """Where bytes ``offset .. end`` of a block-mapped inode are in the image: one
        (position, length) per run of blocks, :data:`ZEROS` for holes and unwritten runs."""
        bits = self.sb.block_bits
        first, last = offset >> bits, (end - 1) >> bits
        mapper = self._mapper(inode)
        skip, remaining = offset - (first << bits), end - offset
        pieces = []
        lblk = first
        while lblk <= last:
            pblk, run, unwritten = mapper(lblk)
            run = min(run, last - lblk + 1)
            if run < 1:
                raise CorruptImage(f"inode {inode.ino}: empty mapping at block {lblk}")
            length = min((run << bits) - skip, remaining)
            if pblk == HOLE or unwritten:
                pieces.append((ZEROS, length))
            else:
                self.dev.check(pblk, run, "data block")
                pieces.append(((pblk << bits) + skip, length))
            remaining -= length
            skip = 0
            lblk += run
        return pieces

    # -- the interface -----------------------------------------------------------------------

    @guarded
    def getattr(self, ino: int) -> Attr:
        attr = self._inode(ino).attr
        assert attr is not None  # set by _load
        return attr

    def _dir(self, ino: int) -> Inode:
        inode = self._inode(ino)
        if not inode.is_dir:
            raise NotADirectoryError(f"inode {ino} is not a directory")
        return inode

    @guarded
    def lookup(self, dir_ino: int, name: bytes) -> int:
        inode = self._dir(dir_ino)
        if not name or len(name) > EXT4_NAME_LEN or b"/" in name:
            raise FileNotFoundError(name.decode(errors="replace"))
        if name == b".":
            return dir_ino
        found: int | None = None
        if inode.inline:
            if name == b"..":
                found = inline_parent(inode)
                if not found or found > self.sb.inodes_count:
                    raise CorruptImage(f"inline directory inode {dir_ino}: bad parent {found}")
            else:
                found = search_block(inline_dir_block(self.sb, inode), name)
        else:
            found = self._directory(inode).lookup(name)
        if found is None:
            raise FileNotFoundError(name.decode(errors="replace"))
        if not self._valid_inum(found):
            raise CorruptImage(f"directory inode {dir_ino}: bad inode number {found}")
        return found

    def _directory(self, inode: Inode) -> Directory:
        return Directory(self.sb, self.dev, self._dir_blocks, inode, self._mapper(inode))

    def readdir(self, dir_ino: int, offset: int = 0) -> Iterator[DirEntry]:
        try:
            inode = self._dir(dir_ino)
            if inode.inline:
                entries: Iterator[tuple[int, bytes, int]] = iter(
                    inline_dir_entries(self.sb, inode, offset)
                )
            else:
                entries = self._directory(inode).entries(offset)
            for pos, name, ino in entries:
                if name in (b".", b".."):
                    continue
                if not name or b"/" in name:
                    # the kernel's VFS fails getdents with EIO on such a name
                    raise CorruptImage(f"directory inode {dir_ino}: invalid entry name {name!r}")
                # Positions are distinct and increasing: resuming at pos + 1 starts
                # exactly after this entry.
                yield DirEntry(name, ino, pos + 1)
        except DECODING_ERRORS as exc:
            raise CorruptImage(f"malformed directory ({type(exc).__name__}: {exc})") from exc

    @guarded
    def read(self, ino: int, offset: int, size: int) -> bytes:
        inode = self._inode(ino)
        if inode.is_dir:
            raise IsADirectoryError(f"inode {ino} is a directory")
        if not inode.is_reg:
            raise CorruptImage(f"inode {ino} is not a regular file")
        if offset < 0 or size <= 0 or offset >= inode.size:
            return b""
        size = min(size, inode.size - offset)
        if inode.inline:
            data = inline_data(inode)[offset : offset + size]
            return data + bytes(size - len(data))

        def extents(start: int, end: int) -> list[tuple[int, int]]:
            return self._extents(inode, start, end)

        return self._readahead.read(ino, offset, offset + size, inode.size, extents)

    @guarded
    def readlink(self, ino: int) -> bytes:
        inode = self._inode(ino)
        if not inode.is_symlink:
            raise CorruptImage(f"inode {ino} is not a symbolic link")
        if inode.inline:
            target = inline_data(inode)[: inode.size]
        elif is_fast_symlink(self.sb, inode):
            target = inode.i_block[: inode.size]
        else:
            pblk = self._mapper(inode)(0)[0]
            if pblk == HOLE:
                raise CorruptImage(f"inode {ino}: bad symlink (no data block)")
            block = self.dev.read_blocks(pblk, 1)
            target = block[: min(inode.size, self.sb.block_size - 1)]
        return target.split(b"\0", 1)[0]

    @guarded
    def listxattr(self, ino: int) -> list[bytes]:
        inode = self._inode(ino)
        names = []
        for entry in inode_xattrs(self.sb, self.dev, inode):
            name = xattr_name(entry)
            if name is not None:
                names.append(name)
        return names

    @guarded
    def getxattr(self, ino: int, name: bytes) -> bytes:
        inode = self._inode(ino)
        key = split_name(name)
        if key is None:
            raise NoSuchAttribute(name.decode(errors="replace"))
        for entry in inode_xattrs(self.sb, self.dev, inode):
            if (entry.index, entry.name) != key:
                continue
            value = entry.value
            if value is None:
                value = self._ea_inode_value(inode, entry)
            if entry.index in (INDEX_POSIX_ACL_ACCESS, INDEX_POSIX_ACL_DEFAULT):
                acl = disk_acl_to_xattr(value, f"inode {ino} {name.decode(errors='replace')}")
                if acl is None:
                    break
                return acl
            return value
        raise NoSuchAttribute(name.decode(errors="replace"))

    def _ea_inode_value(self, parent: Inode, entry: Xattr) -> bytes:
        """A value stored in an EA inode, checked as ext4_xattr_inode_get does."""
        ea = self._load(entry.value_inum)
        where = f"inode {parent.ino} EA inode {entry.value_inum}"
        if not ea.flags & EXT4_EA_INODE_FL:
            raise CorruptImage(f"{where} does not have EXT4_EA_INODE_FL")
        if ea.size != entry.value_size:
            raise CorruptImage(f"{where}: size {ea.size} != entry size {entry.value_size}")
        value = inline_data(ea)[: ea.size] if ea.inline else self._read_data(ea, 0, ea.size)
        fields = INODE.unpack(ea.raw[: INODE.size].ljust(INODE.size, b"\0"))
        lustre = fields["i_mtime"] == parent.ino and ea.generation == parent.generation
        if not lustre:
            value_hash = ext4_chksum(self.sb.csum_seed, value)
            if value_hash != fields["i_atime"]:
                raise CorruptImage(f"{where}: EA inode hash validation failed")
            if entry.hash not in (
                xattr_entry_hash(entry.name, (value_hash,)),
                xattr_entry_hash(entry.name, (value_hash,), signed=True),
            ):
                raise CorruptImage(f"{where}: xattr entry hash validation failed")
        return value

    @guarded
    def statfs(self) -> StatFs:
        if self._statfs is None:
            self._statfs = self._compute_statfs()
        return self._statfs

    def _compute_statfs(self) -> StatFs:
        """As the kernel's ext4_statfs: blocks net of metadata overhead, 2% reserve."""
        sb = self.sb
        ratio = sb.cluster_ratio
        overhead = 0
        if sb.has_ro_compat(RO_COMPAT_BIGALLOC):
            stored: int = sb.raw["s_overhead_clusters"]  # type: ignore[assignment]
            if stored <= sb.blocks_count:
                overhead = stored
        if overhead == 0:
            overhead = self.groups.overhead_clusters() + self._journal_clusters()
        free = self.groups.free_blocks * ratio
        reserve = 0
        if sb.has_incompat(INCOMPAT_EXTENTS):
            reserve = min((sb.blocks_count // ratio) // 50, 4096) * ratio
        avail = max(0, free - (sb.r_blocks_count + reserve))
        return StatFs(
            block_size=sb.block_size,
            blocks=max(0, sb.blocks_count - overhead * ratio),
            blocks_free=free,
            blocks_available=avail,
            files=sb.inodes_count,
            files_free=self.groups.free_inodes,
            name_max=EXT4_NAME_LEN,
        )

    def _journal_clusters(self) -> int:
        sb = self.sb
        j_inum: int = sb.raw["s_journal_inum"]  # type: ignore[assignment]
        if not sb.has_compat(COMPAT_HAS_JOURNAL) or not j_inum:
            return 0
        try:
            journal = self._load(j_inum)
        except CorruptImage:
            return 0  # the kernel logs "can't get journal size" and counts nothing
        blocks = journal.size >> sb.block_bits
        return (blocks + sb.cluster_ratio - 1) // sb.cluster_ratio
