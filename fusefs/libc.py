"""The C library, for the calls Python's os module does not make: one handle for the package.

``mount``, ``umount2``, ``unshare``, ``prctl``, ``setns``, ``ioctl`` on seccomp's
listener, ``syscall`` for what glibc has no wrapper for (capset, pivot_root,
pidfd_open, ...), ``free`` for what libseccomp hands out, ``malloc_trim``,
``mallopt`` and ``mallinfo2`` for the heap. The prototypes of those that need one are declared here,
once; ``syscall`` and ``ioctl`` are variadic and get only their return type.

glibc is named by its soname: ``ctypes.util.find_library`` would run ldconfig on every
start. The handle is made at import, while the library can still be found: a confined
driver has no file system to find it in.
"""

from __future__ import annotations

import ctypes

__all__ = ["LIBC", "Mallinfo2"]

LIBC = ctypes.CDLL("libc.so.6", use_errno=True)


class Mallinfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h), summed over every arena."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


LIBC.mount.argtypes = (
    ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p
)  # fmt: skip
LIBC.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
LIBC.unshare.argtypes = (ctypes.c_int,)
LIBC.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
LIBC.prctl.restype = ctypes.c_int
LIBC.syscall.restype = ctypes.c_long
LIBC.free.argtypes = (ctypes.c_void_p,)
LIBC.free.restype = None
LIBC.malloc_trim.argtypes = (ctypes.c_size_t,)
LIBC.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
LIBC.mallopt.restype = ctypes.c_int
LIBC.mallinfo2.argtypes = ()
LIBC.mallinfo2.restype = Mallinfo2
