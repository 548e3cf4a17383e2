"""Names: 8.3 short names in the OEM code page, VFAT long names in UTF-16, both to UTF-8.

Short names are shown as the kernel's ``fat_parse_short`` shows them with its default
``shortname=mixed``: the base (8 bytes) and the extension (3 bytes) each end at a NUL
byte and lose their trailing spaces; a 0x05 first byte stands for 0xE5; the dot appears
only before a non-empty extension; ``DIR_NTRes`` bit 0x08 shows the base in lower case
and bit 0x10 the extension (what Windows NT writes for "readme.txt" instead of a long
name).  ``shortname=lower`` lowers every short name, ``shortname=win95`` shows them as
stored.  Bytes are decoded with the code page (``codepage=437`` by default, as the
kernel's CONFIG_FAT_DEFAULT_CODEPAGE); a byte it cannot decode shows as "?", as in the
kernel.  Lower-casing uses Python's case mapping of each single-byte character when the
result exists in the code page, where the kernel uses the code page's own table.

Long names are 13 UTF-16 units per slot; they end at the first NUL unit, and lone
surrogates are dropped (as ``utf16s_to_utf8s`` drops them).
"""

from __future__ import annotations

__all__ = ["ShortNameDecoder", "lfn_checksum", "long_name"]

from drivers.fat.layout import CASE_LOWER_BASE, CASE_LOWER_EXT, DIR_KANJI_E5

#: ``shortname=`` display rules (the kernel's VFAT_SFN_DISPLAY_*).
DISPLAY_RULES = ("lower", "win95", "winnt", "mixed")


#: The checksum's rotate-right-by-one of each possible running sum.
_ROTATE = bytes(((s & 1) << 7) | (s >> 1) for s in range(256))


def lfn_checksum(name: bytes) -> int:
    """The checksum of an 11-byte short name that its long name entries carry."""
    s = 0
    rotate = _ROTATE
    for byte in name[:11]:
        s = (rotate[s] + byte) & 0xFF
    return s


def long_name(units: bytes) -> str:
    """A long name from its UTF-16LE units (all slots in order), up to the first NUL."""
    end = units.find(b"\0\0")
    while end > 0 and end & 1:  # a NUL unit starts at an even offset
        end = units.find(b"\0\0", end + 1)
    if end < 0:
        end = len(units) & ~1
    try:
        return units[:end].decode("utf-16-le")
    except UnicodeDecodeError:  # lone surrogates: dropped, as utf16s_to_utf8s drops them
        text = units[:end].decode("utf-16-le", errors="surrogatepass")
        return "".join(ch for ch in text if not "\ud800" <= ch <= "\udfff")


class ShortNameDecoder:
    """Turns an 11-byte ``DIR_Name`` and its ``DIR_NTRes`` into the name shown, in UTF-8."""

    __slots__ = ("codec", "rule")

    def __init__(self, codec: str, rule: str = "mixed") -> None:
        self.codec = codec
        self.rule = rule

    def __call__(self, raw: bytes, nt_res: int) -> bytes:
        """The name shown for a short entry (b"" for a name that is all blanks)."""
        if raw[0] == DIR_KANJI_E5:
            raw = b"\xe5" + raw[1:]
        base = raw[:8].split(b"\0", 1)[0].rstrip(b" ")
        ext = raw[8:11].split(b"\0", 1)[0].rstrip(b" ")
        text = self._part(base, self._lower(nt_res, CASE_LOWER_BASE))
        if ext:
            text += "." + self._part(ext, self._lower(nt_res, CASE_LOWER_EXT))
        return text.encode("utf-8", errors="surrogatepass")

    def _lower(self, flags: int, bit: int) -> bool:
        if self.rule == "lower":
            return True
        if self.rule == "win95":
            return False
        return bool(flags & bit)

    def _part(self, part: bytes, lower: bool) -> str:
        if part.isascii() and self.codec in _ASCII_COMPATIBLE:
            return (part.lower() if lower else part).decode("ascii")
        text = part.decode(self.codec, errors="replace").replace("\ufffd", "?")
        if not lower:
            return text
        return "".join(self._lower_char(ch) for ch in text)

    def _lower_char(self, ch: str) -> str:
        low = ch.lower()
        if low == ch or len(low) != 1:
            return ch
        try:
            if len(ch.encode(self.codec)) == 1 and len(low.encode(self.codec)) == 1:
                return low
        except UnicodeEncodeError:
            pass
        return ch


#: Code pages whose bytes 0x01-0x7F are ASCII (every DOS code page Python has, but not
#: EBCDIC ones such as cp037, which nobody writes on a FAT volume but the option allows).
_ASCII_COMPATIBLE = frozenset(
    f"cp{n}"
    for n in (
        437, 720, 737, 775, 850, 852, 855, 856, 857, 858, 860, 861, 862, 863, 864, 865, 866,
        869, 874, 932, 936, 949, 950, 1250, 1251, 1252, 1253, 1254, 1255, 1256, 1257, 1258,
    )
)  # fmt: skip
