"""What the interceptor does with each mount, from the command line or a TOML file
(``pyfsmount-intercept --policy PATH``); flags given on the command line win::

    [types]
    redirect = ["ext2", "ext3", "ext4", "squashfs", "vfat", "msdos"]  # pyfsmount mounts
    allow = []              # types the kernel mounts itself (e.g. "tmpfs", "proc")

    [loop]
    emulate = true          # stand-ins for /dev/loop*; false: the host's loop devices

A type in neither list is refused (EPERM).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fusefs.policyfile import PolicyError, Section, load_toml

REDIRECT_DEFAULT = frozenset({"ext2", "ext3", "ext4", "squashfs", "vfat", "msdos"})
#: pyfsmount's name for each type it redirects.
DRIVER_TYPES = {"ext2": "ext4", "ext3": "ext4", "ext4": "ext4", "squashfs": "squashfs"}
DRIVER_TYPES |= {"vfat": "vfat", "msdos": "vfat"}

__all__ = ["DRIVER_TYPES", "REDIRECT_DEFAULT", "InterceptPolicy", "PolicyError", "load_policy"]


@dataclass(frozen=True)
class InterceptPolicy:
    """Which types become pyfsmount mounts, which the kernel may mount itself, and
    whether loop devices are emulated (fusefs.intercept.loop)."""

    redirect: frozenset[str] = REDIRECT_DEFAULT
    allow: frozenset[str] = frozenset()
    emulate_loop: bool = True

    def __post_init__(self) -> None:
        unknown = self.redirect - REDIRECT_DEFAULT
        if unknown:
            raise ValueError(f"redirect: pyfsmount cannot mount {', '.join(sorted(unknown))}")

    def replace(self, **changes: object) -> InterceptPolicy:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def load_policy(path: str | None) -> InterceptPolicy:
    """The policy in ``path``, or the default when None; PolicyError naming what is wrong."""
    if path is None:
        return InterceptPolicy()
    raw = load_toml(path, {"types", "loop"})
    try:
        types = Section(raw, "types", {"redirect", "allow"})
        loop = Section(raw, "loop", {"emulate"})
        return InterceptPolicy(
            redirect=frozenset(types.strings("redirect", tuple(REDIRECT_DEFAULT))),
            allow=frozenset(types.strings("allow", ())),
            emulate_loop=loop.flag("emulate", True),
        )
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{path}: {exc}") from None
