"""Seccomp user notification, the kernel interface (linux/seccomp.h), through ctypes.

The supervised process runs under a filter whose mount rules answer
SECCOMP_RET_USER_NOTIF: the call blocks, and the supervisor, holding the filter's
listener fd, receives it (:func:`receive`), reads its arguments from the caller's memory
(:func:`read_string`, checking :func:`still_valid` after every read: the caller may have
died and its pid been reused), and answers it (:func:`respond`) with a result, an errno,
or "continue": let the kernel run the call as the caller asked, with the caller's own
credentials and checks.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fusefs import seccomp
from fusefs.libc import LIBC

SYS_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102
SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103
SYS_PIDFD_OPEN, SYS_PIDFD_GETFD = 434, 438
SECCOMP_ADDFD_FLAG_SETFD, SECCOMP_ADDFD_FLAG_SEND = 1 << 0, 1 << 1
#: libseccomp's action for "send to the listener".
ACT_NOTIFY = 0x7FC00000

_T = TypeVar("_T")


class _Data(ctypes.Structure):
    _fields_ = [
        ("nr", ctypes.c_int32),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    ]


class _Notif(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("data", _Data),
    ]


class _Resp(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("val", ctypes.c_int64),
        ("error", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class _AddFd(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("srcfd", ctypes.c_uint32),
        ("newfd", ctypes.c_uint32),
        ("newfd_flags", ctypes.c_uint32),
    ]


class NotifyError(OSError):
    """A user-notification ioctl failed."""


@dataclass(frozen=True)
class Call:
    """One trapped system call: its cookie, the caller's pid (ours), its number, args."""

    id: int
    pid: int
    nr: int
    args: tuple[int, ...]

    @property
    def name(self) -> str:
        return seccomp.syscall_name(self.nr)


def install_listener(rules: list[seccomp.Rule]) -> int:
    """Load a filter (default: allow) whose ACT_NOTIFY rules go to a new listener; return
    the listener fd. In the process to supervise, single-threaded, no_new_privs set."""
    program = seccomp.compile_program(rules, default=seccomp.ACT_ALLOW)
    buffer = ctypes.create_string_buffer(program, len(program))

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _Prog(len(program) // 8, ctypes.addressof(buffer))
    fd = LIBC.syscall(
        ctypes.c_long(SYS_SECCOMP),
        ctypes.c_long(SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(SECCOMP_FILTER_FLAG_NEW_LISTENER),
        ctypes.byref(prog),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise NotifyError(err, f"seccomp listener: {os.strerror(err)}")
    return int(fd)


def receive(listener: int) -> Call | None:
    """The next trapped call; None if it vanished before we got it (caller killed)."""
    notif = _Notif()
    if LIBC.ioctl(listener, ctypes.c_ulong(SECCOMP_IOCTL_NOTIF_RECV), ctypes.byref(notif)) < 0:
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.EINTR):
            return None
        raise NotifyError(err, f"SECCOMP_IOCTL_NOTIF_RECV: {os.strerror(err)}")
    return Call(notif.id, notif.pid, notif.data.nr, tuple(notif.data.args))


def still_valid(listener: int, call_id: int) -> bool:
    """Whether the caller still waits in this call (so its pid still names it)."""
    cookie = ctypes.c_uint64(call_id)
    return bool(
        LIBC.ioctl(listener, ctypes.c_ulong(SECCOMP_IOCTL_NOTIF_ID_VALID), ctypes.byref(cookie))
        == 0
    )


def respond(
    listener: int, call_id: int, value: int = 0, error: int = 0, proceed: bool = False
) -> None:
    """Answer a call: ``value`` (success), ``error`` (an errno), or let the kernel run it."""
    resp = _Resp(call_id, 0 if proceed else value, 0 if proceed else -error, 0)
    if proceed:
        resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE
    if LIBC.ioctl(listener, ctypes.c_ulong(SECCOMP_IOCTL_NOTIF_SEND), ctypes.byref(resp)) < 0:
        err = ctypes.get_errno()
        if err != errno.ENOENT:  # ENOENT: the caller is gone; nothing to answer
            raise NotifyError(err, f"SECCOMP_IOCTL_NOTIF_SEND: {os.strerror(err)}")


def answer_with_fd(listener: int, call_id: int, fd: int, cloexec: bool) -> int:
    """Install a copy of our ``fd`` in the caller's fd table and answer the call with its
    number there (SECCOMP_ADDFD_FLAG_SEND: one step, so a caller that dies in between
    leaks nothing). The caller's fd number is returned."""
    return _add_fd(listener, call_id, fd, SECCOMP_ADDFD_FLAG_SEND, 0, cloexec)


def replace_fd(listener: int, call_id: int, fd: int, number: int, cloexec: bool) -> None:
    """Put a copy of our ``fd`` at ``number`` in the caller's fd table, closing what was
    there (SECCOMP_ADDFD_FLAG_SETFD, as dup2 would); the call is still to be answered.
    The kernel refuses to pass O_PATH files this way (a mount fd, say)."""
    _add_fd(listener, call_id, fd, SECCOMP_ADDFD_FLAG_SETFD, number, cloexec)


def _add_fd(listener: int, call_id: int, fd: int, flags: int, number: int, cloexec: bool) -> int:
    request = _AddFd(call_id, flags, fd, number, os.O_CLOEXEC if cloexec else 0)
    result = LIBC.ioctl(listener, ctypes.c_ulong(SECCOMP_IOCTL_NOTIF_ADDFD), ctypes.byref(request))
    if result < 0:
        err = ctypes.get_errno()
        raise NotifyError(err, f"SECCOMP_IOCTL_NOTIF_ADDFD: {os.strerror(err)}")
    return int(result)


def identity(info: os.stat_result) -> tuple[int, int]:
    """(device, inode): which file a stat result is of, whatever path or fd led to it."""
    return info.st_dev, info.st_ino


def file_identity(listener: int, call: Call, fd: int) -> tuple[int, int] | None:
    """(device, inode) of the file behind the caller's ``fd``; None if it has no such fd.

    Taken from /proc/PID/fd, then checked with :func:`still_valid` like any read of the
    caller's state. A 32-bit argument is an int to the kernel: negative is no fd.
    """
    number = ctypes.c_int32(fd & 0xFFFFFFFF).value
    if number < 0:
        return None
    try:
        info = os.stat(f"/proc/{call.pid}/fd/{number}")
    except OSError:
        info = None
    ensure_waiting(listener, call)
    return None if info is None else identity(info)


def read_string(listener: int, call: Call, address: int, limit: int = 4096) -> str | None:
    """The NUL-terminated string at ``address`` in the caller's memory (None for NULL).

    Read through /proc/PID/mem, then checked with :func:`still_valid`: if the caller died
    meanwhile, its pid may name another process, and what was read is not its.
    """
    if address == 0:
        return None

    def read(fd: int) -> bytes:
        data = b""
        while len(data) < limit and b"\0" not in data:
            chunk = os.pread(fd, min(256, limit - len(data)), address + len(data))
            if not chunk:
                break
            data += chunk
        return data

    data = _access_memory(call, read, os.O_RDONLY)
    ensure_waiting(listener, call)
    if b"\0" not in data:
        raise NotifyError(errno.ENAMETOOLONG, "string argument too long")
    return data.split(b"\0", 1)[0].decode(errors="surrogateescape")


def read_bytes(listener: int, call: Call, address: int, size: int) -> bytes:
    """``size`` bytes of the caller's memory at ``address`` (a structure it passed)."""
    data = _access_memory(call, lambda fd: os.pread(fd, size, address), os.O_RDONLY)
    ensure_waiting(listener, call)
    if len(data) != size:
        raise NotifyError(errno.EFAULT, "reading the caller's memory")
    return data


def write_bytes(listener: int, call: Call, address: int, data: bytes) -> None:
    """Fill a structure the caller passed to be filled (its call is answered next)."""
    ensure_waiting(listener, call)  # never write into another process
    written = _access_memory(call, lambda fd: os.pwrite(fd, data, address), os.O_WRONLY)
    if written != len(data):
        raise NotifyError(errno.EFAULT, "writing the caller's memory")


def ensure_waiting(listener: int, call: Call) -> None:
    """ESRCH unless the caller still waits in this call (then its pid is still its)."""
    if not still_valid(listener, call.id):
        raise NotifyError(errno.ESRCH, "the caller went away")


def _access_memory(call: Call, access: Callable[[int], _T], mode: int) -> _T:
    try:
        fd = os.open(f"/proc/{call.pid}/mem", mode | os.O_CLOEXEC)
    except OSError as exc:
        raise NotifyError(exc.errno or errno.ESRCH, "opening the caller's memory") from None
    try:
        return access(fd)
    except OSError as exc:
        raise NotifyError(exc.errno or errno.EFAULT, "the caller's memory") from None
    finally:
        os.close(fd)


def take_fd(listener: int, call: Call, fd: int) -> int:
    """A copy of the caller's ``fd`` (pidfd_getfd): the file it opened, with its rights."""
    pidfd = LIBC.syscall(ctypes.c_long(SYS_PIDFD_OPEN), ctypes.c_long(call.pid), 0)
    if pidfd < 0:
        raise NotifyError(ctypes.get_errno(), "pidfd_open")
    try:
        ensure_waiting(listener, call)  # the pidfd may name another process
        number = ctypes.c_int32(fd & 0xFFFFFFFF).value
        copy = LIBC.syscall(
            ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_long(pidfd), ctypes.c_long(number), 0
        )
        if copy < 0:
            raise NotifyError(ctypes.get_errno(), f"the caller's fd {number}")
        return int(copy)
    finally:
        os.close(pidfd)
