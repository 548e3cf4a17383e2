"""Entry points: read whatever partition table an image has, and choose a partition.

An image given to pyfsmount is either a bare file system or a whole disk.  Sector 0
tells which (:func:`drivers.partitions.mbr.sniff_boot_sector`): no boot signature or a
file system's boot sector means a bare image, and :func:`read_partitions` returns no
partitions, so the caller probes the whole image as before; a protective MBR means GPT;
anything else with the signature is an MBR.

Errors: an unreadable *entry* is never an error (it is skipped with a reason in
:attr:`PartitionTable.skipped`); a table that cannot be used at all -- a protective MBR
with neither GPT header valid -- is :class:`CorruptImage`, because mounting the whole
disk instead would only fail later with a less useful message.  Choosing a partition
that does not exist, or when none holds a known file system, is :class:`Unsupported`
with the list of partitions in the message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from drivers.base import BlockReader, DriverError, Unsupported
from drivers.partitions.gpt import read_gpt
from drivers.partitions.layout import MBR_SECTOR_SIZE
from drivers.partitions.mbr import read_mbr, sniff_boot_sector
from drivers.partitions.model import Partition, PartitionTable

__all__ = ["pick_partition", "read_partition_table", "read_partitions"]


def read_partition_table(disk: BlockReader) -> PartitionTable | None:
    """The partition table of the image on ``disk``, or None when it has none.

    None means sector 0 carries no table: a blank disk or a bare file system (a FAT,
    NTFS or exFAT boot sector is recognised as such, not as an MBR).
    """
    sector0 = disk.read_upto(0, MBR_SECTOR_SIZE)
    kind, _ = sniff_boot_sector(sector0)
    if kind == "protective":
        return read_gpt(disk)
    if kind == "mbr":
        return read_mbr(disk, sector0)
    return None


def read_partitions(disk: BlockReader) -> list[Partition]:
    """The partitions of the image on ``disk``; empty for a bare file system.

    Includes MBR extended partitions (``container=True``); :func:`pick_partition` never
    picks them on its own.
    """
    table = read_partition_table(disk)
    return [] if table is None else list(table.partitions)


def _listing(partitions: Sequence[Partition]) -> str:
    return "; ".join(p.describe() for p in partitions) or "none"


def _registry_probe(reader: BlockReader) -> bool:
    """Whether any registered driver recognises the file system on ``reader``."""
    from drivers import registry  # here, so that the registry may import this package

    try:
        registry.probe(reader)
    except Unsupported:
        return False
    return True


def pick_partition(
    partitions: Sequence[Partition],
    number: int | None = None,
    probe: Callable[[BlockReader], bool] | None = None,
) -> Partition:
    """Partition ``number`` if given, else the first whose file system ``probe`` knows.

    ``probe`` receives the partition's own BlockReader; by default it asks every driver
    of :mod:`drivers.registry`.  A probe raising a driver error counts as "no".
    Extended partitions are containers, not file systems: asking for one by number is
    refused with the reason, and the search skips them.
    """
    if number is not None:
        for part in partitions:
            if part.number == number:
                if part.container:
                    raise Unsupported(
                        f"partition {number} is an extended partition, a container of the "
                        f"logical partitions (5 and up): {_listing(partitions)}"
                    )
                return part
        raise Unsupported(f"there is no partition {number}; partitions: {_listing(partitions)}")
    probe = probe or _registry_probe
    for part in partitions:
        if part.container:
            continue
        try:
            if probe(part.reader()):
                return part
        except DriverError:
            continue
    raise Unsupported(
        f"no partition holds a supported file system; partitions: {_listing(partitions)}"
    )
