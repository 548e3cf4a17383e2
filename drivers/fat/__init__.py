"""The read-only FAT12/16/32 (vfat) driver: one module per on-disk concern, as the kernel's fs/fat.

``bootsector`` (BPB checks in the kernel's order, FAT type by cluster count, FSInfo, the
FAT32 backup boot sector), ``table`` (the FAT decoded in bulk, cluster chains as runs,
loops, free clusters), ``directory`` (32-byte entries, long name sequences, listings),
``names`` (8.3 names in the OEM code page with the NT case flags, UTF-16 long names),
``times`` (DOS dates), ``options`` (the vfat mount options), ``layout`` (construct
declarations named as Microsoft's specification, fast decoding) and ``volume`` (the
:class:`FatVolume` tying them together).
"""

from drivers.fat.volume import FatVolume

__all__ = ["FatVolume"]
