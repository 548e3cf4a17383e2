"""The vfat mount options this driver understands, checked as the kernel's parse_options.

Options arrive as ``name -> value`` strings ("" for a flag).  Defaults are the kernel's
with a umask of 022 and owner root: a library has no mounting process to take them from
(the FUSE layer applies its own ``uid=``, ``gid=`` and ``umask=`` over every format).

* ``uid=N``, ``gid=N``: owner and group of every inode (default 0).
* ``umask=OOO``: sets both ``fmask`` and ``dmask``; ``fmask=OOO`` the permission bits
  cleared on files, ``dmask=OOO`` on directories (default 022).
* ``showexec``: files get execute bits only for the extensions EXE, COM and BAT.
* ``rodir``: the read-only attribute removes write bits from directories too (by default
  it is only a flag for applications on a directory, as in the kernel).
* ``usefree``: statfs takes the free cluster count from the FAT32 FSInfo sector instead
  of counting free entries in the FAT (when the count is plausible), as the kernel's
  option.
* ``codepage=NNN``: the OEM code page of short names (Python codec ``cpNNN``; 437 by
  default).
* ``iocharset=utf8``, ``utf8``: accepted; names are always returned in UTF-8 (other
  iocharsets are refused rather than silently ignored).
* ``shortname=lower|win95|winnt|mixed``: how short names without a long name are shown
  (``mixed``, the kernel's default, and ``winnt`` honour the NT lower-case flags).
* ``tz=UTC``: timestamps are UTC; ``time_offset=M``: they are M minutes east of UTC
  (-1440..1440).  By default they are in this process's local time zone, at its current
  offset (the kernel uses its ``sys_tz``, which systemd leaves at UTC unless the RTC
  keeps local time).
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from dataclasses import dataclass

from drivers.base import Unsupported
from drivers.fat.names import DISPLAY_RULES
from drivers.fat.times import local_offset

__all__ = ["ACCEPTED_OPTIONS", "FatOptions", "parse_options"]

ACCEPTED_OPTIONS = frozenset(
    {
        "uid",
        "gid",
        "umask",
        "dmask",
        "fmask",
        "showexec",
        "rodir",
        "usefree",
        "codepage",
        "iocharset",
        "utf8",
        "shortname",
        "tz",
        "time_offset",
    }
)
DEFAULT_MASK = 0o022
DEFAULT_CODEPAGE = 437
_ID_MAX = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel
_TRUE = ("", "1", "yes", "true")


@dataclass(frozen=True, slots=True)
class FatOptions:
    uid: int = 0
    gid: int = 0
    fmask: int = DEFAULT_MASK
    dmask: int = DEFAULT_MASK
    showexec: bool = False
    rodir: bool = False
    usefree: bool = False
    codec: str = f"cp{DEFAULT_CODEPAGE}"
    shortname: str = "mixed"
    tz_offset: int = 0  # seconds added to on-disk (local) times to get UTC


def _number(name: str, value: str, base: int, high: int) -> int:
    try:
        number = int(value, base)
    except ValueError:
        number = -1
    if not 0 <= number <= high or value.startswith(("+", "-")):
        raise Unsupported(f"vfat: bad value for option {name}={value!r}")
    return number


def _codec(value: str) -> str:
    number = _number("codepage", value, 10, 99999)
    name = f"cp{number}"
    try:
        codecs.lookup(name)
    except LookupError:
        raise Unsupported(f"vfat: codepage {name} not found") from None
    return name


def _time_offset(options: Mapping[str, str]) -> int:
    if "time_offset" in options:
        value = options["time_offset"]
        try:
            minutes = int(value, 10)
        except ValueError:
            minutes = 1 << 20
        if not -24 * 60 <= minutes <= 24 * 60:
            raise Unsupported(f"vfat: bad value for option time_offset={value!r}")
        return -minutes * 60
    if "tz" in options:
        if options["tz"] != "UTC":
            raise Unsupported(f"vfat: bad value for option tz={options['tz']!r} (only tz=UTC)")
        return 0
    return local_offset()


def _check_charset(options: Mapping[str, str]) -> None:
    charset = options.get("iocharset", "utf8")
    if charset.lower() not in ("utf8", "utf-8"):
        raise Unsupported(f"vfat: iocharset={charset} is not supported: names are always UTF-8")
    if options.get("utf8", "") not in _TRUE:
        raise Unsupported("vfat: utf8=0 is not supported: names are always UTF-8")


def _flag(options: Mapping[str, str], name: str) -> bool:
    if name not in options:
        return False
    if options[name] != "":
        raise Unsupported(f"vfat: option {name} takes no value")
    return True


def parse_options(options: Mapping[str, str]) -> FatOptions:
    """Check and convert the driver options; Unsupported names the one that is wrong."""
    unknown = set(options) - ACCEPTED_OPTIONS
    if unknown:
        raise Unsupported(f"vfat does not know option(s): {', '.join(sorted(unknown))}")
    _check_charset(options)
    mask = _number("umask", options["umask"], 8, 0o7777) if "umask" in options else DEFAULT_MASK
    shortname = options.get("shortname", "mixed")
    if shortname not in DISPLAY_RULES:
        raise Unsupported(f"vfat: bad value for option shortname={shortname!r}")
    return FatOptions(
        uid=_number("uid", options["uid"], 10, _ID_MAX) if "uid" in options else 0,
        gid=_number("gid", options["gid"], 10, _ID_MAX) if "gid" in options else 0,
        fmask=_number("fmask", options["fmask"], 8, 0o7777) if "fmask" in options else mask,
        dmask=_number("dmask", options["dmask"], 8, 0o7777) if "dmask" in options else mask,
        showexec=_flag(options, "showexec"),
        rodir=_flag(options, "rodir"),
        usefree=_flag(options, "usefree"),
        codec=_codec(options["codepage"]) if "codepage" in options else f"cp{DEFAULT_CODEPAGE}",
        shortname=shortname,
        tz_offset=_time_offset(options),
    )
