"""The boot sector: BPB checks in the kernel's order, the FAT type, FSInfo, the backup copy.

As ``fat_read_bpb`` and ``fat_fill_super`` in the kernel's fs/fat/inode.c: reserved
sectors > 0, at least one FAT, a valid media byte (0xF0 or >= 0xF8), a sector size that
is a power of two from 512 to 4096, a power-of-two cluster size, a FAT size, a root
directory that fills whole sectors, a data region inside the volume and a cluster count
the FAT type can address.  FAT12 and FAT16 are told apart by the count of clusters only,
as the specification says (fewer than 4085 clusters is FAT12), never by
``BS_FilSysType``.  A FAT32 BPB is the one whose ``BPB_FATSz16`` is 0, as Linux and
Windows decide: it has no 16-bit FAT size, so it cannot be read as anything else (a
FAT32 volume with fewer than 65525 clusters, as ``mkfs.fat -F 32 -s 8`` makes on small
images, is FAT32 to both).  A FAT16 BPB with 65525 clusters or more is refused, as the
kernel refuses it ("count of clusters too big").

A FAT32 volume keeps a copy of its boot sector at ``BPB_BkBootSec`` (6 by convention).
The kernel never reads it; this driver does when the primary boot sector fails the
checks, as fsck.fat and Windows' chkdsk would use it to repair the volume: the copy must
pass every check itself, describe a FAT32 volume and name its own sector as the backup.

exFAT ("EXFAT   " as the OEM name) is a different file system and is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.base import BlockReader, CorruptImage, Unsupported
from drivers.fat.layout import (
    BAD_FAT12,
    BAD_FAT16,
    BAD_FAT32,
    BOOT_SECTOR_SIZE,
    BOOT_SIGNATURE,
    BOOT_SIGNATURE_OFFSET,
    BPB,
    BPB16,
    BPB32,
    DIR_ENTRY_SIZE,
    EXFAT_OEM_NAME,
    EXTENDED_BOOT_SIGNATURE,
    FAT_START_ENT,
    FSI_LEADSIG,
    FSI_STRUCSIG,
    FSI_TRAILSIG,
    FSINFO,
    MAX_FAT12,
    MAX_FAT16,
    MAX_FAT32,
    OLD_EXTENDED_BOOT_SIGNATURE,
)

__all__ = ["FsInfo", "Geometry", "looks_like_fat", "parse_boot_sector", "read_boot_sector"]

SECTOR_SIZES = (512, 1024, 2048, 4096)
#: Where mkfs.fat and Windows put the FAT32 backup boot sector.
DEFAULT_BACKUP_SECTOR = 6
#: Other file systems whose images must never be taken for FAT: (offset, magic bytes).
FOREIGN_MAGICS = ((0, b"hsqs"), (1080, b"\x53\xef"))  # squashfs; ext2/3/4 s_magic


@dataclass(frozen=True, slots=True)
class FsInfo:
    """The FAT32 FSInfo sector's hints (the kernel uses them only with -o usefree)."""

    sector: int
    free_count: int
    next_free: int


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where everything is, in bytes from the start of the volume, and the FAT type."""

    fat_bits: int  # 12, 16 or 32
    bytes_per_sector: int
    sectors_per_cluster: int
    cluster_size: int
    cluster_bits: int
    reserved_sectors: int
    fat_count: int
    fat_offset: int  # the first FAT (the only one the kernel reads)
    fat_bytes: int  # the length of one FAT
    root_offset: int  # FAT12/16: the fixed root directory region
    root_entries: int  # BPB_RootEntCnt
    data_offset: int  # cluster 2
    total_sectors: int
    max_cluster: int  # one past the last cluster number (the kernel's max_cluster)
    root_cluster: int  # FAT32: BPB_RootClus; 0 otherwise
    media: int
    oem_name: bytes
    volume_id: int | None  # BS_VolID, when BS_BootSig says it is there
    bpb_label: bytes | None  # BS_VolLab, when BS_BootSig says it is there
    fsinfo: FsInfo | None
    boot_sector: int  # 0, or the backup sector the BPB was taken from
    raw: Any  # the BPB record (every field by its specification name)

    @property
    def clusters(self) -> int:
        """Count of data clusters, numbered 2 .. max_cluster - 1."""
        return self.max_cluster - FAT_START_ENT

    @property
    def bad_marker(self) -> int:
        """FAT entries at or above this end a chain (end-of-chain and bad-cluster marks)."""
        return {12: BAD_FAT12, 16: BAD_FAT16}.get(self.fat_bits, BAD_FAT32)

    @property
    def root_bytes(self) -> int:
        """Size of the FAT12/16 fixed root directory."""
        return self.root_entries * DIR_ENTRY_SIZE

    def cluster_offset(self, cluster: int) -> int:
        """Byte offset of a data cluster (the kernel's fat_clus_to_blknr)."""
        return self.data_offset + ((cluster - FAT_START_ENT) << self.cluster_bits)


def _is_power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_bpb(b: Any) -> None:
    """fat_read_bpb's checks, in its order and with its messages."""
    if not b.BPB_RsvdSecCnt:
        raise CorruptImage("bogus number of reserved sectors")
    if not b.BPB_NumFATs:
        raise CorruptImage("bogus number of FAT structure")
    if not (b.BPB_Media == 0xF0 or b.BPB_Media >= 0xF8):
        raise CorruptImage(f"invalid media value (0x{b.BPB_Media:02x})")
    if not _is_power_of_2(b.BPB_BytsPerSec) or not 512 <= b.BPB_BytsPerSec <= 4096:
        raise CorruptImage(f"bogus logical sector size {b.BPB_BytsPerSec}")
    if not _is_power_of_2(b.BPB_SecPerClus):
        raise CorruptImage(f"bogus sectors per cluster {b.BPB_SecPerClus}")


def _fat_entries(fat_bits: int, fat_sectors: int, bytes_per_sector: int) -> int:
    """How many entries the FAT can hold (calc_fat_clusters)."""
    if fat_bits == 12:
        return fat_sectors * bytes_per_sector * 8 // 12
    return (bytes_per_sector * 8 // fat_bits) * fat_sectors


def _read_fsinfo(reader: BlockReader, sector: int, bytes_per_sector: int) -> FsInfo | None:
    """The FSInfo sector (0 means 1, as the kernel); bad signatures only lose the hints."""
    sector = sector or 1
    offset = sector * bytes_per_sector
    if offset + FSINFO.size > reader.size:
        raise CorruptImage(f"bread failed, FSINFO block (sector = {sector})")
    info = FSINFO.unpack_record(reader.read(offset, FSINFO.size))
    if info.FSI_LeadSig != FSI_LEADSIG or info.FSI_StrucSig != FSI_STRUCSIG:
        return None
    if info.FSI_TrailSig != FSI_TRAILSIG:
        return None
    return FsInfo(sector, info.FSI_Free_Count, info.FSI_Nxt_Free)


def parse_boot_sector(raw: bytes, image_size: int | None, boot_sector: int = 0) -> Geometry:
    """Check a boot sector (its first 512 bytes) and compute the volume's geometry.

    ``image_size`` None skips the checks against the image (for probing).  Raises
    Unsupported for exFAT and CorruptImage with the kernel's reason otherwise.
    """
    if len(raw) < BOOT_SECTOR_SIZE:
        raise CorruptImage(f"unable to read boot sector ({len(raw)} bytes)")
    b = BPB.unpack_record(raw)
    if b.BS_OEMName == EXFAT_OEM_NAME:
        raise Unsupported("exFAT is not supported")
    _check_bpb(b)
    fat32 = b.BPB_FATSz16 == 0
    ext = BPB32.unpack_record(raw, BPB.size) if fat32 else None
    fat_sectors = ext.BPB_FATSz32 if ext is not None else b.BPB_FATSz16
    if not fat_sectors:
        raise CorruptImage("bogus number of FAT sectors")
    bps = b.BPB_BytsPerSec
    if b.BPB_RootEntCnt & (bps // DIR_ENTRY_SIZE - 1):
        raise CorruptImage(f"bogus number of directory entries ({b.BPB_RootEntCnt})")
    root_sectors = b.BPB_RootEntCnt * DIR_ENTRY_SIZE // bps
    fat_start = b.BPB_RsvdSecCnt
    root_start = fat_start + b.BPB_NumFATs * fat_sectors
    data_start = root_start + root_sectors
    total = b.BPB_TotSec16 or b.BPB_TotSec32
    if total < data_start:
        raise CorruptImage(
            f"count of clusters too big: the volume's {total} sectors end before its data"
            f" region (sector {data_start})"
        )
    spc = b.BPB_SecPerClus
    clusters = (total - data_start) // spc
    fat_bits = 32 if fat32 else 16 if clusters > MAX_FAT12 else 12
    clusters = min(clusters, _fat_entries(fat_bits, fat_sectors, bps) - FAT_START_ENT)
    if clusters > {12: MAX_FAT12, 16: MAX_FAT16}.get(fat_bits, MAX_FAT32):
        raise CorruptImage(f"count of clusters too big ({clusters})")
    if image_size is not None and data_start * bps > image_size:
        raise CorruptImage(
            f"the image is truncated: the FATs and root directory end at byte"
            f" {data_start * bps}, the image has {image_size} bytes"
        )
    label, volume_id = _identity(raw, fat32)
    cluster_size = bps * spc
    return Geometry(
        fat_bits=fat_bits,
        bytes_per_sector=bps,
        sectors_per_cluster=spc,
        cluster_size=cluster_size,
        cluster_bits=cluster_size.bit_length() - 1,
        reserved_sectors=fat_start,
        fat_count=b.BPB_NumFATs,
        fat_offset=fat_start * bps,
        fat_bytes=fat_sectors * bps,
        root_offset=root_start * bps,
        root_entries=b.BPB_RootEntCnt,
        data_offset=data_start * bps,
        total_sectors=total,
        max_cluster=clusters + FAT_START_ENT,
        root_cluster=ext.BPB_RootClus if ext is not None else 0,
        media=b.BPB_Media,
        oem_name=b.BS_OEMName,
        volume_id=volume_id,
        bpb_label=label,
        fsinfo=None,
        boot_sector=boot_sector,
        raw=b,
    )


def _identity(raw: bytes, fat32: bool) -> tuple[bytes | None, int | None]:
    """BS_VolLab and BS_VolID, when BS_BootSig says they were written."""
    layout = BPB32 if fat32 else BPB16
    ext = layout.unpack_record(raw, BPB.size)
    if ext.BS_BootSig == EXTENDED_BOOT_SIGNATURE:
        return ext.BS_VolLab, ext.BS_VolID
    if ext.BS_BootSig == OLD_EXTENDED_BOOT_SIGNATURE:
        return None, ext.BS_VolID
    return None, None


def _backup_candidates(primary: bytes) -> list[tuple[int, int]]:
    """(sector, sector size) pairs where a FAT32 backup boot sector may be."""
    candidates: list[tuple[int, int]] = []
    if len(primary) >= BPB32.offsets["BPB_BkBootSec"] + 2:
        bps = int.from_bytes(primary[11:13], "little")
        backup = int.from_bytes(primary[50:52], "little")
        if bps in SECTOR_SIZES and 0 < backup < 0xFFFF:
            candidates.append((backup, bps))
    for size in SECTOR_SIZES:
        if (DEFAULT_BACKUP_SECTOR, size) not in candidates:
            candidates.append((DEFAULT_BACKUP_SECTOR, size))
    return candidates


def _backup(reader: BlockReader, primary: bytes, check_image: bool) -> Geometry | None:
    """The first FAT32 backup boot sector that passes every check, or None."""
    image_size = reader.size if check_image else None
    for sector, size in _backup_candidates(primary):
        raw = reader.read_upto(sector * size, BOOT_SECTOR_SIZE)
        if raw[BOOT_SIGNATURE_OFFSET : BOOT_SIGNATURE_OFFSET + 2] != BOOT_SIGNATURE:
            continue
        try:
            geometry = parse_boot_sector(raw, image_size, boot_sector=sector)
        except (CorruptImage, Unsupported):
            continue
        own = geometry.raw.BPB_BytsPerSec == size
        ext = BPB32.unpack_record(raw, BPB.size)
        if geometry.fat_bits == 32 and own and ext.BPB_BkBootSec == sector:
            return geometry
    return None


def read_boot_sector(reader: BlockReader) -> Geometry:
    """The volume's geometry from its boot sector, or from the FAT32 backup if that is bad."""
    primary = reader.read_upto(0, BOOT_SECTOR_SIZE)
    try:
        geometry = parse_boot_sector(primary, reader.size)
    except CorruptImage as exc:
        backup = _backup(reader, primary, check_image=True)
        if backup is None:
            raise CorruptImage(f"{exc}; can't find a valid FAT filesystem") from exc
        geometry = backup
    if geometry.bytes_per_sector > reader.size:
        raise CorruptImage("unable to read boot sector (the image is smaller than a sector)")
    if geometry.fat_bits != 32:
        return geometry
    fsinfo_sector = BPB32.unpack_record(
        reader.read(geometry.boot_sector * geometry.bytes_per_sector, BOOT_SECTOR_SIZE),
        BPB.size,
    ).BPB_FSInfo
    fsinfo = _read_fsinfo(reader, fsinfo_sector, geometry.bytes_per_sector)
    return _with_fsinfo(geometry, fsinfo)


def _with_fsinfo(geometry: Geometry, fsinfo: FsInfo | None) -> Geometry:
    fields = {name: getattr(geometry, name) for name in Geometry.__slots__}
    fields["fsinfo"] = fsinfo
    return Geometry(**fields)


def looks_like_fat(reader: BlockReader) -> bool:
    """A plausible BPB (or a good FAT32 backup); never another format.

    The 55 AA boot signature is not required: the kernel's fat_fill_super never looks
    at it, and images without it (old floppies, syzkaller's) mount there and in mtools.
    exFAT boot sectors count, so that opening them says why they are refused.
    """
    for offset, magic in FOREIGN_MAGICS:
        if reader.read_upto(offset, len(magic)) == magic:
            return False
    primary = reader.read_upto(0, BOOT_SECTOR_SIZE)
    if len(primary) < BOOT_SECTOR_SIZE:
        return False
    try:
        parse_boot_sector(primary, None)
        return True
    except Unsupported:
        return True
    except CorruptImage:
        pass
    return _backup(reader, primary, check_image=False) is not None
