"""The on-disk structures of MBR and GPT partition tables, declared once, and their constants.

Each structure is a ``construct.Struct`` whose field names are those of the UEFI
specification (chapter 5, "GUID Partition Table (GPT) Disk Layout": ``Signature``,
``MyLBA``, ``PartitionEntryArrayCRC32``...; the legacy MBR's ``BootIndicator``,
``OSType``, ``StartingLBA``...), so that a reader can check this code against the spec
line by line.  The declarations are what the tests use to build and patch tables;
:class:`Layout` derives a :class:`struct.Struct` from each one and the parsers decode with
``unpack_from`` into named tuples, as the ext4 and squashfs drivers do.  Partition
tables are read once per mount, so speed matters little here: the point of the
derived decoder is one declaration serving both the tests and the parser, with the
sizes checked at import time.

Only the first bytes of a FAT boot sector are declared (:data:`FAT_BOOT_SECTOR`): just
enough for the check that tells a bare FAT file system from an MBR, since both end in
0x55AA.
"""

from __future__ import annotations

import construct as c

from drivers.fat.layout import BPB
from drivers.layout import Layout

__all__ = [
    "EBR_CHAIN_MAX",
    "FAT_BOOT_SECTOR",
    "GPT_HEADER",
    "GPT_HEADER_SIGNATURE",
    "GPT_PARTITION_ENTRY",
    "LEGACY_MBR",
    "MBR_PARTITION_RECORD",
    "Layout",
]


# -- legacy MBR (UEFI spec 5.2.1, "Legacy MBR") ------------------------------------------------

#: The boot signature every MBR (and every FAT/NTFS boot sector) ends with, at byte 510.
MBR_SIGNATURE = b"\x55\xaa"
MBR_PARTITION_RECORD_OFFSET = 446
MBR_PARTITION_RECORDS = 4

#: One of the four 16-byte entries at byte 446. The CHS addresses are ignored (LBA is
#: what every tool since the 1990s fills in and what Linux reads).
MBR_PARTITION_RECORD = Layout(
    "MBRPartitionRecord",
    c.Struct(
        "BootIndicator" / c.Int8ul,  # 0x80 bootable, 0x00 not; anything else: no MBR
        "StartingCHS" / c.Bytes(3),
        "OSType" / c.Int8ul,
        "EndingCHS" / c.Bytes(3),
        "StartingLBA" / c.Int32ul,
        "SizeInLBA" / c.Int32ul,
    ),
)
assert MBR_PARTITION_RECORD.size == 16

#: The whole of sector 0, records split out. ``UniqueMBRDiskSignature`` is the 32-bit
#: disk identifier Linux turns into PARTUUIDs ("1234abcd-01").
LEGACY_MBR = Layout(
    "LegacyMBR",
    c.Struct(
        "BootCode" / c.Bytes(440),
        "UniqueMBRDiskSignature" / c.Int32ul,
        "Unknown" / c.Int16ul,
        "PartitionRecord" / c.Bytes(MBR_PARTITION_RECORDS * MBR_PARTITION_RECORD.size),
        "Signature" / c.Bytes(2),
    ),
)
assert LEGACY_MBR.size == 512

#: MBR OSType values with a meaning for the parser (names as fdisk and Linux's msdos.c).
DOS_EXTENDED_PARTITION = 0x05
WIN98_EXTENDED_PARTITION = 0x0F
LINUX_EXTENDED_PARTITION = 0x85
EXTENDED_TYPES = frozenset(
    {DOS_EXTENDED_PARTITION, WIN98_EXTENDED_PARTITION, LINUX_EXTENDED_PARTITION}
)
EFI_PMBR_OSTYPE_EFI_GPT = 0xEE

#: How many EBRs a chain of logical partitions may have before the parser stops. The set
#: of visited EBRs stops loops; this stops long acyclic chains of empty EBRs, which no
#: partitioning tool writes (Linux stops after 100 EBRs without a partition, and numbers
#: partitions only up to 255, so at most 251 logical ones).
EBR_CHAIN_MAX = 256

# -- FAT boot sector: the FAT driver's own declaration of the BPB (first 36 bytes) ----------

#: A bare FAT file system's boot sector also ends in 55 AA; its BPB tells it from an MBR.
FAT_BOOT_SECTOR = BPB

#: Where FAT12/16 and FAT32 keep their informational "FAT16   " / "FAT32   " strings, and
#: where NTFS and exFAT put their OEM names (which are their magic numbers).
FAT16_FILSYSTYPE_OFFSET = 0x36
FAT32_FILSYSTYPE_OFFSET = 0x52
OEM_NAME_OFFSET = 3
BARE_FILESYSTEM_OEM_NAMES = {b"NTFS    ": "ntfs", b"EXFAT   ": "exfat"}

# -- GPT (UEFI spec 5.3) -----------------------------------------------------------------------

GPT_HEADER_SIGNATURE = b"EFI PART"
GPT_PRIMARY_HEADER_LBA = 1
GPT_HEADER = Layout(
    "GPTHeader",
    c.Struct(
        "Signature" / c.Bytes(8),
        "Revision" / c.Int32ul,
        "HeaderSize" / c.Int32ul,
        "HeaderCRC32" / c.Int32ul,
        "Reserved" / c.Int32ul,
        "MyLBA" / c.Int64ul,
        "AlternateLBA" / c.Int64ul,
        "FirstUsableLBA" / c.Int64ul,
        "LastUsableLBA" / c.Int64ul,
        "DiskGUID" / c.Bytes(16),
        "PartitionEntryLBA" / c.Int64ul,
        "NumberOfPartitionEntries" / c.Int32ul,
        "SizeOfPartitionEntry" / c.Int32ul,
        "PartitionEntryArrayCRC32" / c.Int32ul,
    ),
)
assert GPT_HEADER.size == 92

#: One entry of the partition entry array. Entries may be larger than this (the spec
#: allows 128 * 2**n bytes); the extra bytes are reserved and only count for the CRC.
GPT_PARTITION_ENTRY = Layout(
    "GPTPartitionEntry",
    c.Struct(
        "PartitionTypeGUID" / c.Bytes(16),
        "UniquePartitionGUID" / c.Bytes(16),
        "StartingLBA" / c.Int64ul,
        "EndingLBA" / c.Int64ul,  # inclusive
        "Attributes" / c.Int64ul,
        "PartitionName" / c.Bytes(72),  # 36 UTF-16LE code units, NUL-padded
    ),
)
assert GPT_PARTITION_ENTRY.size == 128

#: The revision every GPT writer puts (1.0); others are accepted, as Linux does.
GPT_REVISION_1_0 = 0x00010000
#: The largest entry array this reader loads: Linux's KMALLOC_MAX_SIZE bound on x86-64.
#: 128 entries of 128 bytes (16 KiB) is what every tool writes.
GPT_ENTRY_ARRAY_MAX = 4 << 20

#: Partition attribute bits (UEFI spec table 5-9).
GPT_ATTRIBUTE_REQUIRED_PARTITION = 1 << 0
GPT_ATTRIBUTE_NO_BLOCK_IO_PROTOCOL = 1 << 1
GPT_ATTRIBUTE_LEGACY_BIOS_BOOTABLE = 1 << 2

#: The logical sector sizes tried for GPT, in order: an image file does not say which
#: its disk had, and 4 KiB-sector disks (4Kn) put the header at byte 4096.
GPT_SECTOR_SIZES = (512, 4096)
#: MBRs (and their EBRs) are read in 512-byte sectors, as on every disk an image is
#: likely to come from; a 4Kn disk with an MBR would need the other unit.
MBR_SECTOR_SIZE = 512
