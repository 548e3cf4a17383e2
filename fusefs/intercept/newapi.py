"""The new mount API (fsopen, fsconfig, fsmount), emulated for the types pyfsmount redirects.

``fsopen("ext4")`` cannot go to the kernel: the context it makes would have the kernel
parse the image. The caller gets a stand-in instead, the write end of a pipe added to its
fd table, and its fsconfig and fsmount calls on that fd are answered here, as the kernel
would answer them for a read-only device:

- ``FSCONFIG_SET_STRING "source"`` names the image (a file or block device, resolved as
  the caller sees it); other string and flag keys are the mount's data options;
- ``FSCONFIG_CMD_CREATE`` opens the source as the caller and starts a confined driver on
  it: a refused image fails here with EINVAL, as the kernel's superblock check would;
- ``fsmount`` finds the stand-in replaced by a real FUSE context, made and served by
  the supervisor (a read-only superblock, in a user namespace of its own if the caller
  owns its mount namespace): the kernel then runs the fsmount, and ``move_mount``, as
  the caller asked. (A mount fd cannot be handed over itself: the kernel does not pass
  O_PATH files to a seccomp-notified process.)

The caller holds the pipe's *write* end: a read() of it fails (EBADF), as a read of a
real context with no message pending fails (ENODATA). libmount 2.39+ reads messages after
every call until read() returns -1; an end that gave 0 (end of file) would loop it forever.
The supervisor keeps the pipe's read end. It reports hang-up once every copy of the
stand-in is closed: then the context is forgotten, and a driver that never got a mount
exits. Calls on any other fd (a context of a type the kernel may mount) go to the kernel.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field

from fusefs.intercept.loop import Attachment
from fusefs.intercept.notify import (
    Call,
    NotifyError,
    answer_with_fd,
    file_identity,
    identity,
    read_string,
)
from fusefs.launch import DriverProcess, abandon

log = logging.getLogger("pyfsmount.intercept")

FSOPEN_CLOEXEC = 1
(SET_FLAG, SET_STRING, SET_BINARY, SET_PATH, SET_PATH_EMPTY, SET_FD) = range(6)
CMD_CREATE, CMD_RECONFIGURE, CMD_CREATE_EXCL = 6, 7, 8
#: Open contexts one supervised command may hold; fsopen answers EMFILE beyond.
MAX_CONTEXTS = 64
#: The kernel's limits on an fsconfig key and string value (fs/fsopen.c).
KEY_MAX, VALUE_MAX = 256, 4096


@dataclass
class FsContext:
    """One emulated file-system context, as the kernel's fs_context: its phase, the
    source and options collected by fsconfig, and after CMD_CREATE the driver."""

    fs_type: str
    stand_in: int  # our read end of the pipe whose write end the caller holds
    source: str | None = None
    options: list[str] = field(default_factory=list)
    driver: DriverProcess | None = None
    fs_ids: tuple[int, int] = (65534, 65534)
    cloexec: bool = False  # FSOPEN_CLOEXEC: the real context gets the same fd flag
    loop: Attachment | None = None  # the emulated loop device of the source, if any
    phase: str = "collecting"  # -> "created" -> "mounted", or "failed"

    def close(self) -> None:
        """Forget the context; a driver that never got its mount exits."""
        os.close(self.stand_in)
        if self.driver is not None and self.phase == "created":
            abandon(self.driver)
        self.driver = None


class FsContexts:
    """The emulated contexts of one supervised command, keyed by their pipe's inode."""

    def __init__(self, listener: int) -> None:
        self.listener = listener
        self.open: dict[tuple[int, int], FsContext] = {}

    def stand_ins(self) -> list[int]:
        """Our pipe ends, to watch for hang-up (every copy of a stand-in closed)."""
        return [context.stand_in for context in self.open.values()]

    def hung_up(self, stand_in: int) -> None:
        """The caller closed a stand-in (or wrote to it: that is discarded)."""
        try:
            if os.read(stand_in, 65536):
                return
        except BlockingIOError:
            return
        for key, context in list(self.open.items()):
            if context.stand_in == stand_in:
                del self.open[key]
                log.info("fs context for %s closed (%s)", context.fs_type, context.phase)
                context.close()

    def close(self) -> None:
        for context in self.open.values():
            context.close()
        self.open.clear()

    def fsopen(self, call: Call, fs_type: str) -> None:
        """Answer fsopen(fs_type) with a stand-in fd in the caller."""
        flags = call.args[1]
        if flags & ~FSOPEN_CLOEXEC:
            raise NotifyError(errno.EINVAL, f"fsopen flags 0x{flags:x}")
        if len(self.open) >= MAX_CONTEXTS:
            raise NotifyError(errno.EMFILE, f"more than {MAX_CONTEXTS} open fs contexts")
        ours, theirs = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        info = os.fstat(ours)
        context = FsContext(fs_type, ours, cloexec=bool(flags & FSOPEN_CLOEXEC))
        try:
            number = answer_with_fd(self.listener, call.id, theirs, bool(flags & FSOPEN_CLOEXEC))
        except NotifyError:
            os.close(ours)
            raise
        finally:
            os.close(theirs)
        self.open[identity(info)] = context
        log.info("pid %d: fsopen(%r) = %d: an emulated context", call.pid, fs_type, number)

    def find(self, call: Call) -> FsContext | None:
        """The emulated context behind the call's first argument (an fd), if it is one."""
        identity = file_identity(self.listener, call, call.args[0])
        return None if identity is None else self.open.get(identity)

    def fsconfig(self, call: Call, context: FsContext) -> int | None:
        """Apply one fsconfig call; 0 or an errno, or None: CMD_CREATE is the caller's
        (the supervisor, which starts drivers, carries it out)."""
        command, key_address, value_address, aux = call.args[1:5]
        if context.phase != "collecting":
            return errno.EBUSY
        if command in (CMD_CREATE, CMD_CREATE_EXCL):
            return None
        if command == CMD_RECONFIGURE:
            return errno.EBUSY
        if command not in (SET_FLAG, SET_STRING):
            return errno.EINVAL if command <= SET_FD else errno.EOPNOTSUPP
        key = read_string(self.listener, call, key_address, KEY_MAX)
        if not key:
            return errno.EINVAL
        if command == SET_FLAG:
            if value_address or aux:
                return errno.EINVAL
            if key not in ("ro", "rw"):  # the mount is read-only whatever is asked
                context.options.append(key)
            return 0
        value = read_string(self.listener, call, value_address, VALUE_MAX)
        if value is None or aux:
            return errno.EINVAL
        if key == "source":
            if context.source is not None:
                return errno.EINVAL  # "VFS: Multiple sources", as the kernel says
            context.source = value
        else:
            context.options.append(f"{key}={value}")
        return 0
