"""The one place that lists the formats: probe an image and open it with the right driver."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

from drivers.base import BlockReader, Unsupported, Volume

#: Every driver, as "module:class", in probing order.
DRIVERS: tuple[str, ...] = ("drivers.ext4:Ext4Volume", "drivers.squashfs:SquashfsVolume")


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
