"""Making and removing the FUSE mount itself, the only privileged step of a mount.

As root the launcher opens /dev/fuse and calls mount(2) with ``fd=N``; as an ordinary
user it asks the setuid ``fusermount3`` for an fd over its ``_FUSE_COMMFD`` protocol,
as libfuse does.  Either way the caller gets back a /dev/fuse descriptor that is
already mounted, ready to hand to the driver process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from fusefs.libc import LIBC
from fusefs.options import MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID, MS_RDONLY

FUSE_DEVICE = "/dev/fuse"
FS_SUBTYPE = "pyfsmount"
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWUSER = 0x20000, 0x10000000


class MountError(Exception):
    """The FUSE mount could not be made or removed; the message names why."""


@dataclass(frozen=True)
class MountRequest:
    """What the kernel needs to know about one FUSE mount."""

    target: str
    source: str
    flags: int
    allow_other: bool = False
    #: Whose mount it is (FUSE's user_id and group_id): the caller's, by default.
    owner: tuple[int, int] | None = None

    def fuse_options(self, fuse_fd: int) -> str:
        """The FUSE file system's own options, as mount(2) and fsconfig take them."""
        uid, gid = self.owner or (os.getuid(), os.getgid())
        data = f"fd={fuse_fd},rootmode=40000,user_id={uid},group_id={gid},default_permissions"
        return data + (",allow_other" if self.allow_other else "")

    def fusermount_options(self) -> str:
        names = ["ro", "default_permissions", f"subtype={FS_SUBTYPE}"]
        names.append(f"fsname={escape_option(self.source)}")
        for bit, name in (
            (MS_NOSUID, "nosuid"),
            (MS_NODEV, "nodev"),
            (MS_NOEXEC, "noexec"),
            (MS_NOATIME, "noatime"),
            (MS_NODIRATIME, "nodiratime"),
        ):
            if self.flags & bit:
                names.append(name)
        if self.allow_other:
            names.append("allow_other")
        return ",".join(names)


def escape_option(value: str) -> str:
    """fusermount3 splits options at commas; a backslash protects one."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def check_mountpoint(target: str) -> None:
    try:
        st = os.stat(target)
    except OSError as exc:
        raise MountError(f"mount point {target}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {target} is not a directory")


def mount_as_root(request: MountRequest) -> int:
    """mount(2) a fresh /dev/fuse channel at the target; return the channel fd."""
    fuse_fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    data = request.fuse_options(fuse_fd)
    flags = request.flags | MS_RDONLY
    result = LIBC.mount(
        request.source.encode(),
        request.target.encode(),
        f"fuse.{FS_SUBTYPE}".encode(),
        flags,
        data.encode(),
    )
    if result != 0:
        err = ctypes.get_errno()
        os.close(fuse_fd)
        raise MountError(f"mount {request.target}: {os.strerror(err)}")
    return fuse_fd


# The new mount API (x86_64 numbers) and its constants, from linux/mount.h.
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 428, 429, 430, 431, 432
SYS_MOUNT_SETATTR = 442
FSOPEN_CLOEXEC = 1
FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 1, 6
FSMOUNT_CLOEXEC = 1
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 1, 2, 4, 8
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000


class MountAttr(ctypes.Structure):
    """struct mount_attr, mount_setattr(2)'s argument."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_detached(request: MountRequest, own_user_namespace: bool = True) -> tuple[int, int]:
    """A FUSE mount attached nowhere (fsopen, fsconfig, fsmount): (channel fd, mount fd).

    Whoever holds the mount fd can attach it with move_mount(2), in a mount namespace
    of its own; the file system lives while the mount fd or an attachment does. Root
    only. ``request.target`` is not used; read-only, nosuid and nodev always (and
    noexec if ``request.flags`` asks). :func:`fuse_context` says what
    ``own_user_namespace`` is for.
    """
    fuse_fd, fs_fd = fuse_context(request, own_user_namespace)
    try:
        attributes = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        if request.flags & MS_NOEXEC:
            attributes |= MOUNT_ATTR_NOEXEC
        mount_fd = _syscall_fd(SYS_FSMOUNT, fs_fd, FSMOUNT_CLOEXEC, attributes, what="fsmount")
    except MountError:
        os.close(fuse_fd)
        raise
    finally:
        os.close(fs_fd)
    return fuse_fd, mount_fd


def fuse_context(request: MountRequest, own_user_namespace: bool = True) -> tuple[int, int]:
    """A read-only FUSE superblock, made but not mounted: (channel fd, fs context fd),
    the context ready for fsmount(2). Root only.

    Whoever mounts it in a mount namespace it owns can set that mount's flags
    (mount_setattr(2) clears nodev and nosuid), so they cannot be what keeps an image's
    device nodes and set-user-ID files harmless. With ``own_user_namespace`` the
    superblock is made in a user namespace of its own (:func:`_in_own_user_namespace`),
    which the kernel treats as an unprivileged mount whatever the flags: device nodes
    never open (SB_I_NODEV), and set-user-ID bits and file capabilities count only for
    processes inside that namespace, of which there are none. Its id map is the
    identity, so owners show as they are on the image. The price, set by the kernel's
    FUSE for such a superblock: no POSIX ACLs (system.posix_acl_* answer ENOTSUP;
    permissions are the mode bits), and allow_other admits only that namespace's
    processes, so it is refused. Without ``own_user_namespace`` (for a holder no less
    privileged than root) the superblock is the initial namespace's, as mount(2) by
    root makes it.
    """
    if not own_user_namespace:
        return _make_context(request)
    if request.allow_other:
        raise MountError("allow_other is not available for a mount in its own user namespace")
    fuse_fd, fs_fd = _in_own_user_namespace(lambda: list(_make_context(request)))
    return fuse_fd, fs_fd


def _make_context(request: MountRequest) -> tuple[int, int]:
    """/dev/fuse, then the context, configured and created: (channel fd, context fd)."""
    fuse_fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    fs_fd = -1
    try:
        fs_fd = _syscall_fd(SYS_FSOPEN, b"fuse", FSOPEN_CLOEXEC, what="fsopen fuse")
        settings: list[tuple[str, str | None]] = [
            ("source", request.source),
            ("subtype", FS_SUBTYPE),
            ("ro", None),  # the superblock itself, whatever flags its mounts get
        ]
        for option in request.fuse_options(fuse_fd).split(","):
            name, sep, text = option.partition("=")
            settings.append((name, text if sep else None))
        for name, setting in settings:
            _fsconfig(fs_fd, name, setting)
        _syscall_fd(SYS_FSCONFIG, fs_fd, FSCONFIG_CMD_CREATE, None, None, 0, what="fsconfig")
    except MountError:
        os.close(fuse_fd)
        if fs_fd >= 0:
            os.close(fs_fd)
        raise
    return fuse_fd, fs_fd


#: Every id maps to itself: the namespace changes who counts as privileged, not who
#: owns what.
IDENTITY_MAP = "0 0 4294967295"


def _in_own_user_namespace(make: Callable[[], list[int]]) -> list[int]:
    """Run ``make`` in a forked child, inside new user and mount namespaces with the
    identity map (written here: only a process privileged over the parent namespace may
    map every id); return the fds it made (MountError with its reason if it failed).

    A fork, because unshare(CLONE_NEWUSER) refuses a threaded process (the broker).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked maker
        ours.close()
        code = 1
        try:
            if LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
                raise MountError(f"unshare: {os.strerror(ctypes.get_errno())}")
            theirs.send(b"unshared")
            if theirs.recv(16) != b"mapped":
                raise MountError("no id map")
            made = make()
            socket.send_fds(theirs, [b"ok"], made)
            code = 0
        except BaseException as exc:  # reported to the parent, never raised in a fork
            with contextlib.suppress(OSError):
                theirs.send(f"error\0{exc}".encode(errors="replace"))
        finally:
            os._exit(code)
    theirs.close()
    try:
        with ours:
            if ours.recv(16) == b"unshared":
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{child}/{name}", "w") as f:
                        f.write(IDENTITY_MAP)
                ours.send(b"mapped")
            data, fds, _, _ = socket.recv_fds(ours, 4096, 4)
    finally:
        os.waitpid(child, 0)
    if data != b"ok":
        for fd in fds:
            os.close(fd)
        raise MountError(data.partition(b"\0")[2].decode(errors="replace") or "mount failed")
    return fds


def _fsconfig(fs_fd: int, key: str, value: str | None) -> None:
    """fsconfig(FSCONFIG_SET_STRING, key, value), or SET_FLAG for a bare ``key``."""
    set_flag = 0
    command, data = (set_flag, None) if value is None else (FSCONFIG_SET_STRING, value.encode())
    _syscall_fd(SYS_FSCONFIG, fs_fd, command, key.encode(), data, 0, what=f"fsconfig {key}")


def syscall(number: int, *args: object) -> int:
    """A raw system call (the mount API has no libc wrappers here): its result, -1 with
    ctypes' errno set on failure. Integers go as longs; bytes and ctypes refs as given."""
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return int(LIBC.syscall(ctypes.c_long(number), *converted))


def _syscall_fd(number: int, *args: object, what: str) -> int:
    """A system call returning an fd or 0; MountError naming ``what`` if it fails."""
    result = syscall(number, *args)
    if result < 0:
        err = ctypes.get_errno()
        raise MountError(f"{what}: {os.strerror(err)}")
    return result


def mount_with_fusermount(request: MountRequest) -> int:
    """Ask the setuid fusermount3 to mount and send back the channel fd."""
    helper = shutil.which("fusermount3")
    if helper is None:
        raise MountError("fusermount3 not found (install the fuse3 package)")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        proc = subprocess.run(
            [helper, "-o", request.fusermount_options(), "--", request.target],
            env=env,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        theirs.close()
        if proc.returncode != 0:
            reason = proc.stderr.strip().splitlines()
            raise MountError(reason[-1] if reason else "fusermount3 failed")
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    if not fds:
        raise MountError("fusermount3 sent no channel descriptor")
    os.set_inheritable(fds[0], False)
    return fds[0]


def mount_fuse(request: MountRequest) -> int:
    """The mounted channel fd; the caller has checked the mount point (check_mountpoint)."""
    if os.geteuid() == 0:
        return mount_as_root(request)
    return mount_with_fusermount(request)


def unmount(target: str, lazy: bool = True) -> None:
    """Remove the mount at ``target`` (detached lazily: busy files keep working until closed)."""
    if os.geteuid() == 0:
        if LIBC.umount2(target.encode(), MNT_DETACH if lazy else 0) != 0:
            err = ctypes.get_errno()
            raise MountError(f"umount {target}: {os.strerror(err)}")
        return
    helper = shutil.which("fusermount3") or "fusermount3"
    proc = subprocess.run(
        [helper, "-u", *(["-z"] if lazy else []), "--", target],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise MountError(proc.stderr.strip() or f"fusermount3 -u {target} failed")


#: Kernel read-ahead for our mounts: the image never changes, and with the default
#: 128 KiB a sequential reader waits on four times as many requests.
READ_AHEAD_KB = 1024


def tune_readahead(device: str, kilobytes: int = READ_AHEAD_KB) -> None:
    """Raise the read-ahead of the FUSE mount ``device`` (``major:minor``); root only."""
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
            f.write(f"{kilobytes}\n")
    except OSError:
        pass  # not root, or no such bdi: the kernel default still works


def mountinfo_entries() -> list[tuple[str, str, str]]:
    """(major:minor, mount point, fstype) of every mount this process sees, in order.

    Read from mountinfo rather than by stat, which would block on a dead server.
    """
    entries = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            separator = fields.index(b"-")
            entries.append(
                (
                    fields[2].decode(),
                    os.fsdecode(unescape_mountinfo(fields[4])),
                    fields[separator + 1].decode(),
                )
            )
    return entries


def find_our_mount(target: str) -> str | None:
    """The device id (``major:minor``) of the topmost pyfsmount mount at ``target``.

    ``target`` must be canonical already: resolving it now would stat the mount, and
    a stat waits for a server that may not be serving yet (or ever again).
    """
    found = None
    for device, mount_point, fs_type in mountinfo_entries():
        if mount_point == target and fs_type == f"fuse.{FS_SUBTYPE}":
            found = device
    return found


def is_mounted(target: str, device: str) -> bool:
    """Whether the mount identified by ``device`` is still attached at (canonical) ``target``."""
    return any(d == device and m == target for d, m, _ in mountinfo_entries())


def unescape_mountinfo(field: bytes) -> bytes:
    r"""mountinfo writes space, tab, newline and backslash as \ooo octal escapes."""
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)
