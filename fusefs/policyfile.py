"""TOML policy files (the broker's, the interceptor's): reading them, and typed keys.

Every mistake is a :class:`PolicyError` that names the file, the section and the key, so
a service refuses to start with one line saying what to fix.
"""

from __future__ import annotations

import tomllib
from typing import Any

from fusefs.options import OptionError, parse_size


class PolicyError(Exception):
    """The policy file is unusable; the message says where."""


def load_toml(path: str, known_sections: set[str]) -> dict[str, Any]:
    """The file's tables, all of them among ``known_sections`` (PolicyError if not)."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    unknown = set(raw) - known_sections
    if unknown:
        raise PolicyError(f"{path}: unknown section(s): {', '.join(sorted(unknown))}")
    return raw


class Section:
    """One ``[name]`` table, with only ``keys`` in it; its getters check the types and
    raise TypeError or ValueError naming the key (the loader adds the file)."""

    def __init__(self, raw: dict[str, Any], name: str, keys: set[str]) -> None:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise TypeError(f"[{name}] must be a table")
        unknown = set(table) - keys
        if unknown:
            raise ValueError(f"[{name}]: unknown key(s): {', '.join(sorted(unknown))}")
        self.name, self.table = name, table

    def strings(self, key: str, default: tuple[str, ...]) -> list[str]:
        value = self.table.get(key)
        if value is None:
            return list(default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"[{self.name}] {key} must be a list of strings")
        return value

    def ids(self, key: str) -> list[int]:
        value = self.table.get(key) or []
        if not isinstance(value, list) or not all(_is_count(v) for v in value):
            raise TypeError(f"[{self.name}] {key} must be a list of ids")
        return value

    def count(self, key: str, default: int) -> int:
        value = self.table.get(key)
        if value is None:
            return default
        if not _is_count(value):
            raise TypeError(f"[{self.name}] {key} must be a count")
        return int(value)

    def size(self, key: str, default: int) -> int:
        value = self.table.get(key)
        if value is None:
            return default
        if _is_count(value) and value > 0:
            return int(value)
        if isinstance(value, str):
            try:
                return parse_size(value, f"[{self.name}] {key}")
            except OptionError as exc:
                raise ValueError(str(exc)) from None
        raise TypeError(f'[{self.name}] {key} must be a size such as "4G"')

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise TypeError(f"[{self.name}] {key} must be true or false")
        return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
