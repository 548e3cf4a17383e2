"""Every FAT on-disk structure, declared once, and the format's constants.

Field names are those of Microsoft's FAT specification ("FAT: General Overview of
On-Disk Format", version 1.03): ``BPB_BytsPerSec``, ``DIR_Name``, ``LDIR_Ord``...
Each structure is a ``construct.Struct``; the declarations are what the tests use to
locate and patch bytes, but construct costs tens of microseconds per record and a
directory walk decodes thousands, so :class:`Layout` derives a :class:`struct.Struct`
from each declaration and the hot paths decode with ``unpack_from`` / ``iter_unpack``.
The FAT itself is never decoded through construct: :mod:`drivers.fat.table` turns whole
sectors of it into arrays at once.
"""

from __future__ import annotations

import construct as c

from drivers.layout import Layout

__all__ = ["Layout"]


# -- constants (names as the specification and the kernel's msdos_fs.h) ----------------------

BOOT_SIGNATURE = b"\x55\xaa"  # bytes 510 and 511 of the boot sector
BOOT_SIGNATURE_OFFSET = 510
BOOT_SECTOR_SIZE = 512  # what is read before the sector size is known
EXFAT_OEM_NAME = b"EXFAT   "
EXTENDED_BOOT_SIGNATURE = 0x29  # BS_BootSig: BS_VolID, BS_VolLab and BS_FilSysType follow
OLD_EXTENDED_BOOT_SIGNATURE = 0x28  # BS_BootSig: only BS_VolID follows
NO_NAME_LABEL = b"NO NAME    "

FSI_LEADSIG = 0x41615252
FSI_STRUCSIG = 0x61417272
FSI_TRAILSIG = 0xAA550000

#: Cluster numbering starts at 2 (FAT[0] holds the media byte, FAT[1] flags).
FAT_START_ENT = 2
#: The largest cluster counts (fat.h MAX_FAT12/16/32); the spec's thresholds 4085 / 65525.
MAX_FAT12 = 0xFF4
MAX_FAT16 = 0xFFF4
MAX_FAT32 = 0x0FFFFFF6
#: FAT entries at or above these end a chain (the bad-cluster marker included, as fatent.c).
BAD_FAT12 = 0xFF7
BAD_FAT16 = 0xFFF7
BAD_FAT32 = 0x0FFFFFF7
FAT32_ENTRY_MASK = 0x0FFFFFFF  # the top 4 bits of a FAT32 entry are reserved

DIR_ENTRY_SIZE = 32
#: DIR_Attr bits.
ATTR_READ_ONLY = 0x01
ATTR_HIDDEN = 0x02
ATTR_SYSTEM = 0x04
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_ARCHIVE = 0x20
ATTR_LONG_NAME = 0x0F  # ATTR_READ_ONLY | ATTR_HIDDEN | ATTR_SYSTEM | ATTR_VOLUME_ID
#: DIR_NTRes bits (Windows NT): the base name / the extension is shown in lower case.
CASE_LOWER_BASE = 0x08
CASE_LOWER_EXT = 0x10
#: DIR_Name[0] values.
DIR_FREE_LAST = 0x00  # this and every following entry are free
DIR_DELETED = 0xE5
DIR_KANJI_E5 = 0x05  # stands for a real 0xE5 first byte (a Shift-JIS lead byte)
DOT_NAME = b".          "
DOTDOT_NAME = b"..         "
#: LDIR_Ord: the last (first stored) entry of a long name; sequence numbers are 1..20.
LAST_LONG_ENTRY = 0x40
MAX_LONG_SLOTS = 20  # ceil(255 * 2 / 26)
CHARS_PER_SLOT = 13
#: The specification's limit on a directory: 65536 entries.
MAX_DIR_BYTES = 65536 * DIR_ENTRY_SIZE

# -- structures -------------------------------------------------------------------------------

#: Bytes 0-35 of every FAT boot sector (the BIOS Parameter Block proper).
BPB = Layout(
    "bpb",
    c.Struct(
        "BS_jmpBoot" / c.Bytes(3),
        "BS_OEMName" / c.Bytes(8),
        "BPB_BytsPerSec" / c.Int16ul,
        "BPB_SecPerClus" / c.Int8ul,
        "BPB_RsvdSecCnt" / c.Int16ul,
        "BPB_NumFATs" / c.Int8ul,
        "BPB_RootEntCnt" / c.Int16ul,
        "BPB_TotSec16" / c.Int16ul,
        "BPB_Media" / c.Int8ul,
        "BPB_FATSz16" / c.Int16ul,
        "BPB_SecPerTrk" / c.Int16ul,
        "BPB_NumHeads" / c.Int16ul,
        "BPB_HiddSec" / c.Int32ul,
        "BPB_TotSec32" / c.Int32ul,
    ),
)
assert BPB.size == 36

_EXTENDED_FIELDS = (
    "BS_DrvNum" / c.Int8ul,
    "BS_Reserved1" / c.Int8ul,
    "BS_BootSig" / c.Int8ul,
    "BS_VolID" / c.Int32ul,
    "BS_VolLab" / c.Bytes(11),
    "BS_FilSysType" / c.Bytes(8),
)
#: Bytes 36-61 of a FAT12/16 boot sector.
BPB16 = Layout("bpb16", c.Struct(*_EXTENDED_FIELDS), base=BPB.size)
#: Bytes 36-89 of a FAT32 boot sector.
BPB32 = Layout(
    "bpb32",
    c.Struct(
        "BPB_FATSz32" / c.Int32ul,
        "BPB_ExtFlags" / c.Int16ul,
        "BPB_FSVer" / c.Int16ul,
        "BPB_RootClus" / c.Int32ul,
        "BPB_FSInfo" / c.Int16ul,
        "BPB_BkBootSec" / c.Int16ul,
        "BPB_Reserved" / c.Bytes(12),
        *_EXTENDED_FIELDS,
    ),
    base=BPB.size,
)
assert BPB16.size == 26 and BPB32.size == 54

FSINFO = Layout(
    "fsinfo",
    c.Struct(
        "FSI_LeadSig" / c.Int32ul,
        "FSI_Reserved1" / c.Bytes(480),
        "FSI_StrucSig" / c.Int32ul,
        "FSI_Free_Count" / c.Int32ul,
        "FSI_Nxt_Free" / c.Int32ul,
        "FSI_Reserved2" / c.Bytes(12),
        "FSI_TrailSig" / c.Int32ul,
    ),
)
assert FSINFO.size == 512

DIR_ENTRY = Layout(
    "dir_entry",
    c.Struct(
        "DIR_Name" / c.Bytes(11),
        "DIR_Attr" / c.Int8ul,
        "DIR_NTRes" / c.Int8ul,
        "DIR_CrtTimeTenth" / c.Int8ul,
        "DIR_CrtTime" / c.Int16ul,
        "DIR_CrtDate" / c.Int16ul,
        "DIR_LstAccDate" / c.Int16ul,
        "DIR_FstClusHI" / c.Int16ul,
        "DIR_WrtTime" / c.Int16ul,
        "DIR_WrtDate" / c.Int16ul,
        "DIR_FstClusLO" / c.Int16ul,
        "DIR_FileSize" / c.Int32ul,
    ),
)
assert DIR_ENTRY.size == DIR_ENTRY_SIZE

LDIR_ENTRY = Layout(
    "ldir_entry",
    c.Struct(
        "LDIR_Ord" / c.Int8ul,
        "LDIR_Name1" / c.Bytes(10),
        "LDIR_Attr" / c.Int8ul,
        "LDIR_Type" / c.Int8ul,
        "LDIR_Chksum" / c.Int8ul,
        "LDIR_Name2" / c.Bytes(12),
        "LDIR_FstClusLO" / c.Int16ul,
        "LDIR_Name3" / c.Bytes(4),
    ),
)
assert LDIR_ENTRY.size == DIR_ENTRY_SIZE
