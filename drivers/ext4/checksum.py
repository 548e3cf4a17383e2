"""The checksums of ext4 metadata: crc32c (metadata_csum) and crc16 (gdt_csum).

The kernel's ``ext4_chksum(sbi, crc, data, len)`` is crc32c *without* the customary
pre- and post-inversion: the seed goes in as is and the register comes out as is,
which is what lets it chain (seed = crc of the UUID, then of the inode number, then
of the structure).  The ``crc32c`` package computes the standard, inverted form, so
:func:`ext4_chksum` converts: raw(seed, data) == ~std(data, ~seed).
"""

from __future__ import annotations

import struct

import crc32c as _crc32c

__all__ = ["crc16", "ext4_chksum", "inode_csum_seed", "le32", "le64"]

_MASK = 0xFFFFFFFF


def ext4_chksum(seed: int, data: bytes | bytearray | memoryview) -> int:
    """crc32c(seed, data) as the kernel chains it (no inversions)."""
    return int(_crc32c.crc32c(data, seed ^ _MASK)) ^ _MASK


def le32(value: int) -> bytes:
    return struct.pack("<I", value & _MASK)


def le64(value: int) -> bytes:
    return struct.pack("<Q", value)


def inode_csum_seed(fs_seed: int, ino: int, generation: int) -> int:
    """The per-inode seed (``ei->i_csum_seed``) that inode, extent, directory checksums use."""
    return ext4_chksum(fs_seed, struct.pack("<II", ino & _MASK, generation & _MASK))


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16 = _crc16_table()


def crc16(crc: int, data: bytes | bytearray | memoryview) -> int:
    """The kernel's lib/crc16 (polynomial 0x8005, reflected), used by gdt_csum."""
    table = _CRC16
    for byte in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc & 0xFFFF
