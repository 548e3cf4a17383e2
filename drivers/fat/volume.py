"""FatVolume: the driver interface over the FAT parsers of this package.

Opening does what the kernel's ``fat_fill_super`` does: the boot sector (or, when it is
damaged, the FAT32 backup), the FSInfo sector, then the root directory (for FAT32, its
whole cluster chain).

FAT has no inodes.  An entry's inode number is the byte position of its short entry in
the image divided by 32 (the root is 1), so the number locates the entry again: the
entries a listing or lookup has shown are kept in a bounded map, and one that has left
it is read back from its position.  Directories are identified on disk by their first
cluster; their parsed listings are cached by it.  A directory learns its parent when a
listing or lookup shows it; a directory that shows up in two directories (a loop, or two
cross-linked directories), or that starts at its own parent's cluster, is corrupt: the
readdir or lookup that meets it fails there, so that no walk, even one that follows the
inode numbers of listings without lookups, can go round a loop.  "." and ".." are
handled here: ".." is the remembered parent or, once forgotten, found from the ".."
entries on disk as the kernel's ``fat_get_parent`` finds it.

Every public method converts stray decoding errors (struct.error, IndexError, ...) into
CorruptImage at this boundary, so nothing else escapes.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator, Mapping

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
from drivers.fat.bootsector import Geometry, looks_like_fat, read_boot_sector
from drivers.fat.directory import (
    Listing,
    RawEntry,
    Segment,
    chain_segments,
    check_listed_name,
    count_subdirectories,
    parse_directory,
    read_directory,
)
from drivers.fat.layout import (
    ATTR_ARCHIVE,
    ATTR_DIRECTORY,
    ATTR_HIDDEN,
    ATTR_LONG_NAME,
    ATTR_READ_ONLY,
    ATTR_SYSTEM,
    ATTR_VOLUME_ID,
    DIR_DELETED,
    DIR_ENTRY,
    DIR_ENTRY_SIZE,
    DIR_FREE_LAST,
    DOT_NAME,
    DOTDOT_NAME,
    MAX_DIR_BYTES,
    NO_NAME_LABEL,
)
from drivers.fat.names import ShortNameDecoder
from drivers.fat.options import ACCEPTED_OPTIONS, FatOptions, parse_options
from drivers.fat.table import ClusterChain, FatTable
from drivers.fat.times import fat_to_unix
from drivers.readahead import ReadAhead

__all__ = ["ROOT_INO", "FatVolume"]

ROOT_INO = 1  # the kernel's MSDOS_ROOT_INO
#: statfs f_namelen as the kernel reports it: FAT_LFN_LEN (255) * NLS_MAX_CHARSET_SIZE (6).
NAME_MAX = 255 * 6
EXEC_EXTENSIONS = (b"EXE", b"COM", b"BAT")  # showexec, as is_exec()
XATTR_ATTRIBUTES = b"user.fat.attributes"
XATTR_LABEL = b"user.fat.label"
XATTR_SERIAL = b"user.fat.serial"
#: DIR_Attr bits shown in user.fat.attributes, in this order.
ATTRIBUTE_NAMES = (
    (ATTR_READ_ONLY, "readonly"),
    (ATTR_HIDDEN, "hidden"),
    (ATTR_SYSTEM, "system"),
    (ATTR_ARCHIVE, "archive"),
)

# Cache budgets: the working set of requests in flight, not the whole volume.
#: Parsed directories (a walk's next few; the largest directory is kept apart).
LISTING_CACHE_BYTES = 1 << 20
ENTRY_CACHE_ENTRIES = 8192
ATTR_CACHE_ENTRIES = 4096
#: Cluster chains, in bytes as charged by :func:`_chain_cost`.
CHAIN_CACHE_BYTES = 1 << 20
#: What a cached chain costs beyond its runs: tracemalloc measured 462 bytes for a chain
#: of one run with its key and cache entry.
CHAIN_OVERHEAD_BYTES = 450
PARENT_CACHE_ENTRIES = 16384
SHAPE_CACHE_ENTRIES = 16384
FAT_CACHE_REGIONS = 32  # FAT32 regions of 64 KiB: 2 MiB of FAT


class FatVolume(Volume):
    """A FAT12, FAT16 or FAT32 volume with VFAT long names, read-only."""

    fs_type = "vfat"
    fs_aliases = frozenset({"fat", "msdos", "fat12", "fat16", "fat32"})
    accepted_options = ACCEPTED_OPTIONS

    def __init__(self, reader: BlockReader, geometry: Geometry, options: FatOptions) -> None:
        self.reader = reader
        self.geometry = geometry
        self.options = options
        self.table = FatTable(reader, geometry, FAT_CACHE_REGIONS)
        self.short_names = ShortNameDecoder(options.codec, options.shortname)
        self.root_ino = ROOT_INO
        self._fat32 = geometry.fat_bits == 32
        # The root's first cluster on FAT32; 0 (a subdirectory's ".." to the root) else.
        self._root_start = geometry.root_cluster if self._fat32 else 0
        self._listings: BoundedCache[int, Listing] = BoundedCache(LISTING_CACHE_BYTES)
        # The last listing too large for that budget (up to 65536 entries), kept apart:
        # a listing is read in readdir-sized steps, and parsing it again at each step
        # would make listing a large directory quadratic.
        self._large_listing: tuple[int, Listing] | None = None
        # Plain dicts emptied when full: a walk fills them at every entry, and an entry
        # that has left them is read back from its position.
        self._entries: dict[int, RawEntry] = {}
        self._attrs: dict[int, Attr] = {}
        self._chains: BoundedCache[tuple[int, int], ClusterChain] = BoundedCache(CHAIN_CACHE_BYTES)
        self._parents: BoundedCache[int, int] = BoundedCache(PARENT_CACHE_ENTRIES)
        self._shapes: BoundedCache[int, tuple[int, int]] = BoundedCache(SHAPE_CACHE_ENTRIES)
        self._free: int | None = None
        self._readahead = ReadAhead(reader)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def probe(cls, reader: BlockReader) -> bool:
        try:
            return looks_like_fat(reader)
        except Exception:
            return False

    @classmethod
    @guarded
    def open(cls, reader: BlockReader, options: Mapping[str, str]) -> FatVolume:
        volume = cls(reader, read_boot_sector(reader), parse_options(options))
        try:
            volume._root()
        except CorruptImage as exc:
            raise CorruptImage(f"unable to read the root directory: {exc}") from exc
        return volume

    # -- directories -----------------------------------------------------------------------

    def _start(self, rec: RawEntry) -> int:
        """An entry's first cluster (DIR_FstClusHI only counts on FAT32, as fat_get_start)."""
        return (rec[7] << 16 | rec[10]) if self._fat32 else rec[10]

    def _root(self) -> Listing:
        if self._fat32:
            return self._listing(self._root_start)
        listing = self._kept_listing(0)
        if listing is None:
            g = self.geometry
            segments = [Segment(0, g.root_offset, g.root_bytes)]
            data = read_directory(self.reader, segments) if g.root_bytes else b""
            listing = self._keep_listing(
                0, parse_directory(data, segments, self.short_names, g.root_bytes)
            )
        return listing

    def _listing(self, start: int) -> Listing:
        """The parsed directory whose chain starts at ``start``."""
        listing = self._kept_listing(start)
        if listing is not None:
            return listing
        data, segments = self._directory_bytes(start)
        return self._keep_listing(
            start, parse_directory(data, segments, self.short_names, len(data))
        )

    def _kept_listing(self, start: int) -> Listing | None:
        listing = self._listings.get(start)
        if listing is None and self._large_listing and self._large_listing[0] == start:
            return self._large_listing[1]
        return listing

    def _keep_listing(self, start: int, listing: Listing) -> Listing:
        if listing.cost > LISTING_CACHE_BYTES:
            self._large_listing = (start, listing)
            return listing
        return self._listings.put(start, listing, listing.cost)

    def _directory_bytes(self, start: int) -> tuple[bytes, list[Segment]]:
        """The bytes of the directory whose chain starts at ``start``, and where they lie."""
        g = self.geometry
        limit = min(MAX_DIR_BYTES >> g.cluster_bits, g.clusters) + 1
        chain = self.table.walk(start, limit)
        where = f"directory at cluster 0x{start:08x}"
        if chain.problem:
            raise CorruptImage(f"{where}: {chain.problem}")
        if not chain.ended:
            raise CorruptImage(f"{where}: longer than the 65536 entries a directory may hold")
        segments = chain_segments(chain, g)
        return read_directory(self.reader, segments), segments

    def _directory_shape(self, start: int) -> tuple[int, int]:
        """A subdirectory's size and subdirectory count, which its getattr shows.

        A listing shows every subdirectory of the one listed, so these are asked for
        long before (and often instead of) the subdirectory's own listing: they are
        counted from its bytes without decoding a name, and kept apart from listings.
        """
        listing = self._kept_listing(start)
        if listing is not None:
            return listing.size, listing.subdirs
        shape = self._shapes.get(start)
        if shape is None:
            data, _ = self._directory_bytes(start)
            shape = self._shapes.put(start, (len(data), count_subdirectories(data)))
        return shape

    def _dir_start(self, ino: int, rec: RawEntry) -> int:
        """A subdirectory's first cluster, checked as fat_validate_dir checks it."""
        start = self._start(rec)
        if start == 0 or start == self._root_start:
            raise CorruptImage(f"inode {ino}: corrupted directory (invalid i_start)")
        return start

    def _dir(self, ino: int) -> tuple[Listing, int]:
        """A directory inode's listing and first cluster (NotADirectoryError otherwise)."""
        if ino == ROOT_INO:
            return self._root(), self._root_start
        rec = self._entry(ino)
        if not rec[1] & ATTR_DIRECTORY:
            raise NotADirectoryError(f"inode {ino} is not a directory")
        start = self._dir_start(ino, rec)
        return self._listing(start), start

    def _adopt(self, dir_ino: int, dir_start: int, ino: int, rec: RawEntry) -> None:
        """Remember a subdirectory's parent; one with two parents, or its own, is a loop.

        A subdirectory at cluster 0 or at the root's cluster is left to getattr, which
        refuses it as fat_validate_dir does ("invalid i_start").
        """
        if self._start(rec) == dir_start and dir_start != self._root_start:
            raise CorruptImage(f"directory inode {ino} starts at its parent's cluster (a loop)")
        known = self._parents.get(ino)
        if known is not None and known != dir_ino:
            raise CorruptImage(
                f"directory inode {ino} is listed in directories {known} and {dir_ino}"
                " (a directory loop or cross-linked directories)"
            )
        if known is None:
            self._parents.put(ino, dir_ino)

    def _parent(self, ino: int, listing: Listing) -> int:
        """The inode of a directory's parent: remembered, or found through ".." entries."""
        if ino == ROOT_INO:
            return ROOT_INO
        parent = self._parents.get(ino)
        if parent is not None:
            return parent
        parent = self._find_parent(ino, listing)
        self._parents.put(ino, parent)
        return parent

    def _find_parent(self, ino: int, listing: Listing) -> int:
        """As fat_get_parent: the parent's cluster from "..", its entry in the grandparent."""
        if listing.dotdot is None:
            raise CorruptImage(f"directory inode {ino} has no '..' entry")
        parent_start = self._start(listing.dotdot)
        if parent_start in (0, self._root_start):
            return ROOT_INO
        parent = self._listing(parent_start)
        if parent.dotdot is None:
            raise CorruptImage(f"directory at cluster 0x{parent_start:08x} has no '..' entry")
        grand_start = self._start(parent.dotdot)
        grand = self._root() if grand_start in (0, self._root_start) else self._listing(grand_start)
        for index in range(len(grand.names)):
            rec = grand.entry(index)
            if rec[1] & ATTR_DIRECTORY and self._start(rec) == parent_start:
                return grand.positions[index] // DIR_ENTRY_SIZE
        raise CorruptImage(f"directory inode {ino}: its parent is not in its grandparent")

    # -- entries ---------------------------------------------------------------------------

    def _entry(self, ino: int) -> RawEntry:
        """The short entry of inode ``ino``: remembered, or read back from its position."""
        rec = self._entries.get(ino)
        if rec is None:
            rec = self._reread(ino)
            self._keep_entry(ino, rec)
        return rec

    def _keep_entry(self, ino: int, rec: RawEntry) -> None:
        if len(self._entries) >= ENTRY_CACHE_ENTRIES:
            self._entries.clear()
        self._entries[ino] = rec

    def _reread(self, ino: int) -> RawEntry:
        g = self.geometry
        position = ino * DIR_ENTRY_SIZE
        if ino < 2 or position < g.root_offset or position + DIR_ENTRY_SIZE > self.reader.size:
            raise CorruptImage(f"inode {ino} was never listed")
        rec: RawEntry = DIR_ENTRY.packer.unpack(self.reader.read(position, DIR_ENTRY_SIZE))
        name, attr = rec[0], rec[1]
        live = name[0] not in (DIR_FREE_LAST, DIR_DELETED) and name not in (DOT_NAME, DOTDOT_NAME)
        if not live or attr == ATTR_LONG_NAME or attr & ATTR_VOLUME_ID:
            raise CorruptImage(f"inode {ino}: no directory entry at byte {position}")
        return rec

    # -- attributes ------------------------------------------------------------------------

    def _blocks(self, size: int) -> int:
        """st_blocks as fat_fill_inode computes it: the size rounded up to clusters."""
        mask = self.geometry.cluster_size - 1
        return ((size + mask) & ~mask) >> 9

    def _mode(self, rec: RawEntry) -> int:
        """fat_make_mode: read-only drops write bits (on directories only with rodir)."""
        o = self.options
        attr = rec[1]
        if attr & ATTR_DIRECTORY:
            mode = 0o777 & ~(0o222 if attr & ATTR_READ_ONLY and o.rodir else 0)
            return stat.S_IFDIR | (mode & ~o.dmask)
        mode = 0o777
        if o.showexec and rec[0][8:11] not in EXEC_EXTENSIONS:
            mode = 0o666
        if attr & ATTR_READ_ONLY:
            mode &= ~0o222
        return stat.S_IFREG | (mode & ~o.fmask)

    def _make_attr(self, ino: int) -> Attr:
        o = self.options
        if ino == ROOT_INO:
            root = self._root()
            return Attr(
                ino=ROOT_INO,
                mode=stat.S_IFDIR | (0o777 & ~o.dmask),
                nlink=root.subdirs + 2,
                uid=o.uid,
                gid=o.gid,
                size=root.size,
                blocks=self._blocks(root.size),
            )
        rec = self._entry(ino)
        nlink, size = 1, rec[11]
        if rec[1] & ATTR_DIRECTORY:
            size, nlink = self._directory_shape(self._dir_start(ino, rec))
            if nlink < 2:
                raise CorruptImage(f"inode {ino}: corrupted directory (invalid entries)")
        mask = self.geometry.cluster_size - 1
        mtime = fat_to_unix(rec[8], rec[9], o.tz_offset) * 1_000_000_000
        atime = fat_to_unix(0, rec[6], o.tz_offset) * 1_000_000_000
        blocks = ((size + mask) & ~mask) >> 9
        return Attr(ino, self._mode(rec), nlink, o.uid, o.gid, size, 0, blocks, atime, mtime, mtime)

    # -- the interface ---------------------------------------------------------------------

    @guarded
    def getattr(self, ino: int) -> Attr:
        attr = self._attrs.get(ino)
        if attr is None:
            attr = self._make_attr(ino)
            if len(self._attrs) >= ATTR_CACHE_ENTRIES:
                self._attrs.clear()
            self._attrs[ino] = attr
        return attr

    @guarded
    def lookup(self, dir_ino: int, name: bytes) -> int:
        listing, start = self._dir(dir_ino)
        if name == b".":
            return dir_ino
        if name == b"..":
            return self._parent(dir_ino, listing)
        index = listing.find(name, self.short_names)
        if index is None:
            raise FileNotFoundError(name.decode(errors="replace"))
        return self._remember(dir_ino, start, listing, index)

    def _remember(self, dir_ino: int, dir_start: int, listing: Listing, index: int) -> int:
        ino = listing.positions[index] // DIR_ENTRY_SIZE
        rec = listing.entry(index)
        self._keep_entry(ino, rec)
        if rec[1] & ATTR_DIRECTORY:
            self._adopt(dir_ino, dir_start, ino, rec)
        return ino

    def readdir(self, dir_ino: int, offset: int = 0) -> Iterator[DirEntry]:
        try:
            listing, start = self._dir(dir_ino)
            for index in range(listing.start_index(offset), len(listing.names)):
                name = listing.names[index]
                check_listed_name(name, f"directory inode {dir_ino}")
                ino = self._remember(dir_ino, start, listing, index)
                yield DirEntry(name, ino, listing.next_offset(index))
        except DECODING_ERRORS as exc:
            raise CorruptImage(f"malformed directory ({type(exc).__name__}: {exc})") from exc

    @guarded
    def read(self, ino: int, offset: int, size: int) -> bytes:
        if ino == ROOT_INO:
            raise IsADirectoryError(f"inode {ino} is a directory")
        rec = self._entry(ino)
        if rec[1] & ATTR_DIRECTORY:
            raise IsADirectoryError(f"inode {ino} is a directory")
        file_size = rec[11]
        end = min(file_size, offset + size)
        if offset < 0 or offset >= end:
            return b""
        return self._read_clusters(ino, self._start(rec), file_size, offset, end)

    def _file_chain(self, start: int, file_size: int) -> ClusterChain:
        g = self.geometry
        needed = (file_size + g.cluster_size - 1) >> g.cluster_bits
        key = (start, needed)
        chain = self._chains.get(key)
        if chain is None:
            chain = self.table.walk(start, needed)
            self._chains.put(key, chain, _chain_cost(chain))
        return chain

    def _read_clusters(self, ino: int, start: int, file_size: int, offset: int, end: int) -> bytes:
        """Bytes ``offset .. end`` of a file, read ahead when it is read sequentially."""

        def extents(first: int, last: int) -> list[tuple[int, int]]:
            return self._extents(ino, start, file_size, first, last)

        return self._readahead.read(ino, offset, end, file_size, extents)

    def _extents(
        self, ino: int, start: int, file_size: int, offset: int, end: int
    ) -> list[tuple[int, int]]:
        """Where bytes ``offset .. end`` of a file are in the image: one (position,
        length) per run of consecutive clusters."""
        g = self.geometry
        bits = g.cluster_bits
        chain = self._file_chain(start, file_size)
        first, last = offset >> bits, (end - 1) >> bits
        if last >= chain.clusters:
            problem = chain.problem or "the cluster chain ends"
            raise CorruptImage(
                f"inode {ino}: {problem}: {chain.clusters} clusters for {file_size} bytes"
                f" (data from byte {chain.clusters << bits} on is lost)"
            )
        skip = offset - (first << bits)
        remaining = end - offset
        pieces = []
        for cluster, count in chain.extents(first, last - first + 1):
            length = min((count << bits) - skip, remaining)
            pieces.append((g.cluster_offset(cluster) + skip, length))
            remaining -= length
            skip = 0
        return pieces

    @guarded
    def readlink(self, ino: int) -> bytes:
        self.getattr(ino)
        raise CorruptImage(f"inode {ino} is not a symbolic link (FAT has none)")

    # -- xattrs, label, statfs -------------------------------------------------------------

    def _xattrs(self, ino: int) -> dict[bytes, bytes]:
        if ino == ROOT_INO:
            values = {}
            if self.label:
                values[XATTR_LABEL] = self.label.encode()
            serial = self.serial
            if serial:
                values[XATTR_SERIAL] = serial.encode()
            return values
        attr = self._entry(ino)[1]
        names = [name for bit, name in ATTRIBUTE_NAMES if attr & bit]
        return {XATTR_ATTRIBUTES: ",".join(names).encode()} if names else {}

    @guarded
    def listxattr(self, ino: int) -> list[bytes]:
        return list(self._xattrs(ino))

    @guarded
    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self._xattrs(ino).get(name)
        if value is None:
            raise NoSuchAttribute(name.decode(errors="replace"))
        return value

    @property
    def label(self) -> str:
        """The root directory's volume label entry, else BS_VolLab (unless "NO NAME")."""
        try:
            raw = self._root().label
        except (CorruptImage, *DECODING_ERRORS):
            raw = None
        if raw is None and self.geometry.bpb_label not in (None, NO_NAME_LABEL):
            raw = self.geometry.bpb_label
        if raw is None:
            return ""
        text = raw.decode(self.options.codec, errors="replace").replace("\ufffd", "?")
        return text.rstrip(" ").rstrip("\0")

    @property
    def serial(self) -> str:
        """BS_VolID as DOS and blkid show it ("1234-ABCD"), or "" when there is none."""
        volume_id = self.geometry.volume_id
        if volume_id is None:
            return ""
        return f"{volume_id >> 16:04X}-{volume_id & 0xFFFF:04X}"

    @property
    def block_size(self) -> int:
        return self.geometry.cluster_size

    @guarded
    def statfs(self) -> StatFs:
        """As fat_statfs: clusters, free ones counted in the FAT (or FSInfo's count with
        ``usefree``), no inode counts."""
        g = self.geometry
        if self._free is None:
            hint = g.fsinfo.free_count if g.fsinfo is not None else None
            if self.options.usefree and hint is not None and hint <= g.clusters:
                self._free = hint
            else:
                self._free = self.table.count_free()
        return StatFs(
            block_size=g.cluster_size,
            blocks=g.clusters,
            blocks_free=self._free,
            blocks_available=self._free,
            files=0,
            files_free=0,
            name_max=NAME_MAX,
        )


def _chain_cost(chain: ClusterChain) -> int:
    """Bytes a cached chain holds: two 4-byte numbers per run, and its objects.

    Charged per run alone, the cache's budget of 65,536 runs held 65,536 one-run chains of
    small files, about 30 MiB (a driver that had read the FAT32 benchmark's 20,000 small
    files held 33 MiB of its own).
    """
    return CHAIN_OVERHEAD_BYTES + 8 * chain.runs
