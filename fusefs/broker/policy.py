"""What the broker allows, read from a TOML file (``pyfsmount-broker --policy PATH``).

::

    [callers]
    uids = []                 # who may ask (from SO_PEERCRED); empty: everyone
    gids = []                 # ... or members of these groups (primary group)

    [filesystems]
    allowed = ["ext2", "ext3", "ext4", "squashfs", "vfat"]   # from any image
    trusted_only = []         # only for images under a trusted directory

    [images]
    trusted_directories = []  # absolute paths, resolved from the image's own fd
    max_size = "64G"

    [limits]
    mounts_per_user = 16
    mounts_total = 256
    memory_per_mount = "512M" # the driver's address-space budget

    [results]
    target = true             # a mount at a directory the caller owns
    detached = true           # a detached mount fd (fsmount) the caller attaches

The default (no file) is the block above: every format pyfsmount parses, because each
image is parsed by a confined driver and nothing else; no trusted directory is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusefs.policyfile import PolicyError, Section, load_toml

__all__ = ["ALL_TYPES", "TYPE_NAMES", "Policy", "PolicyError", "load_policy"]

ALL_TYPES = ("ext2", "ext3", "ext4", "squashfs", "vfat")
#: What -t names may be asked for, mapped to the type the driver reports.
TYPE_NAMES = {
    "ext2": "ext4",
    "ext3": "ext4",
    "ext4": "ext4",
    "squashfs": "squashfs",
    "vfat": "vfat",
    "fat": "vfat",
    "msdos": "vfat",
}


@dataclass(frozen=True)
class Policy:
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    allowed: frozenset[str] = frozenset(ALL_TYPES)
    trusted_only: frozenset[str] = frozenset()
    trusted_directories: tuple[str, ...] = ()
    max_size: int = 64 << 30
    mounts_per_user: int = 16
    mounts_total: int = 256
    memory_per_mount: int = 512 << 20
    target_results: bool = True
    detached_results: bool = True
    source: str = field(default="(built-in default)", compare=False)

    def caller_allowed(self, uid: int, gid: int) -> bool:
        if uid == 0 or not (self.uids or self.gids):
            return True
        return uid in self.uids or gid in self.gids

    def type_refusal(self, fs_type: str, trusted: bool) -> str | None:
        """Why an image of ``fs_type`` may not be mounted, or None."""
        names = {fs_type} | {n for n, t in TYPE_NAMES.items() if t == fs_type}
        if names & self.allowed:
            return None
        if names & self.trusted_only:
            return None if trusted else f"{fs_type} images must be under a trusted directory"
        return f"{fs_type} is not an allowed file system type"

    def is_trusted(self, path: str) -> bool:
        return any(
            path == d or path.startswith(d.rstrip("/") + "/") for d in self.trusted_directories
        )


def load_policy(path: str | None) -> Policy:
    """The policy in ``path`` (TOML), or the default when None."""
    if path is None:
        return Policy()
    raw = load_toml(path, {"callers", "filesystems", "images", "limits", "results"})
    try:
        return _from_table(raw, path)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{path}: {exc}") from None


def _from_table(raw: dict[str, Any], path: str) -> Policy:
    callers = Section(raw, "callers", {"uids", "gids"})
    fs = Section(raw, "filesystems", {"allowed", "trusted_only"})
    images = Section(raw, "images", {"trusted_directories", "max_size"})
    limits = Section(raw, "limits", {"mounts_per_user", "mounts_total", "memory_per_mount"})
    results = Section(raw, "results", {"target", "detached"})
    default = Policy()
    directories = tuple(images.strings("trusted_directories", ()))
    for directory in directories:
        if not os.path.isabs(directory):
            raise ValueError(f"trusted directory {directory!r} is not an absolute path")
    return Policy(
        uids=frozenset(callers.ids("uids")),
        gids=frozenset(callers.ids("gids")),
        allowed=_types(fs, "allowed", default.allowed),
        trusted_only=_types(fs, "trusted_only", frozenset()),
        trusted_directories=tuple(os.path.realpath(d) for d in directories),
        max_size=images.size("max_size", default.max_size),
        mounts_per_user=limits.count("mounts_per_user", default.mounts_per_user),
        mounts_total=limits.count("mounts_total", default.mounts_total),
        memory_per_mount=limits.size("memory_per_mount", default.memory_per_mount),
        target_results=results.flag("target", True),
        detached_results=results.flag("detached", True),
        source=str(Path(path)),
    )


def _types(section: Section, key: str, default: frozenset[str]) -> frozenset[str]:
    names = section.strings(key, tuple(default))
    unknown = [n for n in names if n not in TYPE_NAMES]
    if unknown:
        raise ValueError(f"[{section.name}] {key}: unknown file system type(s) {unknown}")
    return frozenset(names)
