"""The six squashfs compressors, each decompressing one block into at most ``cap`` bytes.

Every block of a squashfs image (metadata: 8 KiB, data and fragments: the block size) is
compressed on its own, so a decompressor is a function of one block.  The cap is the
whole defence against decompression bombs: a block that would inflate beyond it is a
:class:`CorruptImage` (as the kernel's fixed-size output buffers make it an error there),
and no codec is ever asked to allocate more than ``cap`` plus a few bytes:

* gzip (zlib format, as the kernel's zlib_wrapper): ISA-L's inflate (PyPI ``isal``), the
  zlib API at 1.8-2.4x the stdlib's speed on this machine, ``decompressobj`` with
  ``max_length = cap + 1``.
* xz, legacy lzma: the stdlib ``LZMADecompressor`` with ``max_length = cap + 1``;
  liblzma's dictionary allocation is bounded by ``memlimit`` (a stream may claim a
  1.5 GiB one).
* lz4: ``lz4.block.decompress`` with ``uncompressed_size = cap``, a hard output limit.
* zstd: the frame's declared content size is checked against the cap before
  ``ZstdDecompressor.decompress`` (which allocates that size), and ``max_output_size``
  bounds frames that declare none; the window is limited as the kernel's is.
* lzo: liblzo2's ``lzo1x_decompress_safe`` through ctypes, into a ``cap``-byte buffer.

A truncated stream is corrupt too (the kernel demands the end of stream).  Every codec
call releases the GIL (C extensions and ctypes foreign calls), so blocks can be
decompressed on a worker thread; decompressor objects are per call or per thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import lzma
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import zstandard
from isal import isal_zlib

from drivers.base import CorruptImage, Unsupported
from drivers.squashfs.layout import (
    LZ4_COMP_OPTS,
    LZ4_COMPRESSION,
    LZ4_LEGACY,
    LZMA_COMPRESSION,
    LZO_COMPRESSION,
    SQUASHFS_METADATA_SIZE,
    XZ_COMP_OPTS,
    XZ_COMPRESSION,
    ZLIB_COMPRESSION,
    ZSTD_COMPRESSION,
)

try:
    import lz4.block as _lz4_block
except ImportError as _exc:  # pragma: no cover - depends on the installation
    _lz4_block = None
    _LZ4_MISSING = f"the lz4 module is not installed ({_exc})"

__all__ = ["COMPRESSOR_NAMES", "Codec", "make_codec"]

COMPRESSOR_NAMES = {
    ZLIB_COMPRESSION: "gzip",
    LZMA_COMPRESSION: "lzma",
    LZO_COMPRESSION: "lzo",
    XZ_COMPRESSION: "xz",
    LZ4_COMPRESSION: "lz4",
    ZSTD_COMPRESSION: "zstd",
}

#: liblzma's decoder needs its dictionary plus ~200 KiB of state.
_LZMA_STATE_ALLOWANCE = 1 << 20
_ZSTD_CONTENTSIZE_UNKNOWN = (1 << 64) - 1

Decompress = Callable[[bytes, int], bytes]


@dataclass(frozen=True, slots=True)
class Codec:
    """One image's compressor: its name and ``decompress(data, cap) -> bytes``."""

    name: str
    decompress: Decompress


def _too_big(name: str, cap: int) -> CorruptImage:
    return CorruptImage(f"{name} block inflates beyond {cap} bytes")


def _truncated(name: str) -> CorruptImage:
    return CorruptImage(f"{name} block ends before its stream does")


#: ISA-L's error class (its stub declares an instance, hence the cast).
INFLATE_ERROR = cast(type[Exception], isal_zlib.error)


def _zlib(data: bytes, cap: int) -> bytes:
    inflater = isal_zlib.decompressobj()
    try:
        out = inflater.decompress(data, cap + 1)
    except INFLATE_ERROR as exc:
        raise CorruptImage(f"gzip block: {exc}") from exc
    if len(out) > cap:
        raise _too_big("gzip", cap)
    if not inflater.eof:
        raise _truncated("gzip")
    return out


def _lzma_decoder(fmt: int, name: str, memlimit: int) -> Decompress:
    def decompress(data: bytes, cap: int) -> bytes:
        decoder = lzma.LZMADecompressor(format=fmt, memlimit=memlimit)
        try:
            out = decoder.decompress(data, cap + 1)
        except lzma.LZMAError as exc:
            raise CorruptImage(f"{name} block: {exc}") from exc
        if len(out) > cap:
            raise _too_big(name, cap)
        if not decoder.eof:
            raise _truncated(name)
        return out

    return decompress


def _lz4(data: bytes, cap: int) -> bytes:
    try:
        out: bytes = _lz4_block.decompress(data, uncompressed_size=cap)
    except Exception as exc:  # LZ4BlockError, and ValueError for nonsense sizes
        raise CorruptImage(f"lz4 block: {exc} (or it inflates beyond {cap} bytes)") from exc
    return out


def _zstd_decoder(window: int) -> Decompress:
    local = threading.local()  # ZstdDecompressor objects are not thread-safe

    def decompress(data: bytes, cap: int) -> bytes:
        dctx: zstandard.ZstdDecompressor | None = getattr(local, "dctx", None)
        if dctx is None:
            dctx = local.dctx = zstandard.ZstdDecompressor(max_window_size=window)
        try:
            declared = zstandard.get_frame_parameters(data).content_size
            if declared != _ZSTD_CONTENTSIZE_UNKNOWN and declared > cap:
                raise _too_big("zstd", cap)
            return dctx.decompress(data, max_output_size=cap)
        except zstandard.ZstdError as exc:
            raise CorruptImage(f"zstd block: {exc}") from exc

    return decompress


def _load_lzo2() -> ctypes.CDLL:
    """liblzo2 by its soname; ctypes.util.find_library (which runs ldconfig, a few ms
    of every driver start) only where the soname is not found."""
    try:
        return ctypes.CDLL("liblzo2.so.2")
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("lzo2") or "liblzo2.so.2")


class _Lzo:
    """liblzo2's safe LZO1X decompressor, loaded once at import (None if unavailable)."""

    LZO_E_OK = 0

    def __init__(self) -> None:
        self.function: Callable[..., int] | None = None
        self.missing = ""
        try:
            lib = _load_lzo2()
            init = getattr(lib, "__lzo_init_v2")  # a literal would be name-mangled here
        except (OSError, AttributeError) as exc:
            self.missing = f"liblzo2 cannot be loaded ({exc})"
            return
        # lzo_init(): the library checks that our types have the sizes it was built with.
        pointer = ctypes.sizeof(ctypes.c_void_p)
        sizes = (
            ctypes.sizeof(ctypes.c_short),
            ctypes.sizeof(ctypes.c_int),
            ctypes.sizeof(ctypes.c_long),
            ctypes.sizeof(ctypes.c_uint32),
            ctypes.sizeof(ctypes.c_size_t),  # lzo_uint
            pointer,  # lzo_sizeof_dict_t
            pointer,  # char *
            pointer,  # lzo_voidp
            6 * pointer,  # lzo_callback_t: three functions, a pointer and two lzo_xint
        )
        if init(lib.lzo_version(), *sizes) != self.LZO_E_OK:
            self.missing = "liblzo2 refused to initialise (lzo_init failed)"
            return
        function = lib.lzo1x_decompress_safe
        function.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.c_void_p,
        ]
        function.restype = ctypes.c_int
        self.function = function

    def decompress(self, data: bytes, cap: int) -> bytes:
        assert self.function is not None
        out = bytearray(cap)
        out_len = ctypes.c_size_t(cap)
        result = self.function(
            data, len(data), (ctypes.c_char * cap).from_buffer(out), out_len, None
        )
        if result != self.LZO_E_OK:
            raise CorruptImage(f"lzo block: error {result} (corrupt, or inflates beyond {cap})")
        return bytes(memoryview(out)[: out_len.value])


_LZO = _Lzo()


def lzma_memlimit(block_size: int) -> int:
    """liblzma's memory limit: mksquashfs never uses a dictionary larger than a block."""
    return max(block_size, SQUASHFS_METADATA_SIZE) + _LZMA_STATE_ALLOWANCE


def _check_xz_options(options: bytes | None) -> None:
    """The kernel's xz options check: a dictionary of 2^n or 2^n + 2^(n+1) bytes."""
    if options is None:
        return
    if len(options) < XZ_COMP_OPTS.size:
        raise CorruptImage(f"xz compressor options are {len(options)} bytes, expected 8")
    dict_size = XZ_COMP_OPTS.unpack_record(options).dictionary_size
    low = dict_size & -dict_size
    if dict_size == 0 or dict_size not in (low, low + (low << 1)):
        raise CorruptImage(f"xz compressor options: bad dictionary size {dict_size}")


def _check_lz4_options(options: bytes | None) -> None:
    """The kernel's lz4 check: options are mandatory and name the legacy format."""
    if options is None or len(options) < LZ4_COMP_OPTS.size:
        raise CorruptImage("lz4 image without (complete) compressor options")
    version = LZ4_COMP_OPTS.unpack_record(options).version
    if version != LZ4_LEGACY:
        raise Unsupported(f"unknown LZ4 version {version} (only the legacy format, 1)")


def make_codec(compression: int, options: bytes | None, block_size: int) -> Codec:
    """The codec for compressor id ``compression``, its options (if stored) checked.

    Raises Unsupported for an unknown compressor or one this machine cannot decode.
    """
    name = COMPRESSOR_NAMES.get(compression)
    if name is None:
        raise Unsupported(f"unknown compression id {compression} (this driver knows 1-6)")
    window = max(block_size, SQUASHFS_METADATA_SIZE)
    if compression == ZLIB_COMPRESSION:
        return Codec(name, _zlib)
    if compression == XZ_COMPRESSION:
        _check_xz_options(options)
        return Codec(name, _lzma_decoder(lzma.FORMAT_XZ, name, lzma_memlimit(block_size)))
    if compression == LZMA_COMPRESSION:
        return Codec(name, _lzma_decoder(lzma.FORMAT_ALONE, name, lzma_memlimit(block_size)))
    if compression == LZ4_COMPRESSION:
        if _lz4_block is None:
            raise Unsupported(f"lz4 compression: {_LZ4_MISSING}")
        _check_lz4_options(options)
        return Codec(name, _lz4)
    if compression == ZSTD_COMPRESSION:
        return Codec(name, _zstd_decoder(window))
    if _LZO.function is None:
        raise Unsupported(f"lzo compression: {_LZO.missing}")
    return Codec(name, _LZO.decompress)
