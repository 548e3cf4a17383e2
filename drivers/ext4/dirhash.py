"""The name hashes of htree directories: legacy, half_md4 and tea, signed or unsigned.

These follow the kernel's fs/ext4/hash.c bit for bit (the "signed" variants sign-extend
name bytes >= 0x80, as an x86 char does; ``s_flags`` says which one the volume uses).
The result has its low bit cleared, as htree keys do (the low bit marks collisions).
"""

from __future__ import annotations

__all__ = [
    "DX_HASH_HALF_MD4",
    "DX_HASH_LEGACY",
    "DX_HASH_TEA",
    "dirhash",
]

DX_HASH_LEGACY = 0
DX_HASH_HALF_MD4 = 1
DX_HASH_TEA = 2
DX_HASH_LEGACY_UNSIGNED = 3
DX_HASH_HALF_MD4_UNSIGNED = 4
DX_HASH_TEA_UNSIGNED = 5
DX_HASH_SIPHASH = 6

M32 = 0xFFFFFFFF
_DEFAULT_SEED = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
EXT4_HTREE_EOF_32BIT = 0x7FFFFFFF


def _chars(name: bytes, signed: bool) -> list[int]:
    if signed:
        return [b - 256 if b & 0x80 else b for b in name]
    return list(name)


def _dx_hack_hash(name: bytes, signed: bool) -> int:
    hash0, hash1 = 0x12A3FE2D, 0x37ABE8F9
    for ch in _chars(name, signed):
        h = (hash1 + (hash0 ^ ((ch * 7152373) & M32))) & M32
        if h & 0x80000000:
            h = (h - 0x7FFFFFFF) & M32
        hash1, hash0 = hash0, h
    return (hash0 << 1) & M32


def _str2hashbuf(msg: list[int], num: int) -> list[int]:
    """Pack up to num*4 name bytes into num words, padded with the length (str2hashbuf)."""
    length = len(msg)
    pad = (length | (length << 8)) & M32
    pad = (pad | (pad << 16)) & M32
    val = pad
    out: list[int] = []
    for i, ch in enumerate(msg[: num * 4]):
        val = (ch + (val << 8)) & M32
        if i % 4 == 3:
            out.append(val)
            val = pad
    if len(out) < num:
        out.append(val)
    while len(out) < num:
        out.append(pad)
    return out


_K2 = 0o13240474631
_K3 = 0o15666365641


def _half_md4(buf: list[int], inp: list[int]) -> None:
    """half_md4_transform: three rounds of MD4 over 8 words (rounds written out for speed)."""
    a, b, c, d = buf
    x0, x1, x2, x3, x4, x5, x6, x7 = inp
    m = M32
    # Round 1: F(x, y, z) = z ^ (x & (y ^ z))
    for w0, w1, w2, w3 in ((x0, x1, x2, x3), (x4, x5, x6, x7)):
        t = (a + (d ^ (b & (c ^ d))) + w0) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + (c ^ (a & (b ^ c))) + w1) & m
        d = ((t << 7) | (t >> 25)) & m
        t = (c + (b ^ (d & (a ^ b))) + w2) & m
        c = ((t << 11) | (t >> 21)) & m
        t = (b + (a ^ (c & (d ^ a))) + w3) & m
        b = ((t << 19) | (t >> 13)) & m
    # Round 2: G(x, y, z) = (x & y) + ((x ^ y) & z)
    for w0, w1, w2, w3 in ((x1, x3, x5, x7), (x0, x2, x4, x6)):
        t = (a + ((b & c) + ((b ^ c) & d)) + w0 + _K2) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + ((a & b) + ((a ^ b) & c)) + w1 + _K2) & m
        d = ((t << 5) | (t >> 27)) & m
        t = (c + ((d & a) + ((d ^ a) & b)) + w2 + _K2) & m
        c = ((t << 9) | (t >> 23)) & m
        t = (b + ((c & d) + ((c ^ d) & a)) + w3 + _K2) & m
        b = ((t << 13) | (t >> 19)) & m
    # Round 3: H(x, y, z) = x ^ y ^ z
    for w0, w1, w2, w3 in ((x3, x7, x2, x6), (x1, x5, x0, x4)):
        t = (a + (b ^ c ^ d) + w0 + _K3) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + (a ^ b ^ c) + w1 + _K3) & m
        d = ((t << 9) | (t >> 23)) & m
        t = (c + (d ^ a ^ b) + w2 + _K3) & m
        c = ((t << 11) | (t >> 21)) & m
        t = (b + (c ^ d ^ a) + w3 + _K3) & m
        b = ((t << 15) | (t >> 17)) & m
    buf[0] = (buf[0] + a) & m
    buf[1] = (buf[1] + b) & m
    buf[2] = (buf[2] + c) & m
    buf[3] = (buf[3] + d) & m


def _tea(buf: list[int], inp: list[int]) -> None:
    total = 0
    b0, b1 = buf[0], buf[1]
    a, b, c, d = inp[0], inp[1], inp[2], inp[3]
    for _ in range(16):
        total = (total + 0x9E3779B9) & M32
        b0 = (b0 + ((((b1 << 4) + a) ^ (b1 + total) ^ ((b1 >> 5) + b)) & M32)) & M32
        b1 = (b1 + ((((b0 << 4) + c) ^ (b0 + total) ^ ((b0 >> 5) + d)) & M32)) & M32
    buf[0] = (buf[0] + b0) & M32
    buf[1] = (buf[1] + b1) & M32


def dirhash(name: bytes, version: int, seed: tuple[int, ...] | None) -> int | None:
    """The major hash of ``name`` (low bit clear), or None for an unknown hash version."""
    buf = list(_DEFAULT_SEED)
    if seed and any(seed):
        buf = [s & M32 for s in seed[:4]]
    if version in (DX_HASH_LEGACY, DX_HASH_LEGACY_UNSIGNED):
        result = _dx_hack_hash(name, version == DX_HASH_LEGACY)
    elif version in (DX_HASH_HALF_MD4, DX_HASH_HALF_MD4_UNSIGNED):
        chars = _chars(name, version == DX_HASH_HALF_MD4)
        for pos in range(0, len(chars), 32):
            _half_md4(buf, _str2hashbuf(chars[pos:], 8))
        result = buf[1]
    elif version in (DX_HASH_TEA, DX_HASH_TEA_UNSIGNED):
        chars = _chars(name, version == DX_HASH_TEA)
        for pos in range(0, len(chars), 16):
            _tea(buf, _str2hashbuf(chars[pos:], 4))
        result = buf[0]
    else:
        return None
    result &= ~1 & M32
    if result == EXT4_HTREE_EOF_32BIT << 1:
        result = (EXT4_HTREE_EOF_32BIT - 1) << 1
    return result
