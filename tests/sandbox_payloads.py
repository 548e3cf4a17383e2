"""Test-only companions of tests/test_sandbox.py, run in real processes.

* ``python -m tests.sandbox_payloads driver IMAGE_FD CONTROL_FD`` is a representative
  driver process: confine() -> preload() -> install_seccomp() -> pread its image ->
  "ok" on the control socket -> receive the /dev/fuse fd -> serve a small in-memory
  file system with pyfuse3 + trio (file contents come from the image by pread).
* ``python -m tests.sandbox_payloads client MOUNTPOINT`` exercises a mount (lookup,
  getattr, readdir, read, readlink, getxattr, listxattr, statfs) and prints JSON.
* :func:`prepare` is what :mod:`fusefs.sandbox` calls when ``PYFSMOUNT_TEST_PAYLOAD``
  names an attack: it runs in the confined process right after the seccomp filter is
  loaded, reports ``PAYLOAD-RESULT {json}`` on fd 2 and exits 0 -- unless the kernel
  kills it first (SIGSYS).

Also the launcher-side helper the tests use: a FUSE mount made by root with mount(2)
(/dev/fuse is 0600 here, and fusermount3 opens it with the user's fsuid, so an
unprivileged user cannot mount FUSE on this machine without a root helper).
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable
from typing import Any

RESULT_MARK = "PAYLOAD-RESULT "
IMAGE_TEXT = b"hello from the image\n" * 3

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_libc.ptrace.restype = ctypes.c_long
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)


# --- payloads (run in the confined process) ------------------------------------------------


def report(**result: Any) -> None:
    os.write(2, (RESULT_MARK + json.dumps(result) + "\n").encode())
    os._exit(0)


def _errno_of(call: Callable[[], object]) -> str:
    try:
        call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def _libc_errno(rc: int) -> str:
    return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")


def _env_int(name: str) -> int:
    return int(os.environ[name])


def prepare(name: str) -> Callable[[], None]:
    """The payload called ``name``; runs its set-up now (before confinement)."""
    if name == "saved_dirfd":
        dirfd = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)

        def saved_dirfd() -> None:
            report(
                fcntl=_errno_of(lambda: __import__("fcntl").fcntl(dirfd, 1)),
                openat=_errno_of(lambda: os.open("passwd", os.O_RDONLY, dir_fd=dirfd)),
                fd=dirfd,
            )

        return saved_dirfd
    try:
        return PAYLOADS[name]
    except KeyError:
        raise SystemExit(f"unknown payload {name}") from None


def open_etc_passwd() -> None:
    report(
        open=_errno_of(lambda: os.open("/etc/passwd", os.O_RDONLY)),
        stat=_errno_of(lambda: os.stat("/etc/passwd")),
        cwd=_errno_of(os.getcwd),
    )


def socket_inet() -> None:
    report(socket=_errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)))


def socket_unix() -> None:
    report(socket=_errno_of(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)))


def connect_unix() -> None:
    """socket() fails; then connect() on the control socket we hold (kill)."""
    path = os.environ["PYFSMOUNT_TEST_SOCKET"].encode()
    os.write(2, f"socket: {_errno_of(lambda: socket.socket(socket.AF_UNIX))}\n".encode())
    addr = ctypes.create_string_buffer(110)
    ctypes.memmove(addr, b"\x01\x00" + path, 2 + len(path))
    rc = _libc.connect(_env_int("PYFSMOUNT_TEST_CONTROL_FD"), addr, 110)
    report(connect=_libc_errno(rc))


def execve_sh() -> None:
    marker = os.environ["PYFSMOUNT_TEST_MARKER"]
    os.execv("/bin/sh", ["sh", "-c", f"echo pwned > {marker}"])


def fork() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    report(fork="ok")


def ptrace_launcher() -> None:
    rc = _libc.ptrace(16, _env_int("PYFSMOUNT_TEST_VICTIM_PID"), None, None)  # PTRACE_ATTACH
    report(ptrace=_libc_errno(rc))


def mount_tmpfs() -> None:
    report(mount=_libc_errno(_libc.mount(b"none", b"/", b"tmpfs", 0, None)))


def unshare_user() -> None:
    report(unshare=_libc_errno(_libc.unshare(0x10000000)))


def write_image() -> None:
    report(write=_errno_of(lambda: os.write(_env_int("PYFSMOUNT_TEST_IMAGE_FD"), b"x")))


def pwrite_image() -> None:
    """pwrite64 is not on the list at all (the driver only reads its image)."""
    report(pwrite=_errno_of(lambda: os.pwrite(_env_int("PYFSMOUNT_TEST_IMAGE_FD"), b"x", 0)))


def mmap_exec() -> None:
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    report(mmap="ok", size=len(m))


def mprotect_exec() -> None:
    addr = _libc.mmap(None, 4096, 3, 0x22, -1, 0)  # RW, MAP_PRIVATE|MAP_ANONYMOUS
    os.write(2, f"mmap rw: {addr:#x}\n".encode())
    report(mprotect=_libc_errno(_libc.mprotect(addr, 4096, 5)))  # READ|EXEC


def kill_init() -> None:
    """pid 1 is ourselves here; init cannot be SIGKILLed from inside its namespace."""
    report(kill=_errno_of(lambda: os.kill(1, signal.SIGKILL)), pid=os.getpid())


def kill_launcher() -> None:
    report(
        kill=_errno_of(lambda: os.kill(_env_int("PYFSMOUNT_TEST_VICTIM_PID"), signal.SIGKILL)),
        kill_all=_errno_of(lambda: os.kill(-1, signal.SIGKILL)),
    )


def memory_bomb() -> None:
    hog = []
    try:
        while True:
            hog.append(bytearray(16 * 2**20))
    except MemoryError:
        allocated = len(hog) * 16
        hog.clear()
        report(error="MemoryError", allocated_mib=allocated)


def thread_bomb() -> None:
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        while len(threads) < 10000:
            thread = threading.Thread(target=stop.wait)
            thread.start()
            threads.append(thread)
        error = "none"
    except RuntimeError as exc:
        error = str(exc)
    count = len(threads)
    stop.set()
    for thread in threads:
        thread.join()
    report(threads=count, error=error)


def rlimits() -> None:
    import resource

    names = ("AS", "NOFILE", "NPROC", "FSIZE", "CORE", "MEMLOCK", "CPU")
    report(**{n: resource.getrlimit(getattr(resource, f"RLIMIT_{n}")) for n in names})


def pipe() -> None:
    report(pipe=_errno_of(os.pipe))


def _raw(nr: int) -> Callable[[], None]:
    def call() -> None:
        report(rc=_libc_errno(_libc.syscall(nr, 0, 0, 0, 0, 0)))

    call.__name__ = f"syscall_{nr}"
    return call


PAYLOADS: dict[str, Callable[[], None]] = {
    f.__name__: f
    for f in (
        open_etc_passwd,
        socket_inet,
        socket_unix,
        connect_unix,
        execve_sh,
        fork,
        ptrace_launcher,
        mount_tmpfs,
        unshare_user,
        write_image,
        pwrite_image,
        mmap_exec,
        mprotect_exec,
        kill_init,
        kill_launcher,
        memory_bomb,
        thread_bomb,
        pipe,
        rlimits,
    )
}
PAYLOADS.update(
    bpf=_raw(321),
    keyctl=_raw(250),
    perf_event_open=_raw(298),
    userfaultfd=_raw(323),
    io_uring_setup=_raw(425),
    setns=_raw(308),
    open_by_handle_at=_raw(304),
    x32_getpid=_raw(0x40000000 | 39),  # the x32 ABI: same number, another table
)


# --- the representative driver -------------------------------------------------------------


def run_driver(image_fd: int, control_fd: int) -> None:
    from fusefs import sandbox

    marker = os.environ.get("PYFSMOUNT_TEST_NO_SECCOMP") == "1"
    limits = sandbox.SandboxLimits(**json.loads(os.environ.get("PYFSMOUNT_TEST_LIMITS", "{}")))
    sandbox.confine({0, 1, 2, image_fd, control_fd}, limits)
    sandbox.preload()
    if marker:
        # strace measurement: everything after this write is what serving needs
        os.write(2, b"SECCOMP-WOULD-BE-INSTALLED-HERE\n")
    else:
        sandbox.install_seccomp()

    import pyfuse3
    import trio

    control = socket.socket(fileno=control_fd)
    size = os.fstat(image_fd).st_size
    content = os.pread(image_fd, size, 0)
    control.send(json.dumps({"ok": True, "size": size}).encode())
    _, fds, _, _ = socket.recv_fds(control, 4096, 1)
    if not fds:
        os._exit(3)
    fuse_fd = fds[0]
    ops = MemoryOps(image_fd, len(content))
    options = {"fsname=sandboxtest", "ro", "default_permissions"}
    pyfuse3.init(ops, f"/dev/fd/{fuse_fd}", options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    os.write(2, b"driver: served and closed\n")


def _memory_ops_class() -> type:
    import pyfuse3

    root, hello, link, sub, nested = 1, 2, 3, 4, 5

    class MemoryOps(pyfuse3.Operations):
        def __init__(self, image_fd: int, size: int) -> None:
            super().__init__()
            self.image_fd, self.size = image_fd, size
            self.children = {
                root: {b"hello.txt": hello, b"link": link, b"sub": sub},
                sub: {b"nested.txt": nested},
            }

        def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
            e = pyfuse3.EntryAttributes()
            e.st_ino = ino
            if ino in self.children:
                e.st_mode, e.st_size, e.st_nlink = stat.S_IFDIR | 0o755, 0, 2
            elif ino == link:
                e.st_mode, e.st_size, e.st_nlink = stat.S_IFLNK | 0o777, 9, 1
            else:
                e.st_mode, e.st_size, e.st_nlink = stat.S_IFREG | 0o644, self.size, 1
            e.st_uid = e.st_gid = 0
            e.entry_timeout = e.attr_timeout = 1
            e.st_blksize = 4096
            return e

        async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
            return self._attr(inode)

        async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> Any:
            ino = self.children.get(parent, {}).get(name)
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(ino)

        async def opendir(self, inode: int, ctx: Any) -> int:
            return inode

        async def readdir(self, fh: int, start_id: int, token: Any) -> None:
            entries = sorted(self.children[fh].items())
            for i, (name, ino) in enumerate(entries[start_id:], start_id + 1):
                if not pyfuse3.readdir_reply(token, name, self._attr(ino), i):
                    break

        async def readlink(self, inode: int, ctx: Any) -> bytes:
            return b"hello.txt"

        async def open(self, inode: int, flags: int, ctx: Any) -> Any:
            return pyfuse3.FileInfo(fh=inode)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            return os.pread(self.image_fd, size, off)

        async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
            if inode == hello and name == b"user.test":
                return b"xattr value"
            raise pyfuse3.FUSEError(errno.ENODATA)

        async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
            return [b"user.test"] if inode == hello else []

        async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
            s = pyfuse3.StatvfsData()
            s.f_bsize = s.f_frsize = 4096
            s.f_blocks, s.f_files, s.f_namemax = 10, 5, 255
            return s

    return MemoryOps


def MemoryOps(image_fd: int, size: int) -> Any:
    return _memory_ops_class()(image_fd, size)


# --- the client (reads a mount; runs as whoever owns it) -----------------------------------


def exercise(mountpoint: str) -> dict[str, Any]:
    join = os.path.join
    result: dict[str, Any] = {}
    result["listdir"] = sorted(os.listdir(mountpoint))
    result["sub"] = sorted(os.listdir(join(mountpoint, "sub")))
    st = os.stat(join(mountpoint, "hello.txt"))
    result["size"] = st.st_size
    result["mode"] = oct(st.st_mode)
    with open(join(mountpoint, "hello.txt"), "rb") as f:
        result["content"] = f.read().decode()
    with open(join(mountpoint, "sub", "nested.txt"), "rb") as f:
        result["nested"] = f.read(5).decode()
    result["readlink"] = os.readlink(join(mountpoint, "link"))
    result["getxattr"] = os.getxattr(join(mountpoint, "hello.txt"), "user.test").decode()
    result["listxattr"] = os.listxattr(join(mountpoint, "hello.txt"))
    result["statvfs_blocks"] = os.statvfs(mountpoint).f_blocks
    result["missing"] = _errno_of(lambda: os.stat(join(mountpoint, "missing")))
    return result


# --- launcher-side helpers (the tests) -----------------------------------------------------


def root_fuse_mount(mountpoint: str, uid: int = 0, gid: int = 0) -> int:
    """mount(2) a FUSE file system on a /dev/fuse fd opened here (needs root)."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    opts = f"fd={fd},rootmode=40000,user_id={uid},group_id={gid},default_permissions"
    if (
        _libc.mount(
            b"sandboxtest", mountpoint.encode(), b"fuse.sandboxtest", 0x1 | 0x2 | 0x4, opts.encode()
        )
        != 0
    ):
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount fuse on {mountpoint}: {os.strerror(err)}")
    return fd


def main(argv: list[str]) -> None:
    if argv[0] == "driver":
        run_driver(int(argv[1]), int(argv[2]))
    elif argv[0] == "client":
        print(json.dumps(exercise(argv[1])))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} driver IMAGE_FD CONTROL_FD | client MOUNTPOINT")


if __name__ == "__main__":
    main(sys.argv[1:])
