"""The MBR ("DOS") partition table: sector 0, its four primaries, and the EBR chain.

What sector 0 is comes first (:func:`sniff_boot_sector`), because the 0x55AA boot
signature that marks an MBR also ends every FAT, NTFS and exFAT boot sector: a bare FAT
image must not be taken for a partitioned disk.  The order of the checks follows
Linux's ``block/partitions/msdos.c`` and util-linux's libblkid: no signature, no table;
a boot sector whose BIOS parameter block is sane is a file system; any boot indicator
other than 0x00 or 0x80 means the 64 bytes at 446 are not partition entries; an entry
of type 0xEE is a protective (or hybrid) MBR in front of a GPT.

Logical partitions live in a linked list of extended boot records (EBRs) inside the
extended partition.  Each EBR's first data entry is relative to that EBR, its link
entry relative to the start of the outermost extended partition (msdos.c's
``parse_extended``).  The chain is read from an untrusted image, so it is bounded twice:
a set of visited EBR sectors stops loops at their first repetition, and
:data:`EBR_CHAIN_MAX` stops anything else.  A broken chain is not an error: the logical
partitions found before the break are kept and a warning says where it broke, as Linux
keeps what it parsed.
"""

from __future__ import annotations

from typing import Any, Literal

from drivers.base import BlockReader, CorruptImage
from drivers.partitions.layout import (
    BARE_FILESYSTEM_OEM_NAMES,
    EBR_CHAIN_MAX,
    EFI_PMBR_OSTYPE_EFI_GPT,
    EXTENDED_TYPES,
    FAT_BOOT_SECTOR,
    LEGACY_MBR,
    MBR_PARTITION_RECORD,
    MBR_PARTITION_RECORD_OFFSET,
    MBR_PARTITION_RECORDS,
    MBR_SECTOR_SIZE,
    MBR_SIGNATURE,
    OEM_NAME_OFFSET,
)
from drivers.partitions.model import (
    Partition,
    PartitionTable,
    SkippedEntry,
    note_overlaps,
    place,
)
from drivers.partitions.types import mbr_type_name

__all__ = ["BootSectorKind", "read_mbr", "sniff_boot_sector"]

#: What sector 0 holds: nothing we know, a file system's boot sector, a protective
#: MBR (GPT follows), or an MBR partition table.
BootSectorKind = Literal["none", "filesystem", "protective", "mbr"]

#: Linux numbers partitions up to 255 (its DISK_MAX_PARTS is 256, minor 0 being the disk).
MAX_PARTITION_NUMBER = 255


def records_of(sector: bytes) -> list[Any]:
    """The four MBR partition records of a 512-byte sector (MBR or EBR)."""
    return [
        MBR_PARTITION_RECORD.unpack_record(
            sector, MBR_PARTITION_RECORD_OFFSET + i * MBR_PARTITION_RECORD.size
        )
        for i in range(MBR_PARTITION_RECORDS)
    ]


def bare_filesystem(sector: bytes) -> str | None:
    """The file system whose boot sector ``sector`` is ("fat", "ntfs", "exfat"), or None.

    NTFS and exFAT say so in their OEM name.  FAT is recognised by a jump instruction and
    a BIOS parameter block whose values are each possible (power-of-two sector and
    cluster sizes, at least one reserved sector and one FAT, a media byte FAT allows, a
    sector count): Linux's msdos.c looks at reserved sectors, FAT count and media byte,
    libblkid at more; an MBR's boot code, zeros in a freshly partitioned disk, passes
    none of these.
    """
    if len(sector) < FAT_BOOT_SECTOR.size:
        return None
    oem = sector[OEM_NAME_OFFSET : OEM_NAME_OFFSET + 8]
    if oem in BARE_FILESYSTEM_OEM_NAMES:
        return BARE_FILESYSTEM_OEM_NAMES[oem]
    bs = FAT_BOOT_SECTOR.unpack_record(sector)
    jump = bs.BS_jmpBoot
    if not ((jump[0] == 0xEB and jump[2] == 0x90) or jump[0] == 0xE9):
        return None
    if bs.BPB_BytsPerSec not in (512, 1024, 2048, 4096):
        return None
    cluster = bs.BPB_SecPerClus
    if cluster == 0 or cluster & (cluster - 1):
        return None
    if bs.BPB_RsvdSecCnt == 0 or bs.BPB_NumFATs == 0:
        return None
    if not (bs.BPB_Media == 0xF0 or bs.BPB_Media >= 0xF8):  # msdos.c's fat_valid_media
        return None
    if bs.BPB_TotSec16 == 0 and bs.BPB_TotSec32 == 0:
        return None
    return "fat"


def sniff_boot_sector(sector: bytes) -> tuple[BootSectorKind, str]:
    """What sector 0 of an image is, and a phrase saying why (for logs and tests)."""
    if len(sector) < MBR_SECTOR_SIZE or sector[510:512] != MBR_SIGNATURE:
        return "none", "no 0x55AA boot signature"
    fs = bare_filesystem(sector)
    if fs is not None:
        return "filesystem", f"sector 0 is a {fs} boot sector"
    records = records_of(sector)
    for slot, rec in enumerate(records, 1):
        if rec.BootIndicator not in (0x00, 0x80):
            return "none", f"entry {slot} has boot indicator {rec.BootIndicator:#04x}"
    if any(rec.OSType == EFI_PMBR_OSTYPE_EFI_GPT for rec in records):
        return "protective", "an entry of type 0xee (GPT protective)"
    return "mbr", "an MBR partition table"


def _mbr_partition(
    disk: BlockReader,
    number: int,
    rec: Any,
    start: int,
    disk_signature: int,
    container: bool,
) -> Partition | SkippedEntry:
    """The Partition for one record whose absolute start sector is ``start``."""
    placed = place(start, rec.SizeInLBA, MBR_SECTOR_SIZE, disk.size)
    if isinstance(placed, str):
        return SkippedEntry(number, placed)
    offset, size, notes = placed
    if offset == 0:
        notes = (*notes, "overlaps the MBR")
    return Partition(
        number=number,
        scheme="mbr",
        type=f"{rec.OSType:#04x}",
        type_name=mbr_type_name(rec.OSType),
        offset=offset,
        size=size,
        disk=disk,
        sector_size=MBR_SECTOR_SIZE,
        uuid=f"{disk_signature:08x}-{number:02x}",
        bootable=rec.BootIndicator == 0x80,
        container=container,
        notes=notes,
    )


class _Collector:
    """The partitions, skipped entries and warnings of one table as they are found."""

    def __init__(self) -> None:
        self.found: list[Partition | SkippedEntry] = []
        self.warnings: list[str] = []

    def table(self, disk_signature: int) -> PartitionTable:
        # By number, as Linux and sfdisk list them (logical ones were found in between).
        found = sorted(self.found, key=lambda p: p.number)
        parts = [p for p in found if isinstance(p, Partition)]
        skipped = [p for p in found if isinstance(p, SkippedEntry)]
        return PartitionTable(
            scheme="mbr",
            sector_size=MBR_SECTOR_SIZE,
            disk_id=f"{disk_signature:#010x}",
            partitions=tuple(note_overlaps(parts)),
            skipped=tuple(skipped),
            warnings=tuple(self.warnings),
        )


def read_mbr(disk: BlockReader, sector0: bytes) -> PartitionTable:
    """Parse the MBR in ``sector0`` (which :func:`sniff_boot_sector` called "mbr").

    Never raises for a bad table: unusable entries are skipped with a reason and a
    broken EBR chain ends with a warning.  Each extended partition is listed as a
    ``container`` with the size its entry gives (as sfdisk shows it; Linux exposes only
    its first 1 KiB), so a listing shows where the logical partitions live.
    """
    disk_signature = LEGACY_MBR.unpack_record(sector0).UniqueMBRDiskSignature
    out = _Collector()
    next_logical = 5
    for slot, rec in enumerate(records_of(sector0), 1):
        if rec.SizeInLBA == 0:
            continue  # an unused slot, whatever its type says (as msdos.c)
        extended = rec.OSType in EXTENDED_TYPES
        entry = _mbr_partition(disk, slot, rec, rec.StartingLBA, disk_signature, extended)
        out.found.append(entry)
        if extended and isinstance(entry, Partition):
            next_logical = _read_logical(
                disk, rec.StartingLBA, rec.SizeInLBA, next_logical, disk_signature, out
            )
    return out.table(disk_signature)


def _read_logical(
    disk: BlockReader,
    first_sector: int,
    first_size: int,
    number: int,
    disk_signature: int,
    out: _Collector,
) -> int:
    """Follow the EBR chain of the extended partition at ``first_sector``.

    Appends the logical partitions (numbered from ``number``) to ``out`` and returns the
    next free number.
    """
    this_sector, this_size = first_sector, first_size
    visited: set[int] = set()
    for _ in range(EBR_CHAIN_MAX):
        if this_sector in visited:
            out.warnings.append(
                f"the EBR chain loops back to sector {this_sector}; logical partitions "
                "after that point were ignored"
            )
            return number
        visited.add(this_sector)
        try:
            sector = disk.read(this_sector * MBR_SECTOR_SIZE, MBR_SECTOR_SIZE)
        except CorruptImage:
            out.warnings.append(
                f"the EBR at sector {this_sector} lies outside the image; the chain ends there"
            )
            return number
        if sector[510:512] != MBR_SIGNATURE:
            if any(sector):  # an all-zero sector is an extended partition with no logicals
                out.warnings.append(
                    f"the EBR at sector {this_sector} has no 0x55AA signature; the chain ends there"
                )
            return number
        records = records_of(sector)
        # Data entries first: usually only the first, but DR-DOS and OS/2 used others.
        for index, rec in enumerate(records):
            if rec.SizeInLBA == 0 or rec.OSType in EXTENDED_TYPES:
                continue
            start = this_sector + rec.StartingLBA
            if index >= 2 and (  # the 3rd and 4th entries may hold garbage (msdos.c)
                rec.StartingLBA + rec.SizeInLBA > this_size
                or start < first_sector
                or start + rec.SizeInLBA > first_sector + first_size
            ):
                continue
            if number > MAX_PARTITION_NUMBER:
                out.warnings.append(
                    f"more logical partitions than Linux numbers (up to {MAX_PARTITION_NUMBER}); "
                    "the rest were ignored"
                )
                return number
            out.found.append(_mbr_partition(disk, number, rec, start, disk_signature, False))
            number += 1
        # Then the link to the next EBR: the first extended entry, relative to the
        # outermost extended partition.
        link = next((r for r in records if r.SizeInLBA and r.OSType in EXTENDED_TYPES), None)
        if link is None:
            return number
        this_sector, this_size = first_sector + link.StartingLBA, link.SizeInLBA
    out.warnings.append(
        f"the EBR chain is longer than {EBR_CHAIN_MAX} records; the rest was ignored"
    )
    return number
