"""The GUID Partition Table: header checks, the backup header, and the entry array.

A GPT keeps two copies of its header and entry array, the primary at LBA 1 and the
backup at the end of the disk, each protected by CRC32s.  :func:`check_header` applies
the checks of Linux's ``block/partitions/efi.c`` (``is_gpt_valid``) with the UEFI
specification's rules, and returns a reason rather than raising, so that the caller can
fall back to the other copy and report both reasons when neither is usable.

Where this reader differs from Linux, on purpose:

* SizeOfPartitionEntry may be any 128 * 2**n, as the spec allows; Linux takes only 128.
* A header whose usable area reaches past the end of the image is accepted with a
  warning, where Linux refuses it: image files are often truncated (or grown), and the
  partitions inside the image are still readable.  Entries past the end are clipped or
  skipped by the common policy (:func:`drivers.partitions.model.place`).
* When the primary header is damaged, the backup is looked for at the last LBA of the
  image (as Linux does) and then at the AlternateLBA the damaged primary names, if its
  bytes still parse: that finds the backup of a grown image.  Whatever is found there
  must pass every check itself, MyLBA included, so trusting the damaged field costs
  nothing.
* A protective MBR is recognised by any entry of type 0xEE (as libblkid does), without
  Linux's check that it covers the whole disk, which a resized image fails.

The sector size is not recorded anywhere in an image file: 512 is tried first, then
4096 (the header of a 4Kn disk is at byte 4096 and its LBAs count 4 KiB sectors).
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass
from typing import Any

from drivers.base import BlockReader, CorruptImage
from drivers.partitions.layout import (
    GPT_ATTRIBUTE_LEGACY_BIOS_BOOTABLE,
    GPT_ENTRY_ARRAY_MAX,
    GPT_HEADER,
    GPT_HEADER_SIGNATURE,
    GPT_PARTITION_ENTRY,
    GPT_PRIMARY_HEADER_LBA,
    GPT_SECTOR_SIZES,
)
from drivers.partitions.model import (
    Partition,
    PartitionTable,
    SkippedEntry,
    note_overlaps,
    place,
)
from drivers.partitions.types import gpt_type_name

__all__ = ["ValidHeader", "check_header", "guid_str", "read_gpt"]

_UNUSED_TYPE = bytes(16)
_CRC_OFFSET = GPT_HEADER.offset_of("HeaderCRC32")


@dataclass(frozen=True, slots=True)
class ValidHeader:
    """A GPT header that passed every check, with its entry array (CRC verified)."""

    lba: int
    header: Any  # GPT_HEADER record
    entries: bytes


def guid_str(raw: bytes) -> str:
    """A GUID as the spec stores it (first three fields little-endian), in upper case."""
    return str(uuid.UUID(bytes_le=raw)).upper()


def _read_header(disk: BlockReader, lba: int, sector_size: int) -> tuple[bytes, Any] | str:
    """The sector at ``lba`` and its header record, or why it is not readable."""
    if (lba + 1) * sector_size > disk.size:
        return f"LBA {lba} lies past the end of the image"
    sector = disk.read(lba * sector_size, sector_size)
    return sector, GPT_HEADER.unpack_record(sector)


def check_header(disk: BlockReader, lba: int, sector_size: int) -> ValidHeader | str:
    """The header at ``lba`` and its entries if they pass every check, else the reason.

    Checks, in efi.c's order: the signature; 92 <= HeaderSize <= sector size; the header
    CRC32 (over HeaderSize bytes with the CRC field zeroed); MyLBA is where the header
    was read; FirstUsableLBA <= LastUsableLBA; SizeOfPartitionEntry is 128 * 2**n; the
    entry array fits :data:`GPT_ENTRY_ARRAY_MAX` and the image; its CRC32.
    """
    read = _read_header(disk, lba, sector_size)
    if isinstance(read, str):
        return read
    sector, hdr = read
    if hdr.Signature != GPT_HEADER_SIGNATURE:
        return "no 'EFI PART' signature"
    if not GPT_HEADER.size <= hdr.HeaderSize <= sector_size:
        return f"HeaderSize {hdr.HeaderSize} is outside {GPT_HEADER.size}..{sector_size}"
    zeroed = sector[:_CRC_OFFSET] + bytes(4) + sector[_CRC_OFFSET + 4 : hdr.HeaderSize]
    crc = zlib.crc32(zeroed)
    if crc != hdr.HeaderCRC32:
        return f"HeaderCRC32 is {hdr.HeaderCRC32:#010x}, the header sums to {crc:#010x}"
    if hdr.MyLBA != lba:
        return f"MyLBA is {hdr.MyLBA}, not the LBA {lba} it was read at"
    if hdr.LastUsableLBA < hdr.FirstUsableLBA:
        return f"LastUsableLBA {hdr.LastUsableLBA} is below FirstUsableLBA {hdr.FirstUsableLBA}"
    entry_size = hdr.SizeOfPartitionEntry
    if entry_size < GPT_PARTITION_ENTRY.size or entry_size & (entry_size - 1):
        return f"SizeOfPartitionEntry {entry_size} is not 128 * 2**n"
    array_size = hdr.NumberOfPartitionEntries * entry_size
    if array_size > GPT_ENTRY_ARRAY_MAX:
        return (
            f"the entry array ({hdr.NumberOfPartitionEntries} entries of {entry_size} bytes) "
            f"is larger than the {GPT_ENTRY_ARRAY_MAX} bytes this reader accepts"
        )
    array_offset = hdr.PartitionEntryLBA * sector_size
    if array_offset + array_size > disk.size:
        return f"the entry array at LBA {hdr.PartitionEntryLBA} runs past the end of the image"
    entries = disk.read(array_offset, array_size)
    crc = zlib.crc32(entries)
    if crc != hdr.PartitionEntryArrayCRC32:
        return (
            f"PartitionEntryArrayCRC32 is {hdr.PartitionEntryArrayCRC32:#010x}, "
            f"the entries sum to {crc:#010x}"
        )
    return ValidHeader(lba, hdr, entries)


def _find_backup(
    disk: BlockReader, sector_size: int, candidates: list[int]
) -> tuple[ValidHeader | None, list[str]]:
    """The first valid header among ``candidates`` (LBAs), and why the others failed."""
    reasons: list[str] = []
    for lba in dict.fromkeys(candidates):  # in order, without repeats
        if lba <= GPT_PRIMARY_HEADER_LBA:
            continue
        found = check_header(disk, lba, sector_size)
        if isinstance(found, ValidHeader):
            return found, reasons
        reasons.append(f"backup at LBA {lba}: {found}")
    return None, reasons


def _disagreements(primary: Any, backup: Any) -> list[str]:
    """The header fields in which two valid copies of a GPT disagree (efi.c's compare_gpts)."""
    pairs = {
        "MyLBA/AlternateLBA": (primary.MyLBA, backup.AlternateLBA),
        "AlternateLBA/MyLBA": (primary.AlternateLBA, backup.MyLBA),
        "FirstUsableLBA": (primary.FirstUsableLBA, backup.FirstUsableLBA),
        "LastUsableLBA": (primary.LastUsableLBA, backup.LastUsableLBA),
        "DiskGUID": (primary.DiskGUID, backup.DiskGUID),
        "NumberOfPartitionEntries": (
            primary.NumberOfPartitionEntries,
            backup.NumberOfPartitionEntries,
        ),
        "SizeOfPartitionEntry": (primary.SizeOfPartitionEntry, backup.SizeOfPartitionEntry),
        "PartitionEntryArrayCRC32": (
            primary.PartitionEntryArrayCRC32,
            backup.PartitionEntryArrayCRC32,
        ),
    }
    return [name for name, (a, b) in pairs.items() if a != b]


def _locate(disk: BlockReader, sector_size: int) -> tuple[ValidHeader, list[str]] | str:
    """The header to use at this sector size, with warnings; or why there is none."""
    last_lba = disk.size // sector_size - 1
    if last_lba <= GPT_PRIMARY_HEADER_LBA:
        return "the image is too small for a GPT"
    warnings: list[str] = []
    primary = check_header(disk, GPT_PRIMARY_HEADER_LBA, sector_size)
    if isinstance(primary, ValidHeader):
        hdr = primary.header
        backup, _ = _find_backup(disk, sector_size, [hdr.AlternateLBA, last_lba])
        if backup is None:
            warnings.append("the backup GPT header is missing or damaged")
        else:
            differ = _disagreements(hdr, backup.header)
            if differ:
                warnings.append(
                    f"the primary and backup GPT headers disagree on {', '.join(differ)}; "
                    "using the primary"
                )
        if hdr.AlternateLBA != last_lba:
            warnings.append(
                f"the GPT says the disk ends at LBA {hdr.AlternateLBA}, the image at LBA "
                f"{last_lba}: truncated or grown"
            )
        return primary, warnings
    candidates = [last_lba]
    damaged = _read_header(disk, GPT_PRIMARY_HEADER_LBA, sector_size)
    if not isinstance(damaged, str) and damaged[1].Signature == GPT_HEADER_SIGNATURE:
        candidates.append(damaged[1].AlternateLBA)
    backup, reasons = _find_backup(disk, sector_size, candidates)
    if backup is None:
        return "; ".join([f"primary at LBA 1: {primary}", *reasons])
    warnings.append(f"the primary GPT is damaged ({primary}); using the backup at LBA {backup.lba}")
    return backup, warnings


def read_gpt(disk: BlockReader) -> PartitionTable:
    """Parse the GPT behind a protective MBR; CorruptImage if neither copy is usable."""
    failures = []
    for sector_size in GPT_SECTOR_SIZES:
        located = _locate(disk, sector_size)
        if isinstance(located, str):
            failures.append(f"{sector_size}-byte sectors: {located}")
            continue
        valid, warnings = located
        return _table(disk, sector_size, valid, warnings)
    raise CorruptImage("protective MBR but no valid GPT header: " + " | ".join(failures))


def _table(
    disk: BlockReader, sector_size: int, valid: ValidHeader, warnings: list[str]
) -> PartitionTable:
    """The partitions of a validated entry array."""
    hdr = valid.header
    last_lba = disk.size // sector_size - 1
    if hdr.LastUsableLBA > last_lba:
        warnings.append(
            f"the usable area ends at LBA {hdr.LastUsableLBA}, past the end of the image "
            f"(LBA {last_lba}): truncated?"
        )
    parts: list[Partition] = []
    skipped: list[SkippedEntry] = []
    for index in range(hdr.NumberOfPartitionEntries):
        entry = GPT_PARTITION_ENTRY.unpack_record(valid.entries, index * hdr.SizeOfPartitionEntry)
        if entry.PartitionTypeGUID == _UNUSED_TYPE:
            continue
        number = index + 1
        if entry.EndingLBA < entry.StartingLBA:
            skipped.append(
                SkippedEntry(
                    number, f"ends (LBA {entry.EndingLBA}) before it starts ({entry.StartingLBA})"
                )
            )
            continue
        sectors = entry.EndingLBA - entry.StartingLBA + 1
        placed = place(entry.StartingLBA, sectors, sector_size, disk.size)
        if isinstance(placed, str):
            skipped.append(SkippedEntry(number, placed))
            continue
        offset, size, notes = placed
        if entry.StartingLBA < hdr.FirstUsableLBA or entry.EndingLBA > hdr.LastUsableLBA:
            notes = (
                *notes,
                f"outside the usable LBAs {hdr.FirstUsableLBA}-{hdr.LastUsableLBA} "
                "(overlaps the partition table)",
            )
        type_guid = guid_str(entry.PartitionTypeGUID)
        parts.append(
            Partition(
                number=number,
                scheme="gpt",
                type=type_guid,
                type_name=gpt_type_name(type_guid),
                offset=offset,
                size=size,
                disk=disk,
                sector_size=sector_size,
                name=_name(entry.PartitionName),
                uuid=guid_str(entry.UniquePartitionGUID),
                attributes=entry.Attributes,
                bootable=bool(entry.Attributes & GPT_ATTRIBUTE_LEGACY_BIOS_BOOTABLE),
                notes=notes,
            )
        )
    return PartitionTable(
        scheme="gpt",
        sector_size=sector_size,
        disk_id=guid_str(hdr.DiskGUID),
        partitions=tuple(note_overlaps(parts)),
        skipped=tuple(skipped),
        warnings=tuple(warnings),
    )


def _name(raw: bytes) -> str:
    """PartitionName: UTF-16LE up to the first NUL code unit; bad surrogates replaced."""
    for i in range(0, len(raw), 2):
        if raw[i : i + 2] == b"\x00\x00":
            raw = raw[:i]
            break
    return raw.decode("utf-16-le", errors="replace")
