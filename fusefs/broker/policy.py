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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusefs.options import OptionError, parse_size

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


class PolicyError(Exception):
    """The policy file is unusable; the message says where."""


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
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    try:
        return _from_table(raw, path)
    except (TypeError, ValueError, OptionError) as exc:
        raise PolicyError(f"{path}: {exc}") from None


def _from_table(raw: dict[str, Any], path: str) -> Policy:
    known = {"callers", "filesystems", "images", "limits", "results"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown section(s): {', '.join(sorted(unknown))}")
    callers = _section(raw, "callers", {"uids", "gids"})
    fs = _section(raw, "filesystems", {"allowed", "trusted_only"})
    images = _section(raw, "images", {"trusted_directories", "max_size"})
    limits = _section(raw, "limits", {"mounts_per_user", "mounts_total", "memory_per_mount"})
    results = _section(raw, "results", {"target", "detached"})
    default = Policy()
    directories = tuple(_strings(images, "trusted_directories", ()))
    for directory in directories:
        if not os.path.isabs(directory):
            raise ValueError(f"trusted directory {directory!r} is not an absolute path")
    return Policy(
        uids=frozenset(_ints(callers, "uids")),
        gids=frozenset(_ints(callers, "gids")),
        allowed=_types(fs, "allowed", default.allowed),
        trusted_only=_types(fs, "trusted_only", frozenset()),
        trusted_directories=tuple(os.path.realpath(d) for d in directories),
        max_size=_size(images, "max_size", default.max_size),
        mounts_per_user=_count(limits, "mounts_per_user", default.mounts_per_user),
        mounts_total=_count(limits, "mounts_total", default.mounts_total),
        memory_per_mount=_size(limits, "memory_per_mount", default.memory_per_mount),
        target_results=_flag(results, "target", True),
        detached_results=_flag(results, "detached", True),
        source=str(Path(path)),
    )


def _section(raw: dict[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise TypeError(f"[{name}] must be a table")
    unknown = set(table) - keys
    if unknown:
        raise ValueError(f"[{name}]: unknown key(s): {', '.join(sorted(unknown))}")
    return {f"{name}.{k}": v for k, v in table.items()} | {"": name}


def _get(table: dict[str, Any], key: str) -> Any:
    return table.get(f"{table['']}.{key}")


def _strings(table: dict[str, Any], key: str, default: tuple[str, ...]) -> list[str]:
    value = _get(table, key)
    if value is None:
        return list(default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"[{table['']}] {key} must be a list of strings")
    return value


def _types(table: dict[str, Any], key: str, default: frozenset[str]) -> frozenset[str]:
    names = _strings(table, key, tuple(default))
    unknown = [n for n in names if n not in TYPE_NAMES]
    if unknown:
        raise ValueError(f"[{table['']}] {key}: unknown file system type(s) {unknown}")
    return frozenset(names)


def _ints(table: dict[str, Any], key: str) -> list[int]:
    value = _get(table, key) or []
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise TypeError(f"[{table['']}] {key} must be a list of ids")
    return value


def _count(table: dict[str, Any], key: str, default: int) -> int:
    value = _get(table, key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"[{table['']}] {key} must be a count")
    return value


def _size(table: dict[str, Any], key: str, default: int) -> int:
    value = _get(table, key)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        return parse_size(value, f"[{table['']}] {key}")
    raise TypeError(f'[{table[""]}] {key} must be a size such as "4G"')


def _flag(table: dict[str, Any], key: str, default: bool) -> bool:
    value = _get(table, key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise TypeError(f"[{table['']}] {key} must be true or false")
    return value
