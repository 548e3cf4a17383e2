"""mount(8)-style option strings (``-o ro,uid=1000,offset=1M``) parsed into one value.

Options fall in three groups:

* generic ones pyfsmount itself implements (owners, umask, offset, allow_other, ...);
* VFS flags that mount(8), fstab and mount.fuse3 pass along (``nosuid``, ``noatime``,
  ``nofail``, ``x-systemd.*``): applied where they mean something, accepted otherwise;
* everything else goes to the driver, which refuses what it does not know
  (``noload`` for ext4), so a typo is an error rather than silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fusefs.watchdog import DEFAULT_TIMEOUT

#: Default busy-polling window (fusefs.busypoll): covers the pause between a caller's
#: consecutive requests.  Declared here so that the launcher, which parses options,
#: does not import the driver's event loop.
DEFAULT_WINDOW_US = 200

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800

#: Flags that toggle mount(2) bits, as mount(8) names them: name -> (bit, set?).
FLAG_OPTIONS: dict[str, tuple[int, bool]] = {
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "noatime": (MS_NOATIME, True),
    "nodiratime": (MS_NODIRATIME, True),
}

#: Accepted and meaningless for a read-only FUSE mount (fstab and helper noise).
IGNORED_OPTIONS = frozenset(
    {
        "ro", "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group",
        "_netdev", "nofail", "relatime", "norelatime", "strictatime", "atime", "diratime",
        "lazytime", "nolazytime", "sync", "async", "dirsync", "loop", "silent",
        "loud", "default_permissions", "nouser_xattr", "user_xattr",
    }
)

SIZE_SUFFIXES = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


class OptionError(ValueError):
    """A mount option that is malformed or refused; the message is shown to the user."""


@dataclass
class MountOptions:
    """Everything ``-o`` can say, with the defaults pyfsmount uses."""

    fs_type: str | None = None
    offset: int = 0
    #: A partition of a whole-disk image, by its Linux number (None: the first usable).
    partition: int | None = None
    fsname: str | None = None
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    #: Untrusted images never get setuid or device semantics unless asked for.
    flags: int = MS_RDONLY | MS_NOSUID | MS_NODEV
    sandbox: bool = True
    max_memory: int = 512 * 2**20
    #: Microseconds the driver keeps polling for the next request (fusefs.busypoll).
    busy_poll_us: int = DEFAULT_WINDOW_US
    #: CPU seconds one request may take before it is abandoned with EIO (0: no limit).
    request_timeout: float = DEFAULT_TIMEOUT
    debug: bool = False
    driver_options: dict[str, str] = field(default_factory=dict)


def parse_size(text: str, what: str) -> int:
    """``4096``, ``1M``, ``2g``, ``0x1000`` -> bytes."""
    match = re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)([kKmMgGtT]?)(?:i?[bB])?", text.strip())
    if not match:
        raise OptionError(f"{what}: '{text}' is not a size (e.g. 1048576, 1M, 0x100000)")
    return int(match.group(1), 0) * SIZE_SUFFIXES[match.group(2).lower()]


def parse_id(text: str, what: str) -> int:
    if not text.isdigit() or int(text) >= 2**32 - 1:
        raise OptionError(f"{what}: '{text}' is not a numeric id")
    return int(text)


def parse_count(text: str, what: str, maximum: int) -> int:
    """A decimal number from 0 to ``maximum``."""
    if not text.isdigit() or int(text) > maximum:
        raise OptionError(f"{what}: '{text}' is not a number from 0 to {maximum}")
    return int(text)


def parse_seconds(text: str, what: str) -> float:
    """A duration in seconds, decimals allowed (``2``, ``0.5``); 0 means no limit."""
    if not re.fullmatch(r"\d+(\.\d+)?", text) or float(text) > 86400:
        raise OptionError(f"{what}: '{text}' is not a number of seconds (e.g. 5, 0.5)")
    return float(text)


def parse_octal(text: str, what: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise OptionError(f"{what}: '{text}' is not an octal mode") from None
    if not 0 <= value <= 0o7777:
        raise OptionError(f"{what}: '{text}' is out of range")
    return value


def split_option_string(text: str) -> list[tuple[str, str | None]]:
    """``a,b=c`` -> [("a", None), ("b", "c")]; empty items are skipped."""
    pairs: list[tuple[str, str | None]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        pairs.append((name, value if sep else None))
    return pairs


def parse_options(option_strings: list[str], base: MountOptions | None = None) -> MountOptions:
    """Fold every ``-o`` string, in order (later ones win), into MountOptions."""
    opts = base or MountOptions()
    for text in option_strings:
        for name, value in split_option_string(text):
            _apply(opts, name, value)
    return opts


def _require(name: str, value: str | None) -> str:
    if value is None or value == "":
        raise OptionError(f"option '{name}' needs a value ({name}=...)")
    return value


def _apply(opts: MountOptions, name: str, value: str | None) -> None:
    if name == "rw":
        raise OptionError("pyfsmount mounts read-only; option 'rw' is refused")
    if name in FLAG_OPTIONS and value is None:
        bit, on = FLAG_OPTIONS[name]
        opts.flags = (opts.flags | bit) if on else (opts.flags & ~bit)
    elif (name in IGNORED_OPTIONS and value is None) or name.startswith("x-") or name == "comment":
        pass
    elif name == "allow_other":
        opts.allow_other = True
    elif name == "debug":
        opts.debug = True
    elif name in ("uid", "gid"):
        setattr(opts, name, parse_id(_require(name, value), name))
    elif name == "umask":
        opts.umask = parse_octal(_require(name, value), name)
    elif name == "fsname":
        opts.fsname = _require(name, value)
    elif name in ("offset", "max_memory"):
        setattr(opts, name, parse_size(_require(name, value), name))
    elif name == "request_timeout":
        opts.request_timeout = parse_seconds(_require(name, value), name)
    elif name == "busy_poll":
        opts.busy_poll_us = parse_count(_require(name, value), name, 1_000_000)
    elif name == "partition":
        number = _require(name, value)
        if not number.isdigit() or not 1 <= int(number) <= 256:
            raise OptionError(f"partition= takes a partition number (1-256), not '{number}'")
        opts.partition = int(number)
    elif name == "sandbox":
        if value not in ("on", "off"):
            raise OptionError("sandbox= takes 'on' or 'off'")
        opts.sandbox = value == "on"
    elif name in ("subtype", "blksize", "max_read", "fd", "rootmode", "user_id", "group_id"):
        raise OptionError(f"option '{name}' is set by pyfsmount itself")
    else:
        opts.driver_options[name] = "" if value is None else value

