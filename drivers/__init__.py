"""Read-only file system parsers: pure Python, no FUSE, one package per format."""

from drivers.base import (
    Attr,
    BlockReader,
    CorruptImage,
    DirEntry,
    NoSuchAttribute,
    StatFs,
    Unsupported,
    Volume,
)
from drivers.registry import open_image, open_volume

__all__ = [
    "Attr",
    "BlockReader",
    "CorruptImage",
    "DirEntry",
    "NoSuchAttribute",
    "StatFs",
    "Unsupported",
    "Volume",
    "open_image",
    "open_volume",
]
