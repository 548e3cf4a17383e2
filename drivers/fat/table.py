"""The File Allocation Table: bulk decoding, cluster chains as runs, free-cluster counting.

The first FAT is the one read, as the kernel reads it (``BPB_ExtFlags`` is ignored, as
fatent.c ignores it).  It is decoded whole sectors at a time into ``array`` objects:
FAT12's packed 12-bit entries (at most 4086 of them) and FAT16 (at most 128 KiB) whole,
on first use; FAT32, which can be a gigabyte, in regions of 16384 entries (64 KiB) loaded
when a chain first reaches them and kept in a bounded cache, with the 4 reserved top
bits of every entry cleared while decoding.

A chain is walked as fatent.c and cache.c walk it: from a start cluster in
``2 .. max_cluster - 1``; an entry at or above the bad-cluster mark (0xFF7, 0xFFF7,
0x0FFFFFF7) ends it, the bad-cluster mark included; a free entry (0), the reserved
value 1 or a number past the last cluster is corrupt.  A walk never goes further than
the clusters its caller needs, which is never more than the volume has; a chain that
visits a cluster twice is a loop (found with Brent's method on the chain's jumps while
walking, and exactly, by the runs overlapping, at the end) and ends just before the
first cluster it repeats.  The result is an array of runs of consecutive clusters, so
mapping a file offset to a disk position is a binary search, and a read of a run is one
``pread``.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_right

from drivers.base import BlockReader, BoundedCache, CorruptImage
from drivers.fat.bootsector import Geometry
from drivers.fat.layout import FAT_START_ENT

__all__ = ["ClusterChain", "FatTable"]

#: FAT32 entries per cached region: 64 KiB of FAT, 1 GiB of data at 64 KiB clusters.
REGION_SHIFT = 14
#: Clears the reserved top nibble of the most significant byte of each FAT32 entry.
_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))


class ClusterChain:
    """The clusters of one chain, as runs: run ``k`` maps chain clusters
    ``starts[k] .. starts[k + 1] - 1`` to disk clusters from ``firsts[k]`` on.

    ``clusters`` is how many clusters are mapped; ``ended`` whether the walk met an
    end-of-chain mark; ``problem`` says why the chain stops early when it is corrupt.
    """

    __slots__ = ("clusters", "ended", "firsts", "problem", "starts")

    def __init__(
        self, firsts: array[int], starts: array[int], clusters: int, ended: bool, problem: str
    ) -> None:
        self.firsts = firsts
        self.starts = starts
        self.clusters = clusters
        self.ended = ended
        self.problem = problem

    @classmethod
    def broken(cls, problem: str) -> ClusterChain:
        return cls(array("I"), array("I"), 0, False, problem)

    @property
    def runs(self) -> int:
        return len(self.firsts)

    def run_length(self, k: int) -> int:
        end = self.starts[k + 1] if k + 1 < len(self.starts) else self.clusters
        return end - self.starts[k]

    def extents(self, first: int, count: int) -> list[tuple[int, int]]:
        """(disk cluster, clusters) pieces of chain clusters ``first .. first + count - 1``.

        The caller checks that they are mapped (``first + count <= clusters``).
        """
        k = bisect_right(self.starts, first) - 1
        out: list[tuple[int, int]] = []
        while count > 0:
            skip = first - self.starts[k]
            n = min(self.run_length(k) - skip, count)
            out.append((self.firsts[k] + skip, n))
            first += n
            count -= n
            k += 1
        return out

    def disk_clusters(self) -> list[int]:
        """Every cluster in chain order (for tests and small chains)."""
        return [
            self.firsts[k] + i for k in range(len(self.firsts)) for i in range(self.run_length(k))
        ]


class FatTable:
    """The first FAT of a volume, decoded lazily and walked into :class:`ClusterChain`."""

    __slots__ = ("_regions", "_shift", "geometry", "max_cluster", "reader")

    def __init__(self, reader: BlockReader, geometry: Geometry, cache_regions: int) -> None:
        self.reader = reader
        self.geometry = geometry
        self.max_cluster = geometry.max_cluster
        # FAT12/16 are one region (at most 128 KiB); FAT32 is cut into regions.
        self._shift = REGION_SHIFT if geometry.fat_bits == 32 else 32
        self._regions: BoundedCache[int, array[int]] = BoundedCache(max(cache_regions, 1))

    # -- decoding --------------------------------------------------------------------------

    def _decode(self, index: int) -> array[int]:
        """Entries ``index << shift ..`` up to the region's end or ``max_cluster``."""
        first = index << self._shift
        count = min(self.max_cluster - first, 1 << self._shift)
        g = self.geometry
        if g.fat_bits == 12:
            raw = self.reader.read(g.fat_offset, (count * 3 + 1) // 2)
            return _decode_fat12(raw, count)
        width = g.fat_bits // 8
        raw = self.reader.read(g.fat_offset + first * width, count * width)
        if width == 4:
            masked = bytearray(raw)
            masked[3::4] = masked[3::4].translate(_LOW_NIBBLE)
            raw = bytes(masked)
        table = array("I" if width == 4 else "H")
        table.frombytes(raw)
        if sys.byteorder == "big":
            table.byteswap()
        return table

    def _region(self, index: int) -> array[int]:
        table = self._regions.get(index)
        if table is None:
            table = self._regions.put(index, self._decode(index))
        return table

    def entry(self, cluster: int) -> int:
        """FAT[cluster] (for clusters 0 .. max_cluster - 1), reserved bits cleared."""
        if not 0 <= cluster < self.max_cluster:
            raise CorruptImage(f"invalid access to FAT (entry 0x{cluster:08x})")
        return self._region(cluster >> self._shift)[cluster & ((1 << self._shift) - 1)]

    # -- chains ----------------------------------------------------------------------------

    def walk(self, start: int, limit: int) -> ClusterChain:
        """The chain from ``start``, at most ``limit`` clusters long (limit >= 1)."""
        max_c = self.max_cluster
        if not FAT_START_ENT <= start < max_c:
            return ClusterChain.broken(f"invalid start cluster 0x{start:08x}")
        limit = min(limit, max_c - FAT_START_ENT + 1)  # more clusters than exist: a loop
        bad = self.geometry.bad_marker
        shift = self._shift
        firsts = array("I", [start])
        starts = array("I", [0])
        cur, count, ended, problem = start, 1, False, ""
        base = (cur >> shift) << shift
        table = self._region(cur >> shift)
        size = len(table)
        saved, power, jumps = start, 1, 0  # Brent's cycle detection over the jumps
        while count < limit:
            i = cur - base
            if not 0 <= i < size:
                base = (cur >> shift) << shift
                table = self._region(cur >> shift)
                size = len(table)
                i = cur - base
            nxt = table[i]
            if nxt == cur + 1 and nxt < max_c:
                cur = nxt
                count += 1
                continue
            if nxt >= bad:
                ended = True
                break
            if nxt < FAT_START_ENT or nxt >= max_c:
                what = "a free cluster" if nxt == 0 else f"invalid cluster 0x{nxt:08x}"
                problem = f"cluster chain leads to {what} after cluster 0x{cur:08x}"
                break
            looped = nxt == saved  # a cluster visited twice: cut exactly below
            jumps += 1
            if jumps == power:
                saved, power, jumps = nxt, power << 1, 0
            firsts.append(nxt)
            starts.append(count)
            cur = nxt
            count += 1
            if looped:
                break
        chain = ClusterChain(firsts, starts, count, ended, problem)
        if len(firsts) > 1 and _overlapping(chain):
            _cut_at_repeat(chain, max_c)
        return chain

    # -- statfs ----------------------------------------------------------------------------

    def count_free(self) -> int:
        """Free entries among clusters 2 .. max_cluster - 1 (fat_count_free_clusters)."""
        free = 0
        regions = ((self.max_cluster - 1) >> self._shift) + 1
        for index in range(regions):
            table = self._regions.get(index)
            if table is None:
                table = self._decode(index)  # not kept: a count must not evict a walk's
            free += table.count(0)
            if index == 0:
                free -= table[:FAT_START_ENT].count(0)
        return free


def _decode_fat12(raw: bytes, count: int) -> array[int]:
    """Packed 12-bit entries: two in three bytes, low nibble first."""
    table = array("H", bytes(2 * count))
    for n in range(count):
        k = n + (n >> 1)
        if n & 1:
            table[n] = (raw[k] >> 4) | (raw[k + 1] << 4)
        else:
            table[n] = raw[k] | ((raw[k + 1] & 0x0F) << 8)
    return table


def _overlapping(chain: ClusterChain) -> bool:
    """Whether two runs share a cluster (the chain visits a cluster twice)."""
    firsts = chain.firsts
    order = sorted(range(len(firsts)), key=firsts.__getitem__)
    end = 0
    for k in order:
        if firsts[k] < end:
            return True
        end = firsts[k] + chain.run_length(k)
    return False


def _cut_at_repeat(chain: ClusterChain, max_cluster: int) -> None:
    """End ``chain`` just before the first cluster it visits a second time."""
    seen = bytearray((max_cluster >> 3) + 1)
    for k in range(len(chain.firsts)):
        first = chain.firsts[k]
        for c in range(first, first + chain.run_length(k)):
            if seen[c >> 3] & (1 << (c & 7)):
                index = chain.starts[k] + c - first
                del chain.firsts[k + (c > first) :]
                del chain.starts[k + (c > first) :]
                chain.clusters = index
                chain.ended = False
                chain.problem = f"cluster chain loops back to cluster 0x{c:08x}"
                return
            seen[c >> 3] |= 1 << (c & 7)
