"""What the partition-table parsers return: plain frozen dataclasses.

A :class:`Partition` is a byte range of the disk image plus what the table says about it
(number, type, name).  It keeps the disk's :class:`BlockReader` (out of comparisons and
``repr``) so that :meth:`Partition.reader` can hand a file-system driver a bounded window
on exactly that range: the driver then cannot read outside its partition, whatever its
own on-disk pointers say.

Where the table and the image disagree, :func:`place` applies one policy for both
schemes, documented here because it is a choice:

* an MBR entry of zero sectors is an unused slot, and a GPT entry (used: a non-zero
  type GUID) whose EndingLBA is below its StartingLBA is skipped with the reason --
  Linux ignores the first and would make the second a huge partition clipped to the disk;
* an entry starting at or past the end of the image is skipped, with the reason, as
  Linux's ``blk_add_partitions`` does;
* an entry running past the end of the image is clipped to it, with a note, as Linux
  does for MBR partitions (Linux drops such GPT entries instead; clipping both lets a
  truncated image still show what it holds, and the file-system driver decides whether
  what is left is usable -- every read past the clip is refused by the BlockReader);
* an entry overlapping the partition table itself, or another partition, is kept with a
  note, as Linux keeps it: the mount is read-only, so overlap cannot corrupt anything,
  and a file system that is not really there fails its own probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from drivers.base import BlockReader

__all__ = ["Partition", "PartitionTable", "SkippedEntry", "human_size", "note_overlaps", "place"]


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition: a byte range of the disk (``offset``/``size``) and its table entry.

    ``number`` follows Linux (``/dev/sdaN``): MBR primaries keep their slot (1-4) and
    logical partitions count from 5 in chain order; GPT entries are numbered by their
    index in the entry array plus one, so unused entries leave gaps.  ``type`` is the
    MBR type byte as ``"0x83"`` or the GPT type GUID in upper case (as sfdisk prints
    it); ``type_name`` is fdisk's name for it or ``"unknown"``.  ``uuid`` is the GPT
    unique partition GUID, or for MBR the PARTUUID Linux derives from the disk signature
    (``"1234abcd-05"``), so users can match what their fstab says.
    """

    number: int
    scheme: str  # "mbr" or "gpt"
    type: str
    type_name: str
    offset: int  # bytes from the start of the disk's region
    size: int  # bytes, after clipping to the image
    disk: BlockReader = field(repr=False, compare=False)
    sector_size: int = 512
    name: str = ""  # GPT PartitionName
    uuid: str = ""
    attributes: int = 0  # GPT Attributes, 64 bits
    bootable: bool = False  # MBR BootIndicator 0x80 / GPT "legacy BIOS bootable"
    container: bool = False  # an MBR extended partition: holds the logical ones
    notes: tuple[str, ...] = ()  # clipped, overlaps the table...

    @property
    def end(self) -> int:
        """The byte just past the partition."""
        return self.offset + self.size

    def reader(self) -> BlockReader:
        """A BlockReader on exactly this partition, for a file-system driver."""
        return self.disk.window(self.offset, self.size)

    def describe(self) -> str:
        """One line for listings and error messages: number, type, name, size, place."""
        text = f"{self.number}: {self.type_name} ({self.type})"
        if self.name:
            text += f" {self.name!r}"
        text += f", {human_size(self.size)} at byte {self.offset}"
        if self.container:
            text += " [extended: logical partitions are numbered from 5]"
        if self.bootable:
            text += " [bootable]"
        for note in self.notes:
            text += f" [{note}]"
        return text


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """A table entry that describes no usable range, and why (for ``--list``)."""

    number: int
    reason: str


@dataclass(frozen=True, slots=True)
class PartitionTable:
    """A parsed table: the partitions, what was skipped, and what looked wrong.

    ``disk_id`` is the MBR disk signature (``"0x1234abcd"``, as fdisk shows it) or the
    GPT DiskGUID.  ``warnings`` are facts a user may want to know but that did not stop
    the parse (the backup GPT header was used, an EBR chain looped and was cut...).
    """

    scheme: str  # "mbr" or "gpt"
    sector_size: int
    disk_id: str
    partitions: tuple[Partition, ...]
    skipped: tuple[SkippedEntry, ...] = ()
    warnings: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        """Lines for a ``--list`` output."""
        lines = [
            f"{self.scheme} partition table, disk id {self.disk_id}, "
            f"{self.sector_size}-byte sectors"
        ]
        lines += [f"  {p.describe()}" for p in self.partitions]
        lines += [f"  {s.number}: skipped: {s.reason}" for s in self.skipped]
        lines += [f"  warning: {w}" for w in self.warnings]
        return lines


def note_overlaps(partitions: list[Partition]) -> list[Partition]:
    """The same partitions, each overlapping another one noting which (order kept).

    Extended containers are left out: they overlap their logical partitions by design.
    One sweep over the partitions sorted by offset, comparing each with the one reaching
    furthest so far, finds every partition that overlaps an earlier one in O(n log n),
    however many entries a crafted GPT holds; the earlier side is named from the one
    reaching furthest, which is what a user needs to see that the layout is suspect.
    """
    data = sorted((p for p in partitions if not p.container), key=lambda p: (p.offset, p.number))
    overlaps: dict[int, set[int]] = {}
    furthest: Partition | None = None
    for part in data:
        if furthest is not None and furthest.end > part.offset:
            overlaps.setdefault(part.number, set()).add(furthest.number)
            overlaps.setdefault(furthest.number, set()).add(part.number)
        if furthest is None or part.end > furthest.end:
            furthest = part
    result = []
    for part in partitions:
        others = sorted(overlaps.get(part.number, ()))
        if others and not part.container:
            listed = ", ".join(str(n) for n in others[:8]) + (", ..." if len(others) > 8 else "")
            part = replace(part, notes=(*part.notes, f"overlaps partition {listed}"))
        result.append(part)
    return result


def human_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units, as fdisk and lsblk print them."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def place(
    start_sector: int, sectors: int, sector_size: int, disk_size: int
) -> tuple[int, int, tuple[str, ...]] | str:
    """Where a table entry lands in the image: ``(offset, size, notes)`` or why it cannot.

    Applies the module's policy: zero sectors or a start at/after the image end give a
    reason string (skip); an end past the image end is clipped with a note.
    """
    if sectors <= 0:
        return "empty (no sectors)"
    offset = start_sector * sector_size
    size = sectors * sector_size
    if offset >= disk_size:
        return f"starts at byte {offset}, at or past the end of the image ({disk_size} bytes)"
    if offset + size > disk_size:
        missing = offset + size - disk_size
        note = f"clipped: {human_size(missing)} of it lie past the end of the image"
        return offset, disk_size - offset, (note,)
    return offset, size, ()
