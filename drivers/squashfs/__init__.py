"""The read-only squashfs 4.0 driver: one module per on-disk concern, as the kernel's fs/squashfs.

``superblock`` (checks in the kernel's order, compressor options), ``compression`` (gzip,
xz, legacy lzma, lzo, lz4, zstd, each capped at one block), ``metadata`` (metadata blocks
and positions across them), ``tables`` (id, fragment, xattr id and export table indexes),
``inode`` (every inode type, as stat shows it), ``directory`` (listings, directory
indexes, lookups), ``file`` (block lists, data blocks, fragment tails), ``xattr``
(extended attributes), ``layout`` (construct declarations, fast decoding) and ``volume``
(the :class:`SquashfsVolume` tying them together).
"""

from drivers.squashfs.volume import SquashfsVolume

__all__ = ["SquashfsVolume"]
