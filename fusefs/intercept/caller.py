"""The caller of a trapped mount, as the kernel sees it: its rights, ids and paths.

The supervisor is root; the caller may be anyone. Everything done for a caller is done
with what the caller itself has: :func:`may_mount` is the kernel's own test (CAP_SYS_ADMIN
over the user namespace that owns the caller's mount namespace), :class:`CallerView`
opens paths in the caller's mount namespace, root and working directory with its file
system ids and groups, and :func:`caller_options` maps its uid= and gid= through its user
namespace. Each read of the caller's state is checked afterwards with
``SECCOMP_IOCTL_NOTIF_ID_VALID`` by the code that trapped the call.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import stat

from fusefs.intercept.notify import identity
from fusefs.libc import LIBC
from fusefs.mount import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    CLONE_NEWNS,
    MNT_DETACH,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    MOVE_MOUNT_F_EMPTY_PATH,
    MOVE_MOUNT_T_EMPTY_PATH,
    OPEN_TREE_CLONE,
    SYS_MOUNT_SETATTR,
    SYS_MOVE_MOUNT,
    SYS_OPEN_TREE,
    MountAttr,
    syscall,
)
from fusefs.options import MountOptions, OptionError, parse_options, split_option_string

CAP_SYS_ADMIN = 21
NS_GET_USERNS, NS_GET_PARENT = 0xB701, 0xB702
#: Options of pyfsmount itself, not of a file system: a trapped caller may not set them.
CALLER_REFUSED_OPTIONS = frozenset(
    {"sandbox", "max_memory", "debug", "allow_other", "fsname", "busy_poll", "request_timeout"}
    | {"suid", "dev", "exec", "nosuid", "nodev", "noexec", "offset", "partition"}
)


class CallRefused(OSError):
    """The answer to a trapped call is this errno (the reason is logged)."""


def may_mount(pid: int) -> bool:
    """Whether the kernel would let ``pid`` mount in its mount namespace (may_mount():
    CAP_SYS_ADMIN in its effective set, in the user namespace that owns that mount
    namespace or an ancestor of it). The interceptor never mounts for a caller that
    could not have mounted anything itself."""
    if not _effective_caps(pid) & (1 << CAP_SYS_ADMIN):
        return False
    own = identity(os.stat(f"/proc/{pid}/ns/user"))
    owner = _mount_namespace_owner(pid)
    while True:
        try:
            if identity(os.fstat(owner)) == own:
                return True
            parent = fcntl.ioctl(owner, NS_GET_PARENT)
        except OSError:  # the top: the caller's user namespace is not above the owner
            return False
        finally:
            os.close(owner)
        owner = parent


def mount_namespace_is_ours(pid: int) -> bool:
    """Whether the caller's mount namespace belongs to our own user namespace: then only
    processes as privileged as we are can change the flags of mounts there (nodev,
    nosuid). Otherwise the caller's namespace owns it, and so may the caller."""
    owner = _mount_namespace_owner(pid)
    try:
        return identity(os.fstat(owner)) == identity(os.stat("/proc/self/ns/user"))
    finally:
        os.close(owner)


def _mount_namespace_owner(pid: int) -> int:
    """An fd of the user namespace that owns the caller's mount namespace."""
    mnt_ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(mnt_ns, NS_GET_USERNS)
    finally:
        os.close(mnt_ns)


def _effective_caps(pid: int) -> int:
    return int(_status(pid, "CapEff")[0], 16)


def caller_options(pid: int, fs_type: str, items: list[str]) -> MountOptions:
    """MountOptions from the data options of the caller's mount (``uid=1000,umask=077``).

    Only file-system options are taken from a caller: how its driver is confined and
    served (sandbox=, max_memory=, allow_other, ...) is not its to say. uid= and gid= are
    ids in the caller's user namespace, mapped to the host's as the kernel maps them.
    A FAT volume's files belong to the caller unless it says otherwise, as with vfat.
    """
    options = MountOptions(fs_type=fs_type)
    for name, value in split_option_string(",".join(items)):
        if name in CALLER_REFUSED_OPTIONS:
            raise CallRefused(errno.EINVAL, f"option {name!r} is not the caller's to set")
        if name in ("uid", "gid") and value is not None and value.isdigit():
            value = str(_map_id(pid, name, int(value)))
        try:
            parse_options([name if value is None else f"{name}={value}"], options)
        except OptionError as exc:
            raise CallRefused(errno.EINVAL, str(exc)) from None
    if fs_type == "vfat":
        uid, gid = fs_ids(pid)
        options.uid = uid if options.uid is None else options.uid
        options.gid = gid if options.gid is None else options.gid
    return options


def _map_id(pid: int, kind: str, inner: int) -> int:
    """The host id of ``inner``, an id in the caller's user namespace (/proc/PID/*_map)."""
    with open(f"/proc/{pid}/{kind}_map") as f:
        for line in f:
            first, lower, count = (int(n) for n in line.split())
            if first <= inner < first + count:
                return lower + inner - first
    raise CallRefused(errno.EINVAL, f"{kind}={inner} is not mapped in the caller's namespace")


class CallerView:
    """A helper process that sees the file system as the caller does.

    Forked from the supervisor: it joins the caller's mount namespace, root and working
    directory, opens paths with the caller's file-system ids, and attaches mounts there.
    It talks to the supervisor over a socketpair, one request at a time.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fs_ids = fs_ids(pid)
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

    def open_paths(self, source: str, target: str | None) -> tuple[int, int | None]:
        """(image fd, target directory fd or None) as the caller would open them;
        CallRefused with the errno the caller would have got."""
        assert self.sock is not None
        request = f"open\0{source}\0{target or ''}".encode()
        socket.send_fds(self.sock, [request], [])
        data, fds, _, _ = socket.recv_fds(self.sock, 4096, 2)
        if data == b"0" and len(fds) == (1 if target is None else 2):
            return fds[0], fds[1] if target is not None else None
        for fd in fds:
            os.close(fd)
        error = int(data) if data.isdigit() and data != b"0" else errno.EIO
        raise CallRefused(error, f"opening {source!r} as the caller: {os.strerror(error)}")

    def attach(self, mount_fd: int, target_fd: int) -> None:
        """move_mount the detached mount onto the target, in the caller's namespace."""
        self._ask(b"attach", [mount_fd, target_fd], "attaching the mount")

    def cover(self, path: str, fd: int) -> None:
        """Cover ``path`` with a read-only, nosuid, nodev bind of the file ``fd`` (the
        caller's own open file: a bind needs a file of the namespace it goes to)."""
        self._ask(b"cover\0" + os.fsencode(path), [fd], f"covering {path}")

    def uncover(self, path: str, identity: tuple[int, int]) -> None:
        """Lift a :meth:`cover` from ``path``, if ``identity`` (dev, inode) still shows
        there: what the caller has done to it since is its own business."""
        request = b"uncover\0%s\0%d\0%d" % (os.fsencode(path), identity[0], identity[1])
        self._ask(request, [], f"uncovering {path}")

    def _ask(self, request: bytes, fds: list[int], what: str) -> None:
        assert self.sock is not None
        socket.send_fds(self.sock, [request], fds)
        data = self.sock.recv(64)
        if data != b"0":
            error = int(data) if data.isdigit() else errno.EIO
            raise CallRefused(error, f"{what}: {os.strerror(error)}")


def _helper(
    sock: socket.socket,
    mnt_ns: int,
    root: int,
    cwd: int,
    fs_ids: tuple[int, int],
    groups: list[int],
) -> int:
    """In the forked helper: become the caller's view, then serve open and attach."""
    if LIBC.setns(mnt_ns, CLONE_NEWNS) != 0:
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
            rc = syscall(SYS_MOVE_MOUNT, fds[0], b"", fds[1], b"", flags)
            sock.send(b"0" if rc == 0 else str(ctypes.get_errno()).encode())
        elif data.startswith(b"cover\0") and len(fds) == 1:
            sock.send(str(_cover(data.split(b"\0", 1)[1], fds[0])).encode())
        elif data.startswith(b"uncover\0"):
            _, path, dev, ino = data.split(b"\0", 3)
            sock.send(str(_uncover(path, (int(dev), int(ino)))).encode())
        for fd in fds:
            os.close(fd)


def _cover(path: bytes, fd: int) -> int:
    """In the helper: a read-only bind of ``fd`` over ``path``; 0 or an errno."""
    tree = syscall(SYS_OPEN_TREE, fd, b"", OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH)
    if tree < 0:
        return ctypes.get_errno()
    try:
        attributes = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
        size = ctypes.sizeof(attributes)
        rc = syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attributes), size)
        if rc == 0:
            rc = syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH)
        return ctypes.get_errno() if rc else 0
    finally:
        os.close(tree)


def _uncover(path: bytes, wanted: tuple[int, int]) -> int:
    """In the helper: unmount the bind at ``path`` if it is still of file ``wanted``."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return exc.errno or errno.EIO
    if identity(info) != wanted:
        return 0
    return ctypes.get_errno() if LIBC.umount2(path, MNT_DETACH) else 0


def _reply_open(
    sock: socket.socket, source: str, target: str, fs_ids: tuple[int, int], groups: list[int]
) -> None:
    """Open both paths with the caller's file-system ids; send the fds, or the errno."""
    opened: list[int] = []
    os.setgroups(groups)
    LIBC.setfsgid(fs_ids[1])
    LIBC.setfsuid(fs_ids[0])
    try:
        image = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        opened.append(image)
        mode = os.fstat(image).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise OSError(errno.ENOTBLK, "not a block device or an image file")
        if target:
            opened.append(os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as exc:
        for fd in opened:
            os.close(fd)
        sock.send(str(exc.errno or errno.EIO).encode())
        return
    finally:
        LIBC.setfsuid(0)
        LIBC.setfsgid(0)
        os.setgroups([])
    socket.send_fds(sock, [b"0"], opened)
    for fd in opened:
        os.close(fd)


def fs_ids(pid: int) -> tuple[int, int]:
    """The caller's file-system uid and gid (host ids): the 4th of each list."""
    return int(_status(pid, "Uid")[3]), int(_status(pid, "Gid")[3])


def _groups(pid: int) -> list[int]:
    return [int(g) for g in _status(pid, "Groups")]


def _status(pid: int, field: str) -> list[str]:
    """The values of ``field`` in /proc/PID/status (every process has the ones asked)."""
    prefix = f"{field}:"
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(prefix):
                return line.split()[1:]
    raise CallRefused(errno.ESRCH, f"/proc/{pid}/status has no {field}")
