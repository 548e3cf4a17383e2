"""Loop devices, emulated: ``mount -o loop`` for callers that may not set up a real one.

util-linux sets up a loop device before it calls mount(2): it opens /dev/loop-control and
asks for a free device (LOOP_CTL_GET_FREE), opens /dev/loopN, attaches the image to it
(LOOP_CONFIGURE, or LOOP_SET_FD and LOOP_SET_STATUS64), then mounts /dev/loopN. A caller
that may not open those device nodes (an unprivileged container) fails before mount(2).
And a real loop device, where it is allowed, is host-wide state that outlives the command.

So the command gets stand-ins. Before it starts, :func:`cover_loop_devices` covers
/dev/loop-control and each /dev/loopN of its mount namespace with empty files of a private
tmpfs, open to all. The caller still opens, with its own rights, the image it attaches.
The loop ioctls on a stand-in (the filter traps the 0x4Cxx commands, nothing else) are
answered by :class:`LoopDevices`:

- LOOP_CTL_GET_FREE gives the first stand-in that is free;
- LOOP_CONFIGURE or LOOP_SET_FD takes the caller's own fd of the image (pidfd_getfd).
  /dev/loopN in the caller's namespace is then covered with a read-only bind of that
  image, so what util-linux reads there (blkid's probe) and mounts from there is the image
  itself; the redirect opens it as any image file, and applies the offset it was attached
  with (remembered by the image's device and inode);
- LOOP_GET_STATUS64 describes the attachment, LOOP_SET_STATUS64 updates it, LOOP_CLR_FD
  lifts the bind, BLKGETSIZE64 gives its size; the tuning commands (capacity, block
  size, direct I/O) do nothing;
- an attachment with autoclear (mount(8) asks for it) is free again once the mount made
  from it has ended, as the kernel frees such a device.

The same commands on any other fd (a real loop device the caller may open) go to the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass, field

from fusefs.intercept.caller import CallerView
from fusefs.intercept.notify import (
    Call,
    file_identity,
    identity,
    read_bytes,
    respond,
    take_fd,
    write_bytes,
)
from fusefs.libc import LIBC
from fusefs.mount import MNT_DETACH
from fusefs.options import MS_NODEV, MS_NOEXEC, MS_NOSUID

log = logging.getLogger("pyfsmount.intercept")

LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS, LOOP_GET_STATUS = 0x4C00, 0x4C01, 0x4C02, 0x4C03
LOOP_SET_STATUS64, LOOP_GET_STATUS64, LOOP_CHANGE_FD = 0x4C04, 0x4C05, 0x4C06
LOOP_SET_CAPACITY, LOOP_SET_DIRECT_IO, LOOP_SET_BLOCK_SIZE = 0x4C07, 0x4C08, 0x4C09
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_ADD, LOOP_CTL_REMOVE, LOOP_CTL_GET_FREE = 0x4C80, 0x4C81, 0x4C82
#: The filter traps ioctl commands 0x4C00-0x4CFF (the loop driver's) and BLKGETSIZE64
#: (util-linux asks a loop device attached with an offset for its size), nothing else.
IOCTL_MASK, IOCTL_LOOP = 0xFFFFFF00, 0x4C00
BLKGETSIZE64 = 0x80081272
LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR = 1, 4
LO_NAME_SIZE = 64
#: More stand-ins than /dev has loop nodes cannot be made (a bind needs a node to cover).
MAX_DEVICES = 64
CONTROL = "/dev/loop-control"
MS_BIND = 0x1000


class LoopInfo64(ctypes.Structure):
    """struct loop_info64 (linux/loop.h)."""

    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_char * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_char * LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class LoopConfig(ctypes.Structure):
    """struct loop_config, LOOP_CONFIGURE's argument."""

    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


def cover_loop_devices(scratch: str = "/tmp") -> dict[str, object]:
    """In the command's own mount namespace, before it starts: cover /dev/loop-control
    and each /dev/loopN with an empty file (mode 0666) of a private tmpfs, mounted at
    ``scratch`` just long enough to make them. Their identities, for the supervisor:
    ``{"control": [dev, ino], "devices": {N: [dev, ino]}}``; empty where /dev has no
    loop-control (a container's /dev): there is nothing to cover, and util-linux's loop
    setup fails there as it would without the interceptor."""
    if not os.path.exists(CONTROL):
        return {}
    numbers = sorted(
        int(name[4:])
        for name in os.listdir("/dev")
        if re.fullmatch(r"loop\d+", name) and stat.S_ISBLK(os.stat(f"/dev/{name}").st_mode)
    )[:MAX_DEVICES]
    tmpfs_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if LIBC.mount(b"pyfsmount-loop", scratch.encode(), b"tmpfs", tmpfs_flags, b"size=64k"):
        raise OSError(ctypes.get_errno(), "mounting the stand-ins' tmpfs")
    covered: dict[str, object] = {}
    try:
        devices: dict[int, list[int]] = {}
        for name in ["loop-control", *(f"loop{n}" for n in numbers)]:
            stand_in = os.path.join(scratch, name)
            os.close(os.open(stand_in, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
            os.chmod(stand_in, 0o666)
            target = f"/dev/{name}"
            if LIBC.mount(stand_in.encode(), target.encode(), None, MS_BIND, None):
                raise OSError(ctypes.get_errno(), f"covering {target}")
            info = os.stat(target)
            if name == "loop-control":
                covered["control"] = list(identity(info))
            else:
                devices[int(name[4:])] = list(identity(info))
        covered["devices"] = devices
    finally:
        LIBC.umount2(scratch.encode(), MNT_DETACH)
    return covered


@dataclass
class Attachment:
    """One emulated loop device in use: the caller's image and how it was attached."""

    image: int  # our copy of the caller's fd
    identity: tuple[int, int]
    info: LoopInfo64
    mounts: int = 0
    #: Set once the last mount made from it has ended (autoclear frees it then).
    released: threading.Event = field(default_factory=threading.Event)

    def size(self) -> int:
        """The device's size, as the kernel's loop driver has it: the image from the
        offset, up to the size limit, in whole 512-byte sectors."""
        offset, limit = int(self.info.lo_offset), int(self.info.lo_sizelimit)
        size = max(0, _size_of(self.image) - offset)
        if limit:
            size = min(size, limit)
        return size & ~511


class LoopDevices:
    """The stand-ins of one supervised command, and what is attached to them."""

    def __init__(self, listener: int, covered: dict[str, object]) -> None:
        self.listener = listener
        control = covered.get("control")
        devices = covered.get("devices") or {}
        assert isinstance(devices, dict)
        self.control = tuple(control) if isinstance(control, list) else None
        self.devices = {tuple(ident): int(n) for n, ident in devices.items()}
        self.attached: dict[int, Attachment] = {}
        self.lock = threading.Lock()

    def answer(self, call: Call) -> None:
        """Answer a trapped loop ioctl: emulated on a stand-in, the kernel's otherwise."""
        key = file_identity(self.listener, call, call.args[0])
        command = call.args[1] & 0xFFFFFFFF
        number = None if key is None else self.device_of(key)
        if key is not None and key == self.control:
            self.respond(call, self.on_control(call, command, call.args[2]))
        elif number is not None:
            self.respond(call, self.on_device(call, number, command))
        else:
            respond(self.listener, call.id, proceed=True)

    def device_of(self, key: tuple[int, int]) -> int | None:
        """The emulated device an fd is open on: a stand-in, or (opened since it was
        attached) the image that covers /dev/loopN."""
        if key in self.devices:
            return self.devices[key]
        found = [n for n, a in self.attached.items() if a.identity == key]
        return found[0] if len(found) == 1 else None

    def respond(self, call: Call, result: int) -> None:
        """``result``: a value (>= 0) or a negated errno."""
        if result < 0:
            respond(self.listener, call.id, error=-result)
        else:
            respond(self.listener, call.id, value=result)

    def on_control(self, call: Call, command: int, argument: int) -> int:
        if command == LOOP_CTL_GET_FREE:
            free = [n for n in sorted(self.devices.values()) if self.is_free(n)]
            if not free:
                return -errno.ENOSPC
            if free[0] in self.attached:  # autocleared: the stand-in shows again
                self.detach(call, free[0])
            return free[0]
        if command == LOOP_CTL_ADD:
            return -errno.EEXIST if argument in self.devices.values() else -errno.EPERM
        if command == LOOP_CTL_REMOVE:
            return -errno.EBUSY if argument in self.attached else -errno.EPERM
        return -errno.ENOTTY

    def on_device(self, call: Call, number: int, command: int) -> int:
        attached = self.attached.get(number)
        if command in (LOOP_CONFIGURE, LOOP_SET_FD):
            if attached is not None and not self.is_free(number):
                return -errno.EBUSY
            return self.attach(call, number, command)
        if command in (LOOP_GET_STATUS, LOOP_SET_STATUS, LOOP_CHANGE_FD):
            return -errno.EINVAL  # the 32-bit structures: util-linux uses the 64-bit ones
        if attached is None:
            return -errno.ENXIO  # as for a device with nothing attached
        if command == LOOP_GET_STATUS64:
            info = LoopInfo64.from_buffer_copy(bytes(attached.info))
            info.lo_number = number
            info.lo_device, info.lo_inode = attached.identity
            write_bytes(self.listener, call, call.args[2], bytes(info))
            return 0
        if command == LOOP_SET_STATUS64:
            update = LoopInfo64.from_buffer_copy(self.read(call, ctypes.sizeof(LoopInfo64)))
            attached.info.lo_offset, attached.info.lo_sizelimit = (
                update.lo_offset,
                update.lo_sizelimit,
            )
            attached.info.lo_flags = update.lo_flags | LO_FLAGS_READ_ONLY
            return 0
        if command == LOOP_CLR_FD:
            self.detach(call, number)
            return 0
        if command in (LOOP_SET_CAPACITY, LOOP_SET_DIRECT_IO, LOOP_SET_BLOCK_SIZE):
            return 0
        if command == BLKGETSIZE64:  # util-linux checks an offset attachment's size
            size = ctypes.c_uint64(attached.size())
            write_bytes(self.listener, call, call.args[2], bytes(size))
            return 0
        return -errno.ENOTTY

    def read(self, call: Call, size: int) -> bytes:
        return read_bytes(self.listener, call, call.args[2], size)

    def is_free(self, number: int) -> bool:
        """Nothing attached, or an autoclear attachment whose mounts have all ended."""
        attached = self.attached.get(number)
        return attached is None or (
            bool(attached.info.lo_flags & LO_FLAGS_AUTOCLEAR) and attached.released.is_set()
        )

    def attach(self, call: Call, number: int, command: int) -> int:
        """LOOP_CONFIGURE / LOOP_SET_FD: the caller's image, shown at /dev/loopN."""
        if command == LOOP_CONFIGURE:
            config = LoopConfig.from_buffer_copy(self.read(call, ctypes.sizeof(LoopConfig)))
            backing, info = config.fd, config.info
        else:
            backing, info = call.args[2], LoopInfo64()
        image = take_fd(self.listener, call, backing)
        mode = os.fstat(image).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            os.close(image)
            return -errno.EINVAL
        info.lo_flags |= LO_FLAGS_READ_ONLY
        attachment = Attachment(image, identity(os.fstat(image)), info)
        if number in self.attached:  # a freed autoclear attachment: lift its bind first
            self.detach(call, number)
        with CallerView(call.pid) as view:
            try:
                view.cover(f"/dev/loop{number}", image)
            except OSError:
                os.close(image)
                raise
        self.attached[number] = attachment
        log.info(
            "pid %d: /dev/loop%d: emulated, attached to %s (offset %d)",
            call.pid,
            number,
            os.readlink(f"/proc/self/fd/{image}"),
            info.lo_offset,
        )
        return 0

    def detach(self, call: Call, number: int) -> None:
        attachment = self.attached.pop(number)
        try:
            with CallerView(call.pid) as view:
                view.uncover(f"/dev/loop{number}", attachment.identity)
        finally:
            os.close(attachment.image)

    def attachment_of(self, key: tuple[int, int]) -> Attachment | None:
        """The attachment of the image with this device and inode, the latest if several
        (a mount of /dev/loopN opens the image itself, through the bind)."""
        found = [a for a in self.attached.values() if a.identity == key]
        return found[-1] if found else None

    def mounted(self, attachment: Attachment) -> None:
        with self.lock:
            attachment.mounts += 1
            attachment.released.clear()

    def unmounted(self, attachment: Attachment) -> None:
        """From a mount's supervising thread, once its driver has ended."""
        with self.lock:
            attachment.mounts -= 1
            if attachment.mounts == 0:
                attachment.released.set()

    def close(self) -> None:
        for attachment in self.attached.values():
            os.close(attachment.image)
        self.attached.clear()


def _size_of(fd: int) -> int:
    """A regular file's size, or a block device's (its end, by lseek)."""
    return os.lseek(fd, 0, os.SEEK_END)
