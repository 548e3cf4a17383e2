"""The read-only ext2/ext3/ext4 driver: one module per on-disk concern.

``superblock`` (layout, geometry, feature gating), ``group`` (group descriptors),
``block_validity`` (the system zone no file may claim), ``inode`` (inodes and
attributes), ``extents`` and ``blockmap`` (block mapping), ``directory`` and ``dirhash``
(linear and htree directories), ``inline`` (inline_data), ``xattr`` and ``acl``
(extended attributes, POSIX ACLs), ``checksum`` (crc32c/crc16), ``device`` (cached block
reads), ``layout`` (construct declarations, fast decoding) and ``volume`` (the
:class:`Ext4Volume` tying them together).
"""

from drivers.ext4.volume import Ext4Volume

__all__ = ["Ext4Volume"]
