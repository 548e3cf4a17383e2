"""The FAT driver's parts on their own: dates, checksums, names, FAT12 packing, directories.

No image tools needed: directories are built entry by entry from the library's own
construct declarations (``DIR_ENTRY.pack``, ``LDIR_ENTRY.pack``), and the expected values
come from independent reference computations (``calendar``, the specification's checksum
loop), not from the driver's code.
"""

from __future__ import annotations

import calendar
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import Unsupported
from drivers.fat.directory import Segment, count_subdirectories, parse_directory
from drivers.fat.layout import DIR_ENTRY, LDIR_ENTRY
from drivers.fat.names import ShortNameDecoder, lfn_checksum, long_name
from drivers.fat.options import FatOptions, parse_options
from drivers.fat.table import ClusterChain, _decode_fat12
from drivers.fat.times import fat_to_unix

# -- dates ------------------------------------------------------------------------------------


def test_dates_match_the_calendar() -> None:
    for year in range(128):  # 1980 .. 2107, 2100 not a leap year
        for month in range(1, 13):
            for day in (1, 15, calendar.monthrange(1980 + year, month)[1]):
                date = year << 9 | month << 5 | day
                for hour, minute, second in ((0, 0, 0), (23, 59, 58), (12, 34, 56)):
                    tm = hour << 11 | minute << 5 | second // 2
                    expected = calendar.timegm((1980 + year, month, day, hour, minute, second))
                    assert fat_to_unix(tm, date, 0) == expected


def test_out_of_range_fields_as_the_kernel() -> None:
    """Month and day 0 count as 1; months 13-15 add no days; times just add up."""
    base = calendar.timegm((1990, 1, 1, 0, 0, 0))
    year = 10 << 9
    assert fat_to_unix(0, year | 0 << 5 | 0, 0) == base
    assert fat_to_unix(0, year | 13 << 5 | 1, 0) == base
    assert (
        fat_to_unix(31 << 11 | 63 << 5 | 31, year | 1 << 5 | 1, 0)
        == base + 31 * 3600 + 63 * 60 + 62
    )
    assert fat_to_unix(0, year | 1 << 5 | 1, -3600) == base - 3600


# -- checksums and long names -----------------------------------------------------------------


def _reference_checksum(name: bytes) -> int:
    """The specification's ChkSum loop, transcribed."""
    total = 0
    for byte in name:
        total = ((0x80 if total & 1 else 0) + (total >> 1) + byte) & 0xFF
    return total


@pytest.mark.parametrize(
    "name", [b"README  TXT", b"ALONGN~1TXT", b"\xe5\x01\xff        ", bytes(11)]
)
def test_checksum(name: bytes) -> None:
    assert lfn_checksum(name) == _reference_checksum(name)


def _units(text: str) -> bytes:
    return text.encode("utf-16-le")


def test_long_name_ends_at_the_first_nul_unit() -> None:
    assert long_name(_units("hello") + b"\0\0" + b"\xff\xff" * 7) == "hello"
    assert long_name(_units("thirteen char")) == "thirteen char"  # no room for a NUL
    assert long_name(_units("A\u4100B") + b"\0\0") == "A\u4100B"  # 41 00 00 41: not a NUL unit
    assert long_name(b"\0\0" + _units("x")) == ""


def test_long_name_surrogates() -> None:
    assert long_name(_units("a😀b")) == "a😀b"
    lone = _units("a") + b"\x3d\xd8" + _units("b")  # a high surrogate without its pair
    assert long_name(lone) == "ab"


# -- short names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "flags", "rule", "shown"),
    [
        (b"README  TXT", 0x00, "mixed", "README.TXT"),
        (b"README  TXT", 0x18, "mixed", "readme.txt"),
        (b"README  TXT", 0x08, "mixed", "readme.TXT"),
        (b"README  TXT", 0x10, "mixed", "README.txt"),
        (b"README  TXT", 0x18, "win95", "README.TXT"),
        (b"README  TXT", 0x00, "lower", "readme.txt"),
        (b"NOEXT      ", 0x00, "mixed", "NOEXT"),
        (b"A B     C  ", 0x00, "mixed", "A B.C"),
        (b"AB\0CD   TXT", 0x00, "mixed", "AB.TXT"),
        (b"        TXT", 0x00, "mixed", ".TXT"),
        (b"           ", 0x00, "mixed", ""),
        (b"\x05BC     TXT", 0x00, "mixed", "\u03c3BC.TXT"),  # 0x05 stands for 0xE5: sigma
        (b"\x80BC     TXT", 0x18, "mixed", "\u00e7bc.txt"),  # C cedilla, lowered
        (b"\x9aBC     TXT", 0x00, "mixed", "\u00dcBC.TXT"),
    ],
)
def test_short_names(raw: bytes, flags: int, rule: str, shown: str) -> None:
    assert ShortNameDecoder("cp437", rule)(raw, flags) == shown.encode()


def test_short_names_in_other_code_pages() -> None:
    assert ShortNameDecoder("cp850")(b"\xe5BC     TXT", 0) == "\u00d5BC.TXT".encode()
    assert ShortNameDecoder("cp932")(b"\x82\xa0      TXT", 0) == "\u3042.TXT".encode()
    assert ShortNameDecoder("cp932")(b"\x82\xa0A     TXT", 0x08) == "\u3042a.TXT".encode()


# -- FAT12 and chains -------------------------------------------------------------------------


def test_fat12_packing() -> None:
    entries = [0xFF8, 0xFFF, 0x003, 0x004, 0xFFF, 0x123, 0xABC, 0x000, 0x7F7]
    raw = bytearray()
    for k in range(0, len(entries), 2):
        pair = entries[k] | (entries[k + 1] << 12 if k + 1 < len(entries) else 0)
        raw += pair.to_bytes(3, "little")
    assert list(_decode_fat12(bytes(raw), len(entries))) == entries


def test_chain_extents() -> None:
    # clusters 10 11 12 | 40 | 20 21
    chain = ClusterChain(array("I", [10, 40, 20]), array("I", [0, 3, 4]), 6, True, "")
    assert chain.disk_clusters() == [10, 11, 12, 40, 20, 21]
    assert chain.extents(0, 6) == [(10, 3), (40, 1), (20, 2)]
    assert chain.extents(1, 3) == [(11, 2), (40, 1)]
    assert chain.extents(5, 1) == [(21, 1)]


# -- options ----------------------------------------------------------------------------------


def test_option_defaults_and_masks() -> None:
    defaults = parse_options({"tz": "UTC"})
    assert defaults == FatOptions()
    both = parse_options({"tz": "UTC", "umask": "077"})
    assert (both.fmask, both.dmask) == (0o077, 0o077)
    split = parse_options({"tz": "UTC", "umask": "077", "fmask": "0133"})
    assert (split.fmask, split.dmask) == (0o133, 0o077)
    assert parse_options({"time_offset": "-120"}).tz_offset == 7200
    assert parse_options({"codepage": "850"}).codec == "cp850"
    with pytest.raises(Unsupported):
        parse_options({"uid": "12x"})


# -- directories built entry by entry ---------------------------------------------------------


def _short(name: bytes, attr: int = 0x20, nt: int = 0, cluster: int = 0, size: int = 0) -> bytes:
    return DIR_ENTRY.pack(
        DIR_Name=name,
        DIR_Attr=attr,
        DIR_NTRes=nt,
        DIR_CrtTimeTenth=0,
        DIR_CrtTime=0,
        DIR_CrtDate=0,
        DIR_LstAccDate=0,
        DIR_FstClusHI=0,
        DIR_WrtTime=0,
        DIR_WrtDate=0x21,
        DIR_FstClusLO=cluster,
        DIR_FileSize=size,
    )


def _long(text: str, short: bytes, checksum: int | None = None) -> list[bytes]:
    """The long name entries of ``text`` for ``short``, in the order they are stored."""
    units = text.encode("utf-16-le") + b"\0\0"
    units += b"\xff" * (-len(units) % 26)
    slots = len(units) // 26
    total = lfn_checksum(short) if checksum is None else checksum
    out = []
    for n in range(slots, 0, -1):
        part = units[(n - 1) * 26 : n * 26]
        out.append(
            LDIR_ENTRY.pack(
                LDIR_Ord=n | (0x40 if n == slots else 0),
                LDIR_Name1=part[:10],
                LDIR_Attr=0x0F,
                LDIR_Type=0,
                LDIR_Chksum=total,
                LDIR_Name2=part[10:22],
                LDIR_FstClusLO=0,
                LDIR_Name3=part[22:],
            )
        )
    return out


def _parse(*entries: bytes) -> list[bytes]:
    data = b"".join(entries)
    listing = parse_directory(data, [Segment(0, 4096, len(data))], ShortNameDecoder("cp437"), 0)
    return listing.names


def test_long_names_and_short_names() -> None:
    one = b"MIXED   TXT"
    two = b"ALONGN~1TXT"
    assert _parse(
        *_long("Mixed.Txt", one),
        _short(one),
        *_long("a long name that is long.txt", two),
        _short(two),
        _short(b"lower   txt", nt=0x18),
    ) == [b"Mixed.Txt", b"a long name that is long.txt", b"lower.txt"]


def test_long_name_edge_cases_as_fat_parse_long() -> None:
    one, two = b"ONE     TXT", b"TWO     TXT"
    long_one = _long("the first long name.txt", one)
    assert len(long_one) == 2
    # A sequence interrupted by a new one: the new one wins.
    assert _parse(long_one[0], *_long("second", two), _short(two)) == [b"second"]
    # A continuation entry without its first entry: skipped; the short entry keeps its name.
    assert _parse(long_one[1], _short(one)) == [b"ONE.TXT"]
    # A wrong checksum: the short name.
    assert _parse(*_long("x", one, checksum=7), _short(one)) == [b"ONE.TXT"]
    # A deleted entry between the long name and its short entry.
    assert _parse(*long_one, _short(b"\xe5" + one[1:]), _short(two)) == [b"TWO.TXT"]
    # A volume label between them.
    assert _parse(*long_one, _short(b"LABEL      ", attr=0x08), _short(one)) == [b"ONE.TXT"]
    # The end marker stops everything after it.
    assert _parse(_short(one), bytes(32), _short(two)) == [b"ONE.TXT"]
    # "." and ".." are not listed; blank names are skipped.
    dots = _parse(_short(b".          ", 0x10), _short(b"..         ", 0x10), _short(b" " * 11))
    assert dots == []


def test_directory_counts_and_positions() -> None:
    data = b"".join(
        [
            _short(b".          ", 0x10),
            _short(b"..         ", 0x10, cluster=7),
            _short(b"SUB        ", 0x10, cluster=9),
            _short(b"VOLUME     ", 0x08),
            _short(b"FILE    TXT", size=3),
        ]
    )
    segments = [Segment(0, 1000 * 32, 64), Segment(64, 5000 * 32, 96)]
    listing = parse_directory(data, segments, ShortNameDecoder("cp437"), 160)
    assert listing.names == [b"SUB", b"FILE.TXT"]
    assert listing.subdirs == 3
    assert list(listing.positions) == [5000 * 32, 5000 * 32 + 64]
    assert [listing.next_offset(i) for i in range(2)] == [96, 160]
    assert [listing.start_index(offset) for offset in (0, 95, 96, 159, 160)] == [0, 0, 1, 1, 2]
    assert listing.dotdot is not None and listing.dotdot[10] == 7
    assert listing.label == b"VOLUME     "
    assert count_subdirectories(data) == 3


#: Directory entries as a parser meets them: each first byte and DIR_Attr drawn from the
#: values that change the outcome (end marker, deleted, dot, long name, label, directory).
_ENTRY = st.builds(
    lambda first, attr, rest: bytes([first]) + rest[:10] + bytes([attr]) + rest[10:],
    st.sampled_from([0x00, 0xE5, 0x2E, 0x20, 0x41, 0x05, 0x4F]),
    st.sampled_from([0x00, 0x01, 0x08, 0x0F, 0x10, 0x11, 0x18, 0x1F, 0x30, 0xFF]),
    st.binary(min_size=20, max_size=20),
)


@given(st.lists(_ENTRY, max_size=40), st.binary(max_size=31))
def test_subdirectories_are_counted_as_a_full_parse_counts_them(
    entries: list[bytes], tail: bytes
) -> None:
    """getattr of a directory counts its subdirectories without parsing its names."""
    data = b"".join(entries) + tail
    listing = parse_directory(data, [Segment(0, 0, len(data))], ShortNameDecoder("cp437"), 0)
    assert count_subdirectories(data) == listing.subdirs
