"""drivers.partitions against util-linux and gdisk: layouts, file systems inside, bad tables.

Disk images are made by ``sfdisk`` (MBR, logical partitions) and ``sgdisk`` (GPT), and
``sfdisk --json`` is the oracle for where each partition starts, how long it is, its type,
name, GUID and number.  Real ext4 (mke2fs -d), squashfs (mksquashfs) and FAT (mkfs.fat)
file systems are copied into partitions and opened through ``drivers.registry`` on the
partition's BlockReader.  Tables the tools refuse to write (EBR loops, absurd entry counts
and sizes, 4 KiB sectors) are written by the small independent encoders below, with
``struct`` rather than the module's own declarations, so that a misdeclared field cannot
hide in both the writer and the reader.

Every image is a sparse file of a few MiB; the whole module runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import registry
from drivers.base import BlockReader, CorruptImage, DriverError, Unsupported, Volume
from drivers.partitions import (
    Partition,
    PartitionTable,
    pick_partition,
    read_partition_table,
    read_partitions,
)
from drivers.partitions.layout import (
    EBR_CHAIN_MAX,
    GPT_HEADER,
    GPT_PARTITION_ENTRY,
    LEGACY_MBR,
    MBR_PARTITION_RECORD,
)
from drivers.partitions.mbr import sniff_boot_sector
from drivers.partitions.model import place
from drivers.partitions.types import GPT_TYPE_NAMES, MBR_TYPE_NAMES
from tests.support import commands

MiB = 1 << 20
SECTOR = 512

LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
EFI_SYSTEM = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
LINUX_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
DISK_GUID = "8E2B9D6A-1C3F-4A5B-9D7E-0F1A2B3C4D5E"
HELLO = b"hello from a partition\n"


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


#: sfdisk and friends in the C locale, so their output parses the same everywhere.
C_LOCALE = {**os.environ, "LC_ALL": "C"}


def run(*cmd: str | os.PathLike[str], stdin: str | None = None) -> str:
    return commands.run(*cmd, stdin=stdin, env=C_LOCALE)


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def put(image: Path, offset: int, src: Path) -> None:
    """Copy ``src`` into ``image`` at ``offset`` (dd conv=notrunc,sparse)."""
    data = src.read_bytes()
    with open(image, "r+b") as f:
        for pos in range(0, len(data), 64 * 1024):
            chunk = data[pos : pos + 64 * 1024]
            if any(chunk):
                f.seek(offset + pos)
                f.write(chunk)


def patch(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def sfdisk(image: Path, script: str) -> None:
    need("sfdisk")
    run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", image, stdin=script)


def sgdisk(image: Path, *args: str) -> None:
    need("sgdisk")
    run("sgdisk", *args, image)


def sfdisk_json(image: Path) -> dict[str, Any]:
    need("sfdisk")
    table: dict[str, Any] = json.loads(run("sfdisk", "--json", image))["partitiontable"]
    return table


def oracle_layout(table: dict[str, Any]) -> list[tuple[int, int, int, str]]:
    """(number, start sector, sectors, type) per partition, as sfdisk reports them."""
    out = []
    for p in table["partitions"]:
        number = int(re.search(r"(\d+)$", p["node"]).group(1))  # type: ignore[union-attr]
        kind = p["type"].upper() if table["label"] == "gpt" else f"{int(p['type'], 16):#04x}"
        out.append((number, p["start"], p["size"], kind))
    return sorted(out)


def layout(parts: Sequence[Partition]) -> list[tuple[int, int, int, str]]:
    return sorted((p.number, p.offset // SECTOR, p.size // SECTOR, p.type) for p in parts)


class Disk:
    """An image opened read-only, as the CLI would open it."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.reader = BlockReader(self.fd)

    def table(self) -> PartitionTable | None:
        return read_partition_table(self.reader)

    def partitions(self) -> list[Partition]:
        return read_partitions(self.reader)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def open_disk() -> Iterator[Any]:
    disks: list[Disk] = []

    def opener(path: Path) -> Disk:
        disks.append(Disk(path))
        return disks[-1]

    yield opener
    for disk in disks:
        disk.close()


# -- file systems to put into partitions ---------------------------------------------------------


@pytest.fixture(scope="module")
def fs_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small ext4, squashfs and FAT images, each holding hello.txt."""
    need("mke2fs", "mksquashfs", "mkfs.fat")
    root = tmp_path_factory.mktemp("fs")
    src = root / "src"
    src.mkdir()
    (src / "hello.txt").write_bytes(HELLO)
    ext4 = root / "ext4.img"
    run("mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-d", src, ext4, "1M")
    squashfs = root / "squashfs.img"
    run("mksquashfs", src, squashfs, "-quiet", "-noappend", "-no-progress")
    fat = sparse(root / "fat.img", MiB)
    run("mkfs.fat", "-F", "12", fat)
    if shutil.which("mcopy"):
        run("mcopy", "-i", fat, src / "hello.txt", "::hello.txt")
    return {"ext4": ext4, "squashfs": squashfs, "fat": fat}


def read_hello(volume: Volume) -> bytes:
    ino = volume.lookup(volume.root_ino, b"hello.txt")
    return volume.read(ino, 0, 4096)


def fat_driver() -> type[Volume] | None:
    """The FAT driver: registered in drivers.registry, or at least importable from drivers.fat.

    None (and the FAT tests skip) while drivers/fat is not written yet.
    """
    names = {"vfat", "fat", "msdos"}

    def is_fat(cls: Any) -> bool:
        return (
            isinstance(cls, type)
            and issubclass(cls, Volume)
            and getattr(cls, "fs_type", None) is not None
            and (cls.fs_type in names or bool(names & cls.fs_aliases))
        )

    with contextlib.suppress(ImportError):
        for cls in registry.driver_classes():
            if is_fat(cls):
                return cls
    try:
        module = importlib.import_module("drivers.fat")
    except ImportError:
        return None
    return next((c for c in vars(module).values() if is_fat(c)), None)


def open_fat(driver: type[Volume], reader: BlockReader) -> Volume:
    assert driver.probe(reader)
    return driver.open(reader, {})


# -- independent encoders for tables the tools will not write ------------------------------------


def mbr_record(os_type: int, start: int, sectors: int, boot: int = 0) -> bytes:
    return struct.pack("<B3sB3sII", boot, b"\xff\xff\xfe", os_type, b"\xff\xff\xfe", start, sectors)


def mbr_sector(
    records: Sequence[bytes], disk_signature: int = 0x1234ABCD, code: bytes = b""
) -> bytes:
    table = b"".join(records).ljust(64, b"\0")
    return code.ljust(440, b"\0") + struct.pack("<IH", disk_signature, 0) + table + b"\x55\xaa"


def guid_le(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def gpt_header(
    my_lba: int,
    alternate_lba: int,
    first_usable: int,
    last_usable: int,
    entry_lba: int,
    count: int,
    entry_size: int,
    entries_crc: int,
    header_size: int = 92,
) -> bytes:
    """A GPT header with a correct HeaderCRC32 (UEFI 2.10 table 5-5, field by field)."""

    def build(crc: int) -> bytes:
        return struct.pack(
            "<8sIIIIQQQQ16sQIII",
            b"EFI PART",
            0x00010000,
            header_size,
            crc,
            0,
            my_lba,
            alternate_lba,
            first_usable,
            last_usable,
            guid_le(DISK_GUID),
            entry_lba,
            count,
            entry_size,
            entries_crc,
        )

    crc = zlib.crc32(build(0).ljust(header_size, b"\0")[:header_size])
    return build(crc)


def gpt_entry(type_guid: str, first: int, last: int, name: str = "", attrs: int = 0) -> bytes:
    part_guid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{first}-{last}-{name}")
    encoded = name.encode("utf-16-le")[:72].ljust(72, b"\0")
    return struct.pack(
        "<16s16sQQQ72s", guid_le(type_guid), part_guid.bytes_le, first, last, attrs, encoded
    )


def write_gpt(
    path: Path,
    sector_size: int,
    disk_sectors: int,
    entries: Sequence[bytes],
    count: int = 128,
    entry_size: int = 128,
    header_size: int = 92,
) -> Path:
    """A whole GPT disk: protective MBR, primary and backup headers and entry arrays."""
    array = b"".join(e.ljust(entry_size, b"\0") for e in entries).ljust(count * entry_size, b"\0")
    array_sectors = -(-len(array) // sector_size)
    last = disk_sectors - 1
    first_usable = 2 + array_sectors
    last_usable = last - 1 - array_sectors
    crc = zlib.crc32(array)
    sparse(path, disk_sectors * sector_size)
    pmbr = mbr_sector([mbr_record(0xEE, 1, min(last, 0xFFFFFFFF))], disk_signature=0)
    patch(path, 0, pmbr)
    args = (first_usable, last_usable)
    primary = gpt_header(1, last, *args, 2, count, entry_size, crc, header_size)
    backup = gpt_header(last, 1, *args, last - array_sectors, count, entry_size, crc, header_size)
    patch(path, sector_size, primary)
    patch(path, 2 * sector_size, array)
    patch(path, (last - array_sectors) * sector_size, array)
    patch(path, last * sector_size, backup)
    return path


def rewrite_header(path: Path, lba: int, **fields: int) -> None:
    """Change fields of the GPT header at ``lba`` (512-byte sectors) and fix its CRC."""
    with open(path, "r+b") as f:
        f.seek(lba * SECTOR)
        raw = bytearray(f.read(SECTOR))
        for name, value in fields.items():
            offset, width = GPT_SPEC_OFFSETS[name], GPT_FIELD_WIDTHS[name]
            raw[offset : offset + width] = value.to_bytes(width, "little")
        raw[16:20] = bytes(4)
        size = min(int.from_bytes(raw[12:16], "little"), SECTOR)
        raw[16:20] = struct.pack("<I", zlib.crc32(bytes(raw[:size])))
        f.seek(lba * SECTOR)
        f.write(raw)


#: GPT header field offsets as printed in the UEFI specification (table 5-5).
GPT_SPEC_OFFSETS = {
    "Signature": 0,
    "Revision": 8,
    "HeaderSize": 12,
    "HeaderCRC32": 16,
    "Reserved": 20,
    "MyLBA": 24,
    "AlternateLBA": 32,
    "FirstUsableLBA": 40,
    "LastUsableLBA": 48,
    "DiskGUID": 56,
    "PartitionEntryLBA": 72,
    "NumberOfPartitionEntries": 80,
    "SizeOfPartitionEntry": 84,
    "PartitionEntryArrayCRC32": 88,
}
GPT_FIELD_WIDTHS = dict(
    zip(GPT_SPEC_OFFSETS, [8, 4, 4, 4, 4, 8, 8, 8, 8, 16, 8, 4, 4, 4], strict=True)
)


# -- declarations --------------------------------------------------------------------------------


def test_declarations_match_the_spec() -> None:
    assert GPT_HEADER.offsets == GPT_SPEC_OFFSETS
    assert GPT_HEADER.size == 92
    assert GPT_PARTITION_ENTRY.offsets == {
        "PartitionTypeGUID": 0,
        "UniquePartitionGUID": 16,
        "StartingLBA": 32,
        "EndingLBA": 40,
        "Attributes": 48,
        "PartitionName": 56,
    }
    assert MBR_PARTITION_RECORD.offsets == {
        "BootIndicator": 0,
        "StartingCHS": 1,
        "OSType": 4,
        "EndingCHS": 5,
        "StartingLBA": 8,
        "SizeInLBA": 12,
    }
    assert LEGACY_MBR.offset_of("UniqueMBRDiskSignature") == 440
    assert LEGACY_MBR.offset_of("PartitionRecord") == 446
    assert LEGACY_MBR.offset_of("Signature") == 510
    # The encoders of this file and the declarations agree.
    header = gpt_header(1, 99, 34, 65, 2, 128, 128, 0xDEADBEEF)
    rec = GPT_HEADER.unpack_record(header)
    assert (rec.MyLBA, rec.AlternateLBA, rec.PartitionEntryArrayCRC32) == (1, 99, 0xDEADBEEF)
    assert GPT_HEADER.pack(**rec._asdict()) == header


def test_type_names_are_fdisks() -> None:
    need("sfdisk")
    dos = {}
    for line in run("sfdisk", "--list-types", "--label", "dos").splitlines():
        m = re.match(r"\s*([0-9a-f]{1,2})\s+(.+)$", line)
        if m:
            dos[int(m.group(1), 16)] = m.group(2).strip()
    gpt = {}
    for line in run("sfdisk", "--list-types", "--label", "gpt").splitlines():
        m = re.match(r"([0-9A-Fa-f-]{36})\s+(.+)$", line)
        if m:
            gpt[m.group(1).upper()] = m.group(2).strip()
    assert {k: dos.get(k) for k in MBR_TYPE_NAMES} == MBR_TYPE_NAMES
    assert {k: gpt.get(k) for k in GPT_TYPE_NAMES} == GPT_TYPE_NAMES


# -- MBR -----------------------------------------------------------------------------------------

PRIMARIES = [
    "start=2048, size=2048, type=83, bootable",
    "start=4096, size=4096, type=c",
    "start=8192, size=1024, type=82",
    "start=10240, type=7",
]


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_mbr_primaries_match_sfdisk(tmp_path: Path, open_disk: Any, count: int) -> None:
    image = sparse(tmp_path / "disk.img", 8 * MiB)
    sfdisk(image, "label: dos\nlabel-id: 0x1234abcd\n" + "\n".join(PRIMARIES[:count]) + "\n")
    oracle = sfdisk_json(image)
    table = open_disk(image).table()
    assert table is not None and table.scheme == "mbr"
    assert layout(table.partitions) == oracle_layout(oracle)
    assert table.disk_id == oracle["id"] == "0x1234abcd"
    assert not table.skipped and not table.warnings
    by_number = {p.number: p for p in table.partitions}
    assert by_number[1].bootable and by_number[1].type_name == "Linux"
    assert by_number[1].uuid == "1234abcd-01"  # Linux's PARTUUID for MBR disks
    if count >= 2:
        assert not by_number[2].bootable and by_number[2].type_name == "W95 FAT32 (LBA)"
    if count == 4:
        assert by_number[4].end == 8 * MiB


@pytest.mark.parametrize("ext_type", ["5", "f", "85"])
def test_mbr_logical_partitions_match_sfdisk(tmp_path: Path, open_disk: Any, ext_type: str) -> None:
    image = sparse(tmp_path / "disk.img", 16 * MiB)
    sfdisk(
        image,
        "label: dos\n"
        "start=2048, size=2048, type=83\n"
        f"start=4096, size=20480, type={ext_type}\n"
        "start=24576, size=2048, type=c\n"
        # Starts inside the extended partition make logical partitions.
        "start=6144, size=2048, type=83\nstart=10240, size=3000, type=82\n"
        "start=16384, size=1024, type=c\n",
    )
    oracle = sfdisk_json(image)
    table = open_disk(image).table()
    assert table is not None
    assert layout(table.partitions) == oracle_layout(oracle)
    assert [p.number for p in table.partitions] == [1, 2, 3, 5, 6, 7]
    extended = table.partitions[1]
    assert extended.container and extended.type == f"{int(ext_type, 16):#04x}"
    for logical in table.partitions[3:]:
        assert extended.offset < logical.offset and logical.end <= extended.end
    assert not table.warnings


def test_filesystems_in_mbr_partitions(
    tmp_path: Path, open_disk: Any, fs_images: dict[str, Path]
) -> None:
    image = sparse(tmp_path / "disk.img", 16 * MiB)
    sfdisk(
        image,
        "label: dos\n"
        "start=2048, size=2048, type=83\n"
        "start=4096, size=20480, type=5\n"
        "start=26624, size=2048, type=c\n"
        "start=6144, size=2048, type=83\nstart=10240, size=2048, type=83\n",
    )
    parts = {p.number: p for p in open_disk(image).partitions()}
    put(image, parts[1].offset, fs_images["ext4"])
    put(image, parts[6].offset, fs_images["squashfs"])
    put(image, parts[3].offset, fs_images["fat"])
    parts = {p.number: p for p in open_disk(image).partitions()}  # the layout is unchanged
    assert registry.open_volume(parts[1].reader()).fs_type == "ext4"
    assert read_hello(registry.open_volume(parts[1].reader())) == HELLO
    volume = registry.open_volume(parts[6].reader())
    assert volume.fs_type == "squashfs" and read_hello(volume) == HELLO
    with pytest.raises(Unsupported):
        registry.open_volume(parts[5].reader())  # an empty logical partition
    # Without a number, the first partition a driver recognises: the ext4 one.
    assert pick_partition(list(parts.values())).number == 1
    assert pick_partition(list(parts.values()), 6).number == 6
    driver = fat_driver()
    if driver is not None:
        assert open_fat(driver, parts[3].reader()).fs_type == driver.fs_type


# -- GPT -----------------------------------------------------------------------------------------

GPT_ARGS = (
    "--disk-guid=" + DISK_GUID,
    "-n", "1:2048:+1M", "-t", "1:ef00", "-c", "1:EFI system",
    "-n", "2:0:+2M", "-t", "2:8300", "-c", "2:root", "-A", "2:set:2",
    "-n", "4:0:+1M", "-t", "4:0700", "-c", "4:données ☃",
    "-n", "5:0:+512K", "-t", "5:8200",
)  # fmt: skip


@pytest.fixture(scope="module")
def gpt_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GPT disk of GPT_ARGS, made once: sgdisk sleeps a second after every write."""
    image = sparse(tmp_path_factory.mktemp("gpt") / "gpt.img", 8 * MiB)
    sgdisk(image, *GPT_ARGS)
    return image


@pytest.fixture
def gpt_image(tmp_path: Path, gpt_template: Path) -> Path:
    """A copy of the GPT template the test may damage."""
    image = sparse(tmp_path / "gpt.img", gpt_template.stat().st_size)
    put(image, 0, gpt_template)
    return image


def check_gpt_layout(table: PartitionTable | None, oracle: dict[str, Any]) -> None:
    assert table is not None and table.scheme == "gpt" and table.sector_size == 512
    assert layout(table.partitions) == oracle_layout(oracle)
    assert table.disk_id == oracle["id"] == DISK_GUID
    by_number = {p.number: p for p in table.partitions}
    for p in oracle["partitions"]:
        part = by_number[int(p["node"][-1])]
        assert (part.name, part.uuid) == (p.get("name", ""), p["uuid"])
    assert [p.number for p in table.partitions] == [1, 2, 4, 5]  # numbers keep entry indexes
    assert by_number[1].type_name == "EFI System"
    assert by_number[2].type_name == "Linux filesystem" and by_number[2].bootable
    assert by_number[2].attributes == 1 << 2
    assert by_number[4].type_name == "Microsoft basic data"
    assert by_number[4].name == "données ☃"
    assert by_number[5].type_name == "Linux swap" and by_number[5].name == ""


def test_gpt_matches_sfdisk(gpt_image: Path, open_disk: Any) -> None:
    oracle = sfdisk_json(gpt_image)
    table = open_disk(gpt_image).table()
    check_gpt_layout(table, oracle)
    assert table is not None and not table.warnings and not table.skipped
    kind, _ = sniff_boot_sector(gpt_image.read_bytes()[:512])
    assert kind == "protective"


def test_gpt_corrupt_primary_header_uses_backup(gpt_image: Path, open_disk: Any) -> None:
    oracle = sfdisk_json(gpt_image)
    patch(gpt_image, SECTOR + GPT_SPEC_OFFSETS["DiskGUID"], b"\xff")
    table = open_disk(gpt_image).table()
    check_gpt_layout(table, oracle)
    assert table is not None
    assert any("HeaderCRC32" in w and "backup at LBA 16383" in w for w in table.warnings)


def test_gpt_corrupt_primary_entries_uses_backup(gpt_image: Path, open_disk: Any) -> None:
    oracle = sfdisk_json(gpt_image)
    patch(gpt_image, 2 * SECTOR + GPT_PARTITION_ENTRY.offset_of("PartitionName"), b"X")
    table = open_disk(gpt_image).table()
    check_gpt_layout(table, oracle)  # the backup's names: "EFI system", not "XFI system"
    assert table is not None
    assert any("PartitionEntryArrayCRC32" in w for w in table.warnings)


def test_gpt_damaged_backup_is_reported(gpt_image: Path, open_disk: Any) -> None:
    oracle = sfdisk_json(gpt_image)
    patch(gpt_image, 8 * MiB - SECTOR, b"\0" * 8)
    table = open_disk(gpt_image).table()
    check_gpt_layout(table, oracle)
    assert table is not None and table.warnings == ("the backup GPT header is missing or damaged",)


def test_gpt_both_headers_damaged(gpt_image: Path, open_disk: Any) -> None:
    patch(gpt_image, SECTOR, b"EFI DART")
    rewrite_header(gpt_image, 16383, MyLBA=5)
    with pytest.raises(CorruptImage, match=r"no 'EFI PART' signature.*MyLBA"):
        open_disk(gpt_image).table()


def test_gpt_grown_image_finds_backup_through_alternate_lba(
    gpt_image: Path, open_disk: Any
) -> None:
    oracle = sfdisk_json(gpt_image)
    os.truncate(gpt_image, 12 * MiB)
    table = open_disk(gpt_image).table()
    check_gpt_layout(table, oracle)
    assert table is not None and any("truncated or grown" in w for w in table.warnings)
    # With the primary damaged, the backup is not at the last LBA any more: the damaged
    # primary's AlternateLBA still leads to it.
    patch(gpt_image, SECTOR + GPT_SPEC_OFFSETS["FirstUsableLBA"], b"\x07")
    table = open_disk(gpt_image).table()
    check_gpt_layout(table, oracle)
    assert table is not None and any("backup at LBA 16383" in w for w in table.warnings)


def test_gpt_truncated_image_clips_and_skips(gpt_image: Path, open_disk: Any) -> None:
    # Partition 2 spans 2-4 MiB, 4 spans 4-5 MiB; cut the image at 3 MiB.
    os.truncate(gpt_image, 3 * MiB)
    table = open_disk(gpt_image).table()
    assert table is not None
    parts = {p.number: p for p in table.partitions}
    assert sorted(parts) == [1, 2]
    assert parts[2].offset == 2 * MiB and parts[2].size == MiB
    assert any(n.startswith("clipped") for n in parts[2].notes)
    assert [s.number for s in table.skipped] == [4, 5]
    assert "past the end of the image" in table.skipped[0].reason
    assert any("truncated?" in w for w in table.warnings)
    reader = parts[2].reader()
    assert reader.size == MiB
    with pytest.raises(CorruptImage):
        reader.read(MiB - 1, 2)


def test_filesystems_in_gpt_partitions(
    tmp_path: Path, open_disk: Any, fs_images: dict[str, Path]
) -> None:
    image = sparse(tmp_path / "disk.img", 8 * MiB)
    sgdisk(
        image,
        *("-n", "1:2048:+1M", "-t", "1:8200", "-c", "1:swap"),
        *("-n", "2:0:+1M", "-t", "2:8300", "-c", "2:squash"),
        *("-n", "3:0:+1M", "-t", "3:8300", "-c", "3:ext4"),
        *("-n", "4:0:+1M", "-t", "4:ef00", "-c", "4:esp"),
    )
    parts = {p.number: p for p in open_disk(image).partitions()}
    put(image, parts[2].offset, fs_images["squashfs"])
    put(image, parts[3].offset, fs_images["ext4"])
    put(image, parts[4].offset, fs_images["fat"])
    partitions = open_disk(image).partitions()
    assert pick_partition(partitions).name == "squash"
    assert read_hello(registry.open_volume(pick_partition(partitions).reader())) == HELLO
    ext4 = pick_partition(partitions, number=3)
    assert read_hello(registry.open_volume(ext4.reader())) == HELLO
    with pytest.raises(Unsupported):
        registry.open_volume(pick_partition(partitions, number=1).reader())
    # The window is exactly the partition: what the reader reads is what the image holds.
    data = fs_images["ext4"].read_bytes()
    assert ext4.reader().read(1024, 1024) == data[1024:2048]
    assert ext4.reader().size == MiB


def test_fat_in_a_partition(tmp_path: Path, open_disk: Any, fs_images: dict[str, Path]) -> None:
    driver = fat_driver()
    if driver is None:
        pytest.skip("drivers/fat has no FAT Volume class yet")
    image = sparse(tmp_path / "disk.img", 4 * MiB)
    sgdisk(image, "-n", "1:2048:+1M", "-t", "1:ef00")
    part = open_disk(image).partitions()[0]
    put(image, part.offset, fs_images["fat"])
    volume = open_fat(driver, part.reader())
    assert volume.fs_type == driver.fs_type
    if shutil.which("mcopy"):
        assert read_hello(volume) == HELLO


@pytest.mark.parametrize("entry_size", [128, 256])
@pytest.mark.parametrize("sector_size", [512, 4096])
def test_gpt_sector_and_entry_sizes(
    tmp_path: Path, open_disk: Any, sector_size: int, entry_size: int
) -> None:
    """4Kn disks (header at byte 4096, LBAs of 4 KiB) and entries larger than 128 bytes."""
    entries = [
        gpt_entry(EFI_SYSTEM, 256, 511, "esp"),
        b"",  # unused entry 2
        gpt_entry(LINUX_FS, 512, 767, "root", attrs=1 << 60),
    ]
    image = write_gpt(tmp_path / "4k.img", sector_size, 1024, entries, entry_size=entry_size)
    table = open_disk(image).table()
    assert table is not None and table.sector_size == sector_size
    assert [(p.number, p.name, p.offset, p.size) for p in table.partitions] == [
        (1, "esp", 256 * sector_size, 256 * sector_size),
        (3, "root", 512 * sector_size, 256 * sector_size),
    ]
    assert table.partitions[1].attributes == 1 << 60
    assert not table.warnings


# -- images without a partition table ------------------------------------------------------------


def test_bare_file_systems_have_no_partitions(
    tmp_path: Path, open_disk: Any, fs_images: dict[str, Path]
) -> None:
    for name, image in fs_images.items():
        assert open_disk(image).table() is None, name
        assert open_disk(image).partitions() == []
    kind, why = sniff_boot_sector(fs_images["fat"].read_bytes()[:512])
    assert (kind, why) == ("filesystem", "sector 0 is a fat boot sector")


@pytest.mark.parametrize(
    "args",
    [
        ("-F", "12"),
        ("-F", "16"),
        ("-F", "32", "-s", "1"),
        ("-F", "16", "--mbr=y"),
        ("-F", "12", "-S", "4096"),
    ],
    ids=["fat12", "fat16", "fat32", "fat16-with-fake-mbr", "fat12-4k"],
)
def test_bare_fat_is_not_an_mbr(tmp_path: Path, open_disk: Any, args: tuple[str, ...]) -> None:
    """mkfs.fat ends sector 0 in 0x55AA; --mbr even fills in a partition entry."""
    need("mkfs.fat")
    image = sparse(tmp_path / "fat.img", 40 * MiB if "32" in args else 16 * MiB)
    run("mkfs.fat", *args, image)
    sector = image.read_bytes()[:512]
    assert sector[510:] == b"\x55\xaa"
    assert sniff_boot_sector(sector)[0] == "filesystem"
    assert open_disk(image).partitions() == []


@pytest.mark.parametrize("size", [0, 1, 511, 512, 4096, 3 * MiB])
def test_blank_and_tiny_images(tmp_path: Path, open_disk: Any, size: int) -> None:
    image = sparse(tmp_path / "blank.img", size)
    assert open_disk(image).table() is None


def test_ntfs_and_exfat_boot_sectors(tmp_path: Path, open_disk: Any) -> None:
    for oem in (b"NTFS    ", b"EXFAT   "):
        image = sparse(tmp_path / "fs.img", MiB)
        patch(image, 0, b"\xeb\x52\x90" + oem)
        patch(image, 510, b"\x55\xaa")
        assert sniff_boot_sector(image.read_bytes()[:512])[0] == "filesystem"
        assert open_disk(image).table() is None


def test_invalid_boot_indicator_is_not_an_mbr(tmp_path: Path, open_disk: Any) -> None:
    image = sparse(tmp_path / "disk.img", MiB)
    patch(image, 0, mbr_sector([mbr_record(0x83, 2048 // 4, 100, boot=0x12)]))
    assert sniff_boot_sector(image.read_bytes()[:512]) == (
        "none",
        "entry 1 has boot indicator 0x12",
    )
    assert open_disk(image).table() is None


def test_empty_mbr(tmp_path: Path, open_disk: Any) -> None:
    image = sparse(tmp_path / "disk.img", MiB)
    sfdisk(image, "label: dos\n")
    table = open_disk(image).table()
    assert table is not None and table.scheme == "mbr" and table.partitions == ()
    with pytest.raises(Unsupported, match="no partition holds"):
        pick_partition(table.partitions)


# -- protective and hybrid MBRs ------------------------------------------------------------------


def test_protective_mbr_without_gpt_is_corrupt(tmp_path: Path, open_disk: Any) -> None:
    image = sparse(tmp_path / "disk.img", MiB)
    patch(image, 0, mbr_sector([mbr_record(0xEE, 1, 2047)]))
    with pytest.raises(CorruptImage, match="protective MBR but no valid GPT"):
        open_disk(image).table()


def test_hybrid_mbr_uses_the_gpt(gpt_image: Path, open_disk: Any) -> None:
    oracle = sfdisk_json(gpt_image)
    sgdisk(gpt_image, "-h", "1:2")  # MBR entries mirroring partitions 1 and 2, plus 0xEE
    sector = gpt_image.read_bytes()[:512]
    types = {sector[446 + 16 * i + 4] for i in range(4)}
    assert 0xEE in types and len(types - {0}) > 1
    check_gpt_layout(open_disk(gpt_image).table(), oracle)


# -- crafted tables ------------------------------------------------------------------------------


def write_ebr(image: Path, sector: int, records: Sequence[bytes]) -> None:
    patch(image, sector * SECTOR, mbr_sector(records, disk_signature=0))


def test_ebr_chain_loop_ends(tmp_path: Path, open_disk: Any) -> None:
    image = sparse(tmp_path / "disk.img", 4 * MiB)
    patch(image, 0, mbr_sector([mbr_record(0x05, 2048, 4096)]))
    # EBR A (2048) -> EBR B (2048 + 100) -> EBR A again.
    write_ebr(image, 2048, [mbr_record(0x83, 10, 50), mbr_record(0x05, 100, 200)])
    write_ebr(image, 2148, [mbr_record(0x83, 10, 50), mbr_record(0x05, 0, 200)])
    table = open_disk(image).table()
    assert table is not None
    assert [(p.number, p.offset // SECTOR) for p in table.partitions] == [
        (1, 2048),
        (5, 2058),
        (6, 2158),
    ]
    assert table.warnings == (
        "the EBR chain loops back to sector 2048; logical partitions after that point were ignored",
    )


def test_ebr_pointing_at_itself(tmp_path: Path, open_disk: Any) -> None:
    image = sparse(tmp_path / "disk.img", 4 * MiB)
    patch(image, 0, mbr_sector([mbr_record(0x0F, 2048, 4096)]))
    write_ebr(image, 2048, [mbr_record(0x83, 1, 50), mbr_record(0x0F, 0, 4096)])
    table = open_disk(image).table()
    assert table is not None and [p.number for p in table.partitions] == [1, 5]
    assert len(table.warnings) == 1 and "loops back" in table.warnings[0]


def test_long_ebr_chain_is_bounded(tmp_path: Path, open_disk: Any) -> None:
    image = sparse(tmp_path / "disk.img", 4 * MiB)
    count = EBR_CHAIN_MAX + 50
    patch(image, 0, mbr_sector([mbr_record(0x05, 100, 2 * count + 10)]))
    for i in range(count):  # EBR at 100 + 2i; its logical partition is the next sector
        write_ebr(image, 100 + 2 * i, [mbr_record(0x83, 1, 1), mbr_record(0x05, 2 * i + 2, 2)])
    table = open_disk(image).table()
    assert table is not None
    numbers = [p.number for p in table.partitions]
    assert numbers == [1, *range(5, 256)]  # Linux numbers up to 255
    assert len(table.warnings) == 1 and "Linux numbers" in table.warnings[0]


def test_ebr_outside_image_and_garbage_entries(tmp_path: Path, open_disk: Any) -> None:
    image = sparse(tmp_path / "disk.img", 2 * MiB)
    patch(image, 0, mbr_sector([mbr_record(0x05, 1000, 1000)]))
    # A data entry, two garbage entries in slots 3-4 (outside the extended partition,
    # ignored as msdos.c ignores them), and a link far past the end of the image.
    write_ebr(
        image,
        1000,
        [
            mbr_record(0x83, 10, 20),
            mbr_record(0x05, 10**6, 20),
            mbr_record(0x83, 5000, 20),
            mbr_record(0x83, 2, 2000),
        ],
    )
    table = open_disk(image).table()
    assert table is not None
    assert [(p.number, p.offset // SECTOR) for p in table.partitions] == [(1, 1000), (5, 1010)]
    assert table.warnings == (
        f"the EBR at sector {1000 + 10**6} lies outside the image; the chain ends there",
    )


def test_mbr_partitions_past_the_end(tmp_path: Path, open_disk: Any) -> None:
    image = sparse(tmp_path / "disk.img", MiB)  # 2048 sectors
    patch(
        image,
        0,
        mbr_sector(
            [
                mbr_record(0x83, 0, 100),  # overlaps the MBR: kept, with a note
                mbr_record(0x83, 1000, 2000),  # runs past the end: clipped
                mbr_record(0x83, 2048, 10),  # starts at the end: skipped
                mbr_record(0x83, 0xFFFFFFFF, 0xFFFFFFFF),  # far past: skipped
            ]
        ),
    )
    table = open_disk(image).table()
    assert table is not None
    p1, p2 = table.partitions
    assert (p1.offset, p1.size) == (0, 100 * SECTOR)
    assert "overlaps the MBR" in p1.notes
    assert (p2.offset, p2.size) == (1000 * SECTOR, 1048 * SECTOR)
    assert p2.notes[0].startswith("clipped")
    assert [s.number for s in table.skipped] == [3, 4]
    assert p2.reader().size == 1048 * SECTOR


def test_overlapping_partitions_are_noted(tmp_path: Path, open_disk: Any) -> None:
    image = sparse(tmp_path / "disk.img", MiB)
    records = [
        mbr_record(0x83, 100, 500),
        mbr_record(0x83, 700, 100),
        mbr_record(0x83, 300, 50),
        mbr_record(0x83, 900, 100),
    ]
    patch(image, 0, mbr_sector(records))
    table = open_disk(image).table()
    assert table is not None
    notes = {p.number: p.notes for p in table.partitions}
    assert notes == {1: ("overlaps partition 3",), 2: (), 3: ("overlaps partition 1",), 4: ()}


def test_gpt_entry_outside_usable_area_and_reversed(tmp_path: Path, open_disk: Any) -> None:
    entries = [
        gpt_entry(LINUX_FS, 1, 40, "over the table"),
        gpt_entry(LINUX_FS, 300, 200, "reversed"),
        gpt_entry(LINUX_FS, 100, 100, "one sector"),
    ]
    image = write_gpt(tmp_path / "disk.img", 512, 2048, entries)
    table = open_disk(image).table()
    assert table is not None
    p1, p3 = table.partitions
    assert "overlaps the partition table" in p1.notes[0]
    assert (p3.number, p3.size) == (3, 512)
    assert table.skipped[0].number == 2 and "before it starts" in table.skipped[0].reason


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"NumberOfPartitionEntries": 0xFFFFFFFF}, "larger than"),
        ({"NumberOfPartitionEntries": 1 << 20}, "larger than"),
        ({"SizeOfPartitionEntry": 0}, "SizeOfPartitionEntry 0"),
        ({"SizeOfPartitionEntry": 8}, "SizeOfPartitionEntry 8"),
        ({"SizeOfPartitionEntry": 136}, "SizeOfPartitionEntry 136"),
        ({"SizeOfPartitionEntry": 1 << 31}, "larger than"),
        ({"HeaderSize": 0}, "HeaderSize 0"),
        ({"HeaderSize": 513}, "HeaderSize 513"),
        ({"MyLBA": 2}, "MyLBA is 2"),
        ({"FirstUsableLBA": 100, "LastUsableLBA": 99}, "LastUsableLBA 99"),
        ({"PartitionEntryLBA": 1 << 40}, "runs past the end"),
        ({"PartitionEntryLBA": 16383}, "runs past the end"),
        ({"PartitionEntryLBA": 3}, "PartitionEntryArrayCRC32"),
    ],
)
def test_bad_gpt_headers(
    gpt_image: Path, open_disk: Any, fields: dict[str, int], reason: str
) -> None:
    """Each bad field in the primary: the backup is used; in both: CorruptImage, bounded."""
    oracle = sfdisk_json(gpt_image)
    rewrite_header(gpt_image, 1, **fields)
    table = open_disk(gpt_image).table()
    check_gpt_layout(table, oracle)
    assert table is not None and reason in table.warnings[0]
    rewrite_header(gpt_image, 16383, **fields)
    with pytest.raises(CorruptImage) as caught:
        open_disk(gpt_image).table()
    assert str(caught.value).count(reason) >= 2


def test_place_policy() -> None:
    assert place(0, 0, 512, 4096) == "empty (no sectors)"
    assert place(2, 4, 512, 4096) == (1024, 2048, ())
    assert (
        place(8, 1, 512, 4096)
        == "starts at byte 4096, at or past the end of the image (4096 bytes)"
    )
    clipped = place(6, 4, 512, 4096)
    assert not isinstance(clipped, str)
    assert clipped[:2] == (3072, 1024) and clipped[2][0].startswith("clipped: 1.0 KiB")


# -- choosing a partition ------------------------------------------------------------------------


def test_pick_partition_errors(gpt_image: Path, open_disk: Any) -> None:
    partitions = open_disk(gpt_image).partitions()
    with pytest.raises(Unsupported, match=r"there is no partition 3; partitions: 1: EFI System"):
        pick_partition(partitions, 3)
    with pytest.raises(Unsupported, match=r"no partition holds a supported file system.*'root'"):
        pick_partition(partitions, probe=lambda reader: False)
    assert pick_partition(partitions, 4).name == "données ☃"

    def probe(reader: BlockReader) -> bool:
        if reader.size == MiB:
            raise CorruptImage("a driver error counts as no")
        return reader.size == 2 * MiB

    assert pick_partition(partitions, probe=probe).number == 2


def test_pick_refuses_extended_containers(tmp_path: Path, open_disk: Any) -> None:
    image = sparse(tmp_path / "disk.img", 4 * MiB)
    sfdisk(image, "label: dos\nstart=2048, size=4096, type=5\nstart=4096, size=1024, type=83\n")
    partitions = open_disk(image).partitions()
    assert [(p.number, p.container) for p in partitions] == [(1, True), (5, False)]
    with pytest.raises(Unsupported, match="partition 1 is an extended partition"):
        pick_partition(partitions, 1)
    seen: list[int] = []

    def probe(reader: BlockReader) -> bool:
        seen.append(reader.base)
        return True

    assert pick_partition(partitions, probe=probe).number == 5
    assert seen == [partitions[1].offset]  # the container was not probed


def test_listing(gpt_image: Path, open_disk: Any) -> None:
    table = open_disk(gpt_image).table()
    assert table is not None
    lines = table.describe()
    assert lines[0] == f"gpt partition table, disk id {DISK_GUID}, 512-byte sectors"
    assert lines[1] == f"  1: EFI System ({EFI_SYSTEM}) 'EFI system', 1.0 MiB at byte 1048576"
    assert lines[2].endswith("2.0 MiB at byte 2097152 [bootable]")


# -- robustness ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small disks whose table sectors the fuzz test mutates."""
    need("sfdisk", "sgdisk")
    root = tmp_path_factory.mktemp("fuzz")
    mbr = sparse(root / "mbr.img", MiB)
    sfdisk(
        mbr,
        "label: dos\nstart=64, size=64, type=83\nstart=128, size=1024, type=5\n"
        "start=192, size=64, type=c\nstart=320, size=64, type=83\nstart=448, size=64, type=82\n",
    )
    gpt = sparse(root / "gpt.img", MiB)
    sgdisk(gpt, "-a", "8", "-n", "1:64:+32K", "-n", "2:0:+32K", "-c", "2:two", "-n", "3:0:+32K")
    return {"mbr": mbr.read_bytes(), "gpt": gpt.read_bytes()}


def refresh_gpt_crcs(data: bytearray) -> None:
    """Recompute the primary GPT header's CRCs over whatever its fields now say."""
    header = data[SECTOR : 2 * SECTOR]
    lba, count, size = struct.unpack_from("<QII", header, GPT_SPEC_OFFSETS["PartitionEntryLBA"])
    start, length = lba * SECTOR, count * size
    if length <= 1 << 20 and start + length <= len(data):
        crc = zlib.crc32(bytes(data[start : start + length]))
        struct.pack_into("<I", data, SECTOR + GPT_SPEC_OFFSETS["PartitionEntryArrayCRC32"], crc)
    header_size = int.from_bytes(data[SECTOR + 12 : SECTOR + 16], "little")
    if 92 <= header_size <= SECTOR:
        data[SECTOR + 16 : SECTOR + 20] = bytes(4)
        crc = zlib.crc32(bytes(data[SECTOR : SECTOR + header_size]))
        struct.pack_into("<I", data, SECTOR + 16, crc)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.sampled_from(["mbr", "gpt"]),
    edits=st.lists(
        st.tuples(st.integers(0, 3 * SECTOR - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    ebr_edits=st.lists(
        st.tuples(st.integers(0, SECTOR - 1), st.integers(0, 255)), min_size=0, max_size=4
    ),
    fix_crcs=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, MiB)),
)
def test_mutated_tables_never_crash(
    fuzz_seeds: dict[str, bytes],
    seed: str,
    edits: list[tuple[int, int]],
    ebr_edits: list[tuple[int, int]],
    fix_crcs: bool,
    cut: int | None,
) -> None:
    """Random bytes in the MBR, GPT header and entries, or the first EBR; truncation.

    With ``fix_crcs`` the primary GPT's CRCs are recomputed after the damage, so that the
    checks after the CRCs and the entry parsing meet the garbage too.
    """
    data = bytearray(fuzz_seeds[seed])
    for offset, value in edits:
        data[offset] = value
    for offset, value in ebr_edits:
        data[128 * SECTOR + offset] = value
    if seed == "gpt" and fix_crcs:
        refresh_gpt_crcs(data)
    if cut is not None:
        del data[cut:]
    fd = os.memfd_create("disk")
    try:
        os.write(fd, bytes(data))
        disk = BlockReader(fd)
        try:
            table = read_partition_table(disk)
        except (CorruptImage, Unsupported):
            return
        if table is None:
            return
        assert len(table.partitions) <= 4 + EBR_CHAIN_MAX + 128
        numbers = [p.number for p in table.partitions]
        assert len(set(numbers)) == len(numbers)
        for part in table.partitions:
            assert 0 <= part.offset < part.end <= len(data) and part.size > 0
            assert part.reader().read_upto(0, 16) == bytes(data[part.offset : part.offset + 16])
        with contextlib.suppress(DriverError):
            pick_partition(table.partitions)
    finally:
        os.close(fd)
