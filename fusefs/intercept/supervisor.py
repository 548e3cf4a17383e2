"""The supervisor: answers a sandboxed program's mount(2) calls.

For each trapped mount(2): a call that parses no image (remount, bind, move, propagation
changes) or whose type the policy passes (tmpfs, proc, ...) is left to the kernel, which
runs it with the caller's own credentials and checks; a type the policy redirects
(ext2/3/4, squashfs, vfat) becomes a pyfsmount mount; anything else gets EPERM.

A redirect, step by step:

1. A helper process joins the caller's mount namespace, takes its root and working
   directory, and opens the source and the target there with the caller's file-system
   ids and groups (setfsuid/setfsgid): what the caller could not open, it cannot mount.
2. The supervisor starts a confined driver on the image (the same driver, sandbox and
   checks as every pyfsmount mount) and, once the driver accepts the image, makes a
   detached FUSE mount (fsmount) owned by the caller's uid, read-only, nosuid, nodev.
3. The helper attaches it at the target (move_mount); the call returns 0, and the caller
   sees a normal mount. When the caller unmounts it, or its namespace ends, the driver
   exits.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import socket
import stat
import threading
from dataclasses import dataclass, field

from fusefs.intercept.notify import Call, NotifyError, read_string, receive, respond, still_valid
from fusefs.launch import LaunchError, abandon, open_in_driver, serve
from fusefs.mount import MountError, MountRequest, mount_detached, unescape_mountinfo
from fusefs.options import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MountOptions
from fusefs.template import Template

log = logging.getLogger("pyfsmount.intercept")

MS_REMOUNT, MS_BIND, MS_MOVE = 0x20, 0x1000, 0x2000
MS_PROPAGATION = 0x10000 | 0x20000 | 0x40000 | 0x100000  # unbindable, private, slave, shared
CLONE_NEWNS = 0x20000
SYS_MOVE_MOUNT = 429
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40

REDIRECT_DEFAULT = frozenset({"ext2", "ext3", "ext4", "squashfs", "vfat", "msdos"})
#: pyfsmount's name for each type it redirects.
DRIVER_TYPES = {"ext2": "ext4", "ext3": "ext4", "ext4": "ext4", "squashfs": "squashfs"}
DRIVER_TYPES |= {"vfat": "vfat", "msdos": "vfat"}

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class InterceptPolicy:
    """Which types become pyfsmount mounts, and which the kernel may mount itself."""

    redirect: frozenset[str] = REDIRECT_DEFAULT
    allow: frozenset[str] = frozenset()


@dataclass
class Supervisor:
    listener: int
    policy: InterceptPolicy
    template: Template | None = None
    supervisors: list[threading.Thread] = field(default_factory=list)

    def serve(self, child: int) -> int:
        """Answer trapped calls until ``child`` exits; return its exit code."""
        while True:
            ready, _, _ = select.select([self.listener], [], [], 0.2)
            if ready:
                call = receive(self.listener)
                if call is not None:
                    self.answer(call)
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid == child:
                return os.waitstatus_to_exitcode(status)

    def answer(self, call: Call) -> None:
        try:
            if call.name == "mount":
                self.answer_mount(call)
            else:
                respond(self.listener, call.id, error=errno.ENOSYS)
        except NotifyError as exc:
            log.warning("pid %d: %s: %s", call.pid, call.name, exc.strerror or exc)
            respond(self.listener, call.id, error=exc.errno or errno.EIO)

    def answer_mount(self, call: Call) -> None:
        source = read_string(self.listener, call, call.args[0])
        target = read_string(self.listener, call, call.args[1])
        fs_type = read_string(self.listener, call, call.args[2]) or ""
        flags = call.args[3]
        what = f"pid {call.pid}: mount({source!r}, {target!r}, {fs_type!r}, 0x{flags:x})"
        if flags & MS_REMOUNT and target is not None and _is_ours(call.pid, target):
            # The superblock is the supervisor's: the caller may not change it, but asking
            # for what it already is (read-only) succeeds, as on any read-only device.
            result = 0 if flags & MS_RDONLY else errno.EROFS
            log.info("%s: remount of a pyfsmount mount: %s", what, os.strerror(result) or "ok")
            respond(self.listener, call.id, error=result)
            return
        if (
            flags & (MS_REMOUNT | MS_BIND | MS_MOVE | MS_PROPAGATION)
            or fs_type in self.policy.allow
        ):
            # No image is parsed here (or the policy trusts the type): the kernel runs the
            # call with the caller's own credentials, in the caller's own namespaces.
            log.info("%s: passed to the kernel", what)
            respond(self.listener, call.id, proceed=True)
            return
        if fs_type not in self.policy.redirect:
            log.info("%s: denied (EPERM)", what)
            respond(self.listener, call.id, error=errno.EPERM)
            return
        if source is None or target is None:
            respond(self.listener, call.id, error=errno.EFAULT)
            return
        result = self.redirect(call, source, target, DRIVER_TYPES[fs_type], flags)
        log.info("%s: %s", what, "redirected to pyfsmount" if result == 0 else os.strerror(result))
        respond(self.listener, call.id, error=result)

    def redirect(self, call: Call, source: str, target: str, fs_type: str, flags: int) -> int:
        """Make the pyfsmount mount the caller asked for; 0 or an errno."""
        with CallerView(call.pid) as view:
            opened = view.open_paths(source, target)
            if isinstance(opened, int):
                return opened
            image_fd, target_fd = opened
            try:
                if not still_valid(self.listener, call.id):
                    return errno.ESRCH
                options = MountOptions(fs_type=fs_type)
                try:
                    driver, _ = open_in_driver(image_fd, options, source, self.template)
                except LaunchError as exc:
                    log.warning("pid %d: %s", call.pid, exc)
                    return errno.EINVAL  # as the kernel says of an image it cannot mount
            finally:
                os.close(image_fd)
            request = MountRequest(
                target="",
                source=source,
                flags=MS_RDONLY | MS_NOSUID | MS_NODEV | (flags & MS_NOEXEC),
                owner=view.fs_ids,
            )
            try:
                fuse_fd, mount_fd = mount_detached(request)
            except MountError as exc:
                log.warning("pid %d: %s", call.pid, exc)
                abandon(driver)
                return errno.EIO
            try:
                mount = serve(driver, fuse_fd, "", None)
            except LaunchError as exc:
                os.close(mount_fd)
                log.warning("pid %d: %s", call.pid, exc)
                return errno.EIO
            try:
                result = view.attach(mount_fd, target_fd)
            finally:
                os.close(mount_fd)
                os.close(target_fd)
        supervisor = threading.Thread(target=mount.supervise, daemon=True)
        supervisor.start()
        self.supervisors.append(supervisor)
        return result

    def wait_for_drivers(self, timeout: float) -> None:
        """Once the command has exited its mounts go (with its namespace): let their
        drivers be seen to end before the template that forked them is closed."""
        for supervisor in self.supervisors:
            supervisor.join(timeout)


class CallerView:
    """A helper process that sees the file system as the caller does.

    Forked from the supervisor: it joins the caller's mount namespace, root and working
    directory, opens paths with the caller's file-system ids, and attaches mounts there.
    It talks to the supervisor over a socketpair, one request at a time.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fs_ids = _fs_ids(pid)
        self.groups = _groups(pid)
        self.sock: socket.socket | None = None
        self.helper = 0

    def __enter__(self) -> CallerView:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        directory = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        mnt_ns = os.open(f"/proc/{self.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        root = os.open(f"/proc/{self.pid}/root", directory)
        cwd = os.open(f"/proc/{self.pid}/cwd", directory)
        handles = [mnt_ns, root, cwd]
        self.helper = os.fork()
        if self.helper == 0:
            ours.close()
            code = 1
            try:
                code = _helper(theirs, mnt_ns, root, cwd, self.fs_ids, self.groups)
            finally:
                os._exit(code)
        for fd in handles:
            os.close(fd)
        theirs.close()
        self.sock = ours
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.helper:
            os.waitpid(self.helper, 0)

    def open_paths(self, source: str, target: str) -> tuple[int, int] | int:
        """(image fd, target dir fd) as the caller would open them, or an errno."""
        assert self.sock is not None
        socket.send_fds(self.sock, [f"open\0{source}\0{target}".encode()], [])
        data, fds, _, _ = socket.recv_fds(self.sock, 4096, 2)
        if len(fds) == 2:
            return fds[0], fds[1]
        for fd in fds:
            os.close(fd)
        return int(data or errno.EIO)

    def attach(self, mount_fd: int, target_fd: int) -> int:
        """move_mount the detached mount onto the target, in the caller's namespace."""
        assert self.sock is not None
        socket.send_fds(self.sock, [b"attach"], [mount_fd, target_fd])
        data = self.sock.recv(64)
        return int(data or errno.EIO)


def _helper(
    sock: socket.socket,
    mnt_ns: int,
    root: int,
    cwd: int,
    fs_ids: tuple[int, int],
    groups: list[int],
) -> int:
    """In the forked helper: become the caller's view, then serve open and attach."""
    if _libc.setns(mnt_ns, CLONE_NEWNS) != 0:
        return 1
    os.fchdir(root)
    os.chroot(".")
    os.fchdir(cwd)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 8192, 2)
        except OSError:
            return 1
        if not data:
            return 0
        if data.startswith(b"open\0"):
            _, source, target = data.split(b"\0", 2)
            _reply_open(sock, os.fsdecode(source), os.fsdecode(target), fs_ids, groups)
        elif data == b"attach" and len(fds) == 2:
            flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
            rc = _libc.syscall(
                ctypes.c_long(SYS_MOVE_MOUNT),
                ctypes.c_long(fds[0]),
                b"",
                ctypes.c_long(fds[1]),
                b"",
                ctypes.c_long(flags),
            )
            sock.send(b"0" if rc == 0 else str(ctypes.get_errno()).encode())
        for fd in fds:
            os.close(fd)


def _reply_open(
    sock: socket.socket, source: str, target: str, fs_ids: tuple[int, int], groups: list[int]
) -> None:
    """Open both paths with the caller's file-system ids; send the fds, or the errno."""
    opened: list[int] = []
    os.setgroups(groups)
    _libc.setfsgid(fs_ids[1])
    _libc.setfsuid(fs_ids[0])
    try:
        image = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        opened.append(image)
        mode = os.fstat(image).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise OSError(errno.ENOTBLK, "not a block device or an image file")
        opened.append(os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as exc:
        for fd in opened:
            os.close(fd)
        sock.send(str(exc.errno or errno.EIO).encode())
        return
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
        os.setgroups([])
    socket.send_fds(sock, [b"0"], opened)
    for fd in opened:
        os.close(fd)


def _is_ours(pid: int, target: str) -> bool:
    """Whether the caller's topmost mount at ``target`` is a pyfsmount mount."""
    found = False
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            if os.fsdecode(unescape_mountinfo(fields[4])) == os.path.normpath(target):
                found = fields[fields.index(b"-") + 1] == b"fuse.pyfsmount"
    return found


def _fs_ids(pid: int) -> tuple[int, int]:
    """The caller's file-system uid and gid (host ids), from /proc/PID/status."""
    uid = gid = 65534
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[4])
            elif line.startswith("Gid:"):
                gid = int(line.split()[4])
    return uid, gid


def _groups(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Groups:"):
                return [int(g) for g in line.split()[1:]]
    return []
