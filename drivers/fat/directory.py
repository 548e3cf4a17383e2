"""Directories: 32-byte entries, VFAT long names, and the listing a readdir shows.

A directory is a run of 32-byte entries: the FAT12/16 root in its fixed region after the
FATs, every other directory (and the FAT32 root) in a cluster chain.  Parsing follows the
kernel's ``fat_parse_long`` / ``__fat_readdir`` (fs/fat/dir.c), except that a first byte
0x00 ends the directory, as the specification says (the kernel skips such an entry and
reads on to the end of the chain):

* 0xE5 first byte: deleted, skipped; ``DIR_Attr`` with the volume bit and not a long name
  entry: the volume label, skipped (and remembered, for the root);
* long name entries (``DIR_Attr`` 0x0F): a sequence starts with ``LDIR_Ord | 0x40`` and
  1..20 slots, counts down to 1 with one checksum, and ends at the short entry whose
  name has that checksum.  An entry out of sequence starts over (a sequence is
  restarted only by an entry carrying the 0x40 flag, else it is skipped); a short entry
  whose checksum differs keeps its short name, as Linux does;
* "." and ".." are not listed (the FUSE layer adds its own) but are counted as
  subdirectories, as ``fat_subdirs`` counts them;
* names are UTF-8; a long name that is empty, "." or "..", or holds a "/" falls back to
  the short name.  A short name holding a "/" is listed as it is and readdir fails there
  (the kernel's getdents fails with EUCLEAN on such a name).

Each entry's inode number is the absolute byte position of its short entry divided by
32 (what the kernel calls ``i_pos``), so the number alone finds the entry again.  A
directory holds at most 65536 entries (2 MiB), the specification's limit; the walk of a
longer chain stops there with an error rather than read an arbitrary amount.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass

from drivers.base import BlockReader, CorruptImage
from drivers.fat.bootsector import Geometry
from drivers.fat.layout import (
    ATTR_DIRECTORY,
    ATTR_LONG_NAME,
    ATTR_VOLUME_ID,
    DIR_DELETED,
    DIR_ENTRY,
    DIR_ENTRY_SIZE,
    DIR_FREE_LAST,
    DOT_NAME,
    DOTDOT_NAME,
    LAST_LONG_ENTRY,
    MAX_LONG_SLOTS,
)
from drivers.fat.names import ShortNameDecoder, lfn_checksum, long_name
from drivers.fat.table import ClusterChain

__all__ = [
    "Listing",
    "RawEntry",
    "Segment",
    "chain_segments",
    "check_listed_name",
    "count_subdirectories",
    "parse_directory",
    "read_directory",
]

#: A short entry decoded with DIR_ENTRY.packer: (DIR_Name, DIR_Attr, DIR_NTRes,
#: DIR_CrtTimeTenth, DIR_CrtTime, DIR_CrtDate, DIR_LstAccDate, DIR_FstClusHI,
#: DIR_WrtTime, DIR_WrtDate, DIR_FstClusLO, DIR_FileSize).
RawEntry = tuple[bytes, int, int, int, int, int, int, int, int, int, int, int]

_UNPACK = DIR_ENTRY.packer.unpack_from
#: What one listed entry costs in memory besides its name and its 32 bytes: list and array
#: slots, and its share of the lookup index once built.
ENTRY_COST = 160


@dataclass(frozen=True, slots=True)
class Segment:
    """``length`` bytes of a directory from ``offset`` (in the directory) at byte ``disk``."""

    offset: int
    disk: int
    length: int


class Listing:
    """One parsed directory: its entries in order, and what getattr needs to know of it.

    Compact, because a directory can hold 65536 entries: the directory's bytes, and per
    listed entry its name, the offset of its short entry in those bytes and that entry's
    absolute position (whose 32 bytes decode to the entry on demand).
    """

    __slots__ = (
        "_index",
        "data",
        "dotdot",
        "label",
        "names",
        "offsets",
        "positions",
        "size",
        "subdirs",
    )

    def __init__(self, data: bytes, size: int) -> None:
        self.data = data
        self.size = size  # bytes the directory occupies (its clusters, or the root region)
        self.names: list[bytes] = []
        self.offsets = array("I")  # offset of each listed short entry in ``data``
        self.positions = array("Q")  # absolute byte position of each listed short entry
        self.subdirs = 0  # short entries with ATTR_DIRECTORY, "." and ".." included
        self.dotdot: RawEntry | None = None
        self.label: bytes | None = None  # DIR_Name of the first volume label entry
        self._index: dict[bytes, int] | None = None

    @property
    def cost(self) -> int:
        return len(self.data) + ENTRY_COST * (len(self.names) + 1) + sum(map(len, self.names))

    def entry(self, index: int) -> RawEntry:
        """The short entry of listed entry ``index``, decoded."""
        rec: RawEntry = _UNPACK(self.data, self.offsets[index])
        return rec

    def next_offset(self, index: int) -> int:
        """Where a readdir resumes after listed entry ``index``."""
        return self.offsets[index] + DIR_ENTRY_SIZE

    def start_index(self, offset: int) -> int:
        """The first entry a readdir from ``offset`` returns (the first ending after it)."""
        return bisect_right(self.offsets, offset - DIR_ENTRY_SIZE)

    def find(self, name: bytes, decoder: ShortNameDecoder) -> int | None:
        """The first entry whose long or short name is ``name`` (fat_search_long's order)."""
        if self._index is None:
            index: dict[bytes, int] = {}
            for i, shown in enumerate(self.names):
                rec = self.entry(i)
                index.setdefault(decoder(rec[0], rec[2]), i)
                index.setdefault(shown, i)
            self._index = index
        return self._index.get(name)


def read_directory(reader: BlockReader, segments: list[Segment]) -> bytes:
    """A directory's bytes, one pread per segment (a run of clusters, or the root region)."""
    parts = [reader.read(s.disk, s.length) for s in segments]
    return parts[0] if len(parts) == 1 else b"".join(parts)


def chain_segments(chain: ClusterChain, geometry: Geometry) -> list[Segment]:
    """Where each run of a directory's clusters is on disk."""
    bits = geometry.cluster_bits
    return [
        Segment(
            chain.starts[k] << bits,
            geometry.cluster_offset(chain.firsts[k]),
            chain.run_length(k) << bits,
        )
        for k in range(chain.runs)
    ]


def parse_directory(
    data: bytes, segments: list[Segment], decoder: ShortNameDecoder, size: int
) -> Listing:
    """Every entry of a directory whose bytes are ``data``, laid out as ``segments``.

    One pass with the long name state in locals (a directory walk parses every entry of
    the volume): ``expect`` is the sequence number wanted next (0: a sequence is complete
    and waits for its short entry; -1: none), ``seq`` where the sequence began.
    """
    listing = Listing(data, size)
    expect, checksum, seq = -1, 0, 0
    seg, seg_end, delta = -1, 0, 0
    for o in range(0, len(data) - DIR_ENTRY_SIZE + 1, DIR_ENTRY_SIZE):
        first = data[o]
        if first == DIR_FREE_LAST:
            break
        attr = data[o + 11]
        if first == DIR_DELETED:
            expect = -1
        elif attr == ATTR_LONG_NAME:
            slot = first & ~LAST_LONG_ENTRY
            if 0 < expect == slot and data[o + 13] == checksum:
                expect -= 1
            elif first & LAST_LONG_ENTRY and 0 < slot <= MAX_LONG_SLOTS:
                expect, checksum, seq = slot - 1, data[o + 13], o
            else:
                expect = -1
        elif attr & ATTR_VOLUME_ID:
            expect = -1
            if listing.label is None:
                listing.label = data[o : o + 11]
        else:
            long = _long_name(data, seq, o, checksum) if expect == 0 else None
            expect = -1
            while o >= seg_end:
                seg += 1
                seg_end = segments[seg].offset + segments[seg].length
                delta = segments[seg].disk - segments[seg].offset
            _short_entry(listing, _UNPACK(data, o), long, decoder, o + delta, o)
    return listing


def count_subdirectories(data: bytes) -> int:
    """``Listing.subdirs`` of the directory in ``data``, without parsing it (fat_subdirs).

    Counts what :func:`parse_directory` counts: live short entries with ATTR_DIRECTORY
    before the end marker, "." and ".." included, long name and volume label entries not.
    """
    size = len(data) - len(data) % DIR_ENTRY_SIZE
    firsts = data[0:size:DIR_ENTRY_SIZE]
    end = firsts.find(DIR_FREE_LAST)
    if end >= 0:
        size = end * DIR_ENTRY_SIZE
    attrs = data[11:size:DIR_ENTRY_SIZE]
    return sum(
        1
        for first, attr in zip(firsts, attrs, strict=False)
        if attr & _DIRECTORY_NOT_LABEL == ATTR_DIRECTORY and first != DIR_DELETED
    )


#: The DIR_Attr bits of a counted subdirectory: the directory bit without the volume bit
#: (which long name entries carry too).
_DIRECTORY_NOT_LABEL = ATTR_DIRECTORY | ATTR_VOLUME_ID


def _long_name(data: bytes, seq: int, o: int, checksum: int) -> bytes | None:
    """The long name in entries ``seq .. o - 32`` for the short entry at ``o``, in UTF-8.

    None when the checksum is not the short name's (an orphaned long name) or the name
    cannot be used (empty, "." or "..", or holding a "/").
    """
    if lfn_checksum(data[o : o + 11]) != checksum:
        return None
    parts: list[bytes] = []
    for p in range(o - DIR_ENTRY_SIZE, seq - 1, -DIR_ENTRY_SIZE):
        parts += (data[p + 1 : p + 11], data[p + 14 : p + 26], data[p + 28 : p + 32])
    text = long_name(b"".join(parts))
    if not text or text in (".", "..") or "/" in text:
        return None
    return text.encode("utf-8")


#: First bytes of short names that may be blank (skipped) or "." / "..".
_BLANK_OR_DOT = frozenset(b" .")


def _short_entry(
    listing: Listing,
    rec: RawEntry,
    long: bytes | None,
    decoder: ShortNameDecoder,
    position: int,
    offset: int,
) -> None:
    """A live short entry: count it, and list it unless it is "." or ".." or blank."""
    raw_name = rec[0]
    if rec[1] & ATTR_DIRECTORY:
        listing.subdirs += 1
    if raw_name[0] in _BLANK_OR_DOT:
        if raw_name == DOTDOT_NAME and listing.dotdot is None:
            listing.dotdot = rec
        if raw_name in (DOT_NAME, DOTDOT_NAME) or not decoder(raw_name, rec[2]):
            return
    listing.names.append(long or decoder(raw_name, rec[2]))
    listing.offsets.append(offset)
    listing.positions.append(position)


def check_listed_name(name: bytes, where: str) -> None:
    """The VFS refuses names with "/" in getdents (EUCLEAN): so does readdir here."""
    if b"/" in name:
        raise CorruptImage(f"{where}: invalid entry name {name!r}")
