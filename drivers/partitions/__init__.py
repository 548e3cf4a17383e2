"""Partition tables (MBR with logical partitions, GPT) of whole-disk images.

A pure parser like the file-system drivers: it reads only through a
:class:`~drivers.base.BlockReader`, returns plain frozen dataclasses, and raises only
:class:`~drivers.base.CorruptImage` (a table that cannot be used at all) and
:class:`~drivers.base.Unsupported` (choosing a partition that is not there).  Each
:class:`Partition` gives a BlockReader window on its byte range, which any driver of
:mod:`drivers.registry` can open.

Modules: ``layout`` (construct declarations with the UEFI spec's field names), ``mbr``
(sector 0: MBR, protective MBR or a bare file system's boot sector; the EBR chain),
``gpt`` (header checks, backup header, entries), ``model`` (the dataclasses and the
clip/skip policy), ``types`` (fdisk's names for partition types) and ``table`` (the
entry points).

Typical use::

    disk = BlockReader(fd)
    partitions = read_partitions(disk)
    if partitions:
        volume = open_volume(pick_partition(partitions, number).reader())
    else:
        volume = open_volume(disk)
"""

from drivers.partitions.model import Partition, PartitionTable, SkippedEntry
from drivers.partitions.table import pick_partition, read_partition_table, read_partitions

__all__ = [
    "Partition",
    "PartitionTable",
    "SkippedEntry",
    "pick_partition",
    "read_partition_table",
    "read_partitions",
]
