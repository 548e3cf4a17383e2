"""The squashfs codecs on their own: round trips, the output cap, corrupt and truncated input.

No image is needed: blocks are compressed here (lzo through liblzo2's own compressor),
so the legacy lzma decoder, which the kernel lacks, is checked without one too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import lzma
import tracemalloc
import zlib
from collections.abc import Callable

import lz4.block
import pytest
import zstandard

from drivers.base import CorruptImage, Unsupported
from drivers.squashfs.compression import lzma_memlimit, make_codec
from drivers.squashfs.layout import (
    LZ4_COMP_OPTS,
    LZ4_COMPRESSION,
    LZMA_COMPRESSION,
    LZO_COMPRESSION,
    XZ_COMP_OPTS,
    XZ_COMPRESSION,
    ZLIB_COMPRESSION,
    ZSTD_COMPRESSION,
)

BLOCK = 131072
LZ4_OPTIONS = LZ4_COMP_OPTS.pack(version=1, flags=0)


def lzo_compress(data: bytes) -> bytes:
    lib = ctypes.CDLL(ctypes.util.find_library("lzo2") or "liblzo2.so.2")
    out = ctypes.create_string_buffer(len(data) + len(data) // 16 + 64 + 3)
    out_len = ctypes.c_size_t(len(out))
    work = ctypes.create_string_buffer(16384 * ctypes.sizeof(ctypes.c_void_p))
    assert (
        lib.lzo1x_1_compress(data, ctypes.c_size_t(len(data)), out, ctypes.byref(out_len), work)
        == 0
    )
    return out.raw[: out_len.value]


def squashfs_lzma(data: bytes) -> bytes:
    """As squashfs-tools' lzma wrapper: an .lzma header carrying the real size."""
    filters = [{"id": lzma.FILTER_LZMA1, "dict_size": BLOCK}]
    out = bytearray(lzma.compress(data, format=lzma.FORMAT_ALONE, filters=filters))
    out[5:13] = len(data).to_bytes(8, "little")
    return bytes(out)


COMPRESSORS: dict[int, tuple[Callable[[bytes], bytes], bytes | None]] = {
    ZLIB_COMPRESSION: (zlib.compress, None),
    XZ_COMPRESSION: (lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, preset=1), None),
    LZMA_COMPRESSION: (squashfs_lzma, None),
    LZO_COMPRESSION: (lzo_compress, None),
    LZ4_COMPRESSION: (lambda d: lz4.block.compress(d, store_size=False), LZ4_OPTIONS),
    ZSTD_COMPRESSION: (lambda d: zstandard.ZstdCompressor(level=3).compress(d), None),
}
DATA = b"".join(b"line %d of the block\n" % i for i in range(6000))[:BLOCK]


@pytest.mark.parametrize("compression", list(COMPRESSORS))
def test_round_trip_and_cap(compression: int) -> None:
    compress, options = COMPRESSORS[compression]
    codec = make_codec(compression, options, BLOCK)
    packed = compress(DATA)
    assert codec.decompress(packed, BLOCK) == DATA
    assert codec.decompress(compress(DATA[:100]), 8192) == DATA[:100]
    with pytest.raises(CorruptImage):
        codec.decompress(packed, BLOCK - 1)  # one byte too many: a bomb
    with pytest.raises(CorruptImage):
        codec.decompress(packed[: len(packed) // 2], BLOCK)  # truncated
    with pytest.raises(CorruptImage):
        codec.decompress(b"\xff" * 64, BLOCK)
    with pytest.raises(CorruptImage):
        codec.decompress(b"", BLOCK)


#: sizeof(struct inflate_state) in ISA-L, measured with tracemalloc (87,546 bytes).
ISAL_INFLATE_STATE = 88 << 10


@pytest.mark.parametrize("compression", list(COMPRESSORS))
def test_bomb_allocates_about_the_cap(compression: int) -> None:
    """16 MiB of zeros asked into an 8 KiB metadata block: refused, little memory used.

    liblzma's decoder state (its dictionary) is bounded by the memory limit instead;
    ISA-L's inflate state is a fixed 87.5 KB, whatever the stream claims.
    """
    compress, options = COMPRESSORS[compression]
    bomb = compress(bytes(16 << 20) if compression != LZO_COMPRESSION else bytes(4 << 20))
    codec = make_codec(compression, options, BLOCK)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptImage):
            codec.decompress(bomb, 8192)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    state = {
        XZ_COMPRESSION: lzma_memlimit(BLOCK),
        LZMA_COMPRESSION: lzma_memlimit(BLOCK),
        ZLIB_COMPRESSION: ISAL_INFLATE_STATE,
    }.get(compression, 0)
    assert peak < 8192 + len(bomb) + state + (64 << 10)


def test_zstd_frame_claiming_a_huge_size() -> None:
    """The declared content size is checked before anything is allocated for it."""
    frame = (
        b"\x28\xb5\x2f\xfd"  # magic
        + b"\xe0"  # single segment, 8-byte content size
        + (1 << 40).to_bytes(8, "little")
        + ((5 << 3) | 1).to_bytes(3, "little")  # last block, raw, 5 bytes
        + b"hello"
    )
    codec = make_codec(ZSTD_COMPRESSION, None, BLOCK)
    with pytest.raises(CorruptImage, match="beyond"):
        codec.decompress(frame, BLOCK)


def test_xz_dictionary_beyond_the_block_is_refused() -> None:
    """liblzma's memory limit: a stream may not ask for a dictionary bigger than a block."""
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 64 << 20}]
    packed = lzma.compress(b"x" * 1000, format=lzma.FORMAT_XZ, filters=filters)
    with pytest.raises(CorruptImage, match="Memory usage limit"):
        make_codec(XZ_COMPRESSION, None, BLOCK).decompress(packed, BLOCK)


def test_legacy_lzma_stream_of_unknown_size() -> None:
    filters = [{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 20}]
    packed = lzma.compress(DATA, format=lzma.FORMAT_ALONE, filters=filters)
    assert packed[5:13] == b"\xff" * 8
    assert make_codec(LZMA_COMPRESSION, None, 1 << 20).decompress(packed, BLOCK) == DATA
    big_dictionary = packed[:1] + (8 << 20).to_bytes(4, "little") + packed[5:]  # not squashfs
    with pytest.raises(CorruptImage, match="Memory usage limit"):
        make_codec(LZMA_COMPRESSION, None, BLOCK).decompress(big_dictionary, BLOCK)


def test_compressor_ids_and_options() -> None:
    with pytest.raises(Unsupported, match="7"):
        make_codec(7, None, BLOCK)
    with pytest.raises(Unsupported, match="0"):
        make_codec(0, None, BLOCK)
    with pytest.raises(CorruptImage, match="lz4"):
        make_codec(LZ4_COMPRESSION, None, BLOCK)
    with pytest.raises(CorruptImage, match="lz4"):
        make_codec(LZ4_COMPRESSION, b"\x01\x00", BLOCK)
    with pytest.raises(Unsupported, match="LZ4 version 2"):
        make_codec(LZ4_COMPRESSION, LZ4_COMP_OPTS.pack(version=2, flags=0), BLOCK)
    for dict_size in (1 << 16, 3 << 16, 1 << 20):
        make_codec(XZ_COMPRESSION, XZ_COMP_OPTS.pack(dictionary_size=dict_size, flags=1), BLOCK)
    for dict_size in (0, 5 << 16, (1 << 16) + 1):
        with pytest.raises(CorruptImage, match="dictionary"):
            options = XZ_COMP_OPTS.pack(dictionary_size=dict_size, flags=0)
            make_codec(XZ_COMPRESSION, options, BLOCK)
    with pytest.raises(CorruptImage, match="xz"):
        make_codec(XZ_COMPRESSION, b"\x00\x00\x01", BLOCK)
