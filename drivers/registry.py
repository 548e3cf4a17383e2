"""The one place that lists the formats: probe an image and open it with the right driver."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

from drivers.base import BlockReader, Unsupported, Volume
from drivers.partitions import pick_partition, read_partition_table, read_partitions

#: Every driver, as "module:class", in probing order.
DRIVERS: tuple[str, ...] = (
    "drivers.ext4:Ext4Volume",
    "drivers.squashfs:SquashfsVolume",
    # Last: a FAT boot sector has the weakest signature of the three.
    "drivers.fat:FatVolume",
)


def driver_classes() -> list[type[Volume]]:
    classes = []
    for spec in DRIVERS:
        module_name, class_name = spec.split(":")
        classes.append(getattr(importlib.import_module(module_name), class_name))
    return classes


def driver_for_type(fs_type: str) -> type[Volume]:
    """The driver serving ``-t fs_type`` (its own name or an alias such as ext2)."""
    for cls in driver_classes():
        if fs_type == cls.fs_type or fs_type in cls.fs_aliases:
            return cls
    known = sorted({n for c in driver_classes() for n in (c.fs_type, *c.fs_aliases)})
    raise Unsupported(f"unknown file system type '{fs_type}' (known: {', '.join(known)})")


def probe(reader: BlockReader) -> type[Volume]:
    """The driver whose magic the image carries."""
    for cls in driver_classes():
        if cls.probe(reader):
            return cls
    raise Unsupported("no supported file system found in the image")


def open_volume(
    reader: BlockReader, fs_type: str | None = None, options: Mapping[str, str] | None = None
) -> Volume:
    """Open the volume on ``reader``; ``fs_type`` (if given) must match what the image is."""
    detected = probe(reader)
    if fs_type is not None and driver_for_type(fs_type) is not detected:
        raise Unsupported(f"the image holds {detected.fs_type}, not {fs_type}")
    options = dict(options or {})
    unknown = set(options) - detected.accepted_options
    if unknown:
        names = ", ".join(sorted(unknown))
        raise Unsupported(f"{detected.fs_type} does not know option(s): {names}")
    return detected.open(reader, options)


def open_disk(
    disk: BlockReader,
    fs_type: str | None = None,
    options: Mapping[str, str] | None = None,
    partition: int | None = None,
) -> Volume:
    """Open a bare file system, or one inside a partitioned disk image.

    ``partition`` picks a partition by its Linux number; without it, a disk with a
    partition table opens its first partition holding a file system of ``fs_type`` (or
    of any supported type), as the issue's users expect from ``pyfsmount disk.img DIR``.
    """
    partitions = read_partitions(disk)
    if not partitions:
        if partition is not None:
            raise Unsupported(f"partition={partition}: the image has no partition table")
        return open_volume(disk, fs_type, options)
    wanted = None if fs_type is None else driver_for_type(fs_type)

    def holds_wanted(reader: BlockReader) -> bool:
        try:
            found = probe(reader)
        except Unsupported:
            return False
        return wanted is None or found is wanted

    chosen = pick_partition(partitions, partition, holds_wanted)
    return open_volume(chosen.reader(), fs_type, options)


def describe_disk(disk: BlockReader) -> list[str]:
    """``pyfsmount --list``: the partition table, each partition's detected file system."""
    table = read_partition_table(disk)
    if table is None:
        return [f"no partition table; the image holds {detected_type(disk)}"]
    header, *rest = table.describe()
    listed = [
        f"  {part.describe()}" + ("" if part.container else f": {detected_type(part.reader())}")
        for part in table.partitions
    ]
    return [header, *listed, *rest[len(listed) :]]


def detected_type(reader: BlockReader) -> str:
    """The name of the format whose magic ``reader`` carries, or a dash."""
    try:
        return probe(reader).fs_type
    except Unsupported:
        return "-"


def open_image(
    path: str | os.PathLike[str],
    fs_type: str | None = None,
    offset: int = 0,
    options: Mapping[str, str] | None = None,
) -> Volume:
    """Library entry point: open an image file read-only and return its volume.

    The file descriptor lives as long as the volume (it is closed at interpreter exit).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return open_volume(BlockReader(fd, offset), fs_type, options)
    except BaseException:
        os.close(fd)
        raise
