"""Confinement of a driver process: it parses an untrusted image, so assume it is hostile.

The driver calls, in this order::

    confine(keep_fds={0, 1, 2, image_fd, control_fd}, limits=SandboxLimits(...))
    preload()           # a no-op by then: confine() already did it (see below)
    install_seccomp()

and from then on can read its image, talk on its control socket, answer FUSE requests
and nothing else.  What each step does and why is in SECURITY.md.

:func:`confine`:

1. (root only) becomes ``nobody`` (:data:`ROOT_DRIVER_UID`), so the process is never
   host root: RLIMIT_NPROC is not enforced for root, and a uid-0 process may signal
   every root process it can name.
2. Unshares user, mount, pid, net, ipc and uts namespaces and maps its one uid/gid to
   itself (a single-id map: no other host id exists inside).
3. Makes every mount private and pivots into an empty, read-only tmpfs, detaching the
   old root: no host path is reachable, even before seccomp.  This happens before the
   launcher creates the FUSE mount, so the driver's namespace never holds a copy of it.
4. Forks: the child is pid 1 of the new pid namespace and returns to the caller; the
   parent waits for it (forwarding SIGTERM/SIGINT/SIGHUP) and exits as it did.  The
   parent is confined like the child, with an even smaller seccomp filter.  (Not with
   ``pid_one``: a process made pid 1 of its own pid namespace by a parent that waits
   for it, :func:`fork_as_pid_one`, needs no fork and no waiter.)
5. Drops every capability (effective, permitted, inheritable, bounding, ambient),
   locks the securebits, sets no_new_privs.
6. Closes every fd but ``keep_fds``.
7. Sets rlimits: address space, open files, processes (threads count), file size,
   core size, locked memory, message queues, CPU time.

The empty root means nothing can be imported after confine(): :func:`preload` runs
inside confine(), before the pivot, and imports everything serving needs.  A driver
must import its own modules (drivers.*) before calling confine(); preload imports the
formats that :mod:`drivers.registry` lists.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import importlib
import logging
import os
import resource
import signal
import stat
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from fusefs import seccomp
from fusefs.libc import LIBC
from fusefs.seccomp import syscall_name

__all__ = [
    "ROOT_DRIVER_GID",
    "ROOT_DRIVER_UID",
    "SandboxError",
    "SandboxLimits",
    "confine",
    "driver_killed_by",
    "install_seccomp",
    "precompile_seccomp",
    "preload",
    "syscall_name",
]

log = logging.getLogger("pyfsmount.sandbox")

#: The host uid/gid a driver started by root runs as (nobody/nogroup).
ROOT_DRIVER_UID = 65534
ROOT_DRIVER_GID = 65534

#: How much a kept, writable regular file (a log on fd 2) may still grow.
LOG_FILE_BUDGET = 64 * 2**20

#: Test-only: the name of a payload in tests/sandbox_payloads.py to run once the
#: filter is in place.  The launcher never sets it.
TEST_PAYLOAD_ENV = "PYFSMOUNT_TEST_PAYLOAD"
TEST_PAYLOAD_MODULE = "tests.sandbox_payloads"


class SandboxError(Exception):
    """A confinement step failed; the message says which and why."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of a driver process (both its processes, each)."""

    max_memory: int = 512 * 2**20  # RLIMIT_AS, bytes (-o max_memory=)
    max_open_files: int = 64  # RLIMIT_NOFILE
    #: RLIMIT_NPROC: tasks (processes and threads) of the driver's uid inside its own
    #: user namespace, the waiting parent included.  Counted per namespace, so drivers
    #: of the same uid do not share it.  Serving uses 2 (no threads).
    max_processes: int = 16
    cpu_seconds: int | None = None  # RLIMIT_CPU (SIGXCPU, then SIGKILL a second later)


# --- libc ------------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACES = (
    CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

#: noroot, no_setuid_fixup, no_cap_ambient_raise, keep_caps off: each one locked.
SECUREBITS_LOCKED_DOWN = 0b11101111

RLIMIT_LOCKS = 10  # not in the resource module
SYS_PIVOT_ROOT = 155
SYS_CAPSET = 126
SYS_CLOSE_RANGE = 436
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)} (errno {errno.errorcode.get(err, err)})")
    return rc


def _prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> int:
    return _check(LIBC.prctl(option, arg2, arg3, 0, 0), what)


# --- preload ---------------------------------------------------------------------------

#: Imported before the root disappears.  Every codec a driver may decode names with
#: (FAT code pages, ISO 8859, UTF-*, ...) except the CJK multi-byte ones, which cost
#: ~60 ms: a driver that needs one passes it to preload(encodings=...).
_ENCODINGS = (
    "ascii", "latin_1", "utf_8", "utf_8_sig", "utf_16", "utf_16_le", "utf_16_be", "utf_32",
    "utf_32_le", "utf_32_be", "charmap", "raw_unicode_escape", "unicode_escape", "idna",
    "punycode", "cp437", "cp720", "cp737", "cp775", "cp850", "cp852", "cp855", "cp856", "cp857",
    "cp858", "cp860", "cp861", "cp862", "cp863", "cp864", "cp865", "cp866", "cp869", "cp874",
    "cp1250", "cp1251", "cp1252", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258",
    "koi8_r", "koi8_u", "mac_roman", *(f"iso8859_{n}" for n in (*range(1, 12), *range(13, 17))),
)

_MODULES = (
    "codecs", "encodings.aliases", "zlib", "lzma", "bz2", "binascii", "struct", "json",
    "errno", "stat", "signal", "select", "selectors", "socket", "array", "mmap", "threading",
    "functools", "itertools", "collections", "dataclasses", "enum", "typing", "abc", "io",
    "logging", "traceback", "linecache", "tokenize", "warnings", "weakref", "time",
    "contextlib", "contextvars", "heapq", "bisect", "random", "math", "operator",
    "trio", "trio.lowlevel", "trio.abc", "trio.socket", "trio.to_thread",
    "outcome", "sniffio", "sortedcontainers", "attr", "idna",
    "pyfuse3", "pyfuse3._pyfuse3",
    "construct", "crc32c",
    "fusefs.control", "fusefs.daemon", "fusefs.options", "drivers", "drivers.base",
    "drivers.registry",
)
#: Imported when installed (squashfs decompressors).
_OPTIONAL_MODULES = ("zstandard", "lz4", "lz4.block", "lz4.frame", "lzo")

#: Shared libraries loaded on first use rather than at import: glibc dlopens libgcc_s
#: to unwind a thread in pthread_exit(), and aborts if it cannot.
_LIBRARIES = ("libgcc_s.so.1",)

_preloaded = False
_test_payload: Callable[[], None] | None = None


def preload(extra_modules: Iterable[str] = (), encodings: Iterable[str] = ()) -> None:
    """Import every module (and load every library) the driver will need at run time.

    Called by :func:`confine` before the pivot into the empty root; calling it again
    afterwards only imports what is already imported (or fails, quietly, for anything
    new: nothing can be read from disk any more).
    """
    global _preloaded
    first = not _preloaded
    names = [f"encodings.{e}" for e in _ENCODINGS] + list(_MODULES) if first else []
    names += list(extra_modules)
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.warning("preload: cannot import %s: %s", name, exc)
    for name in _OPTIONAL_MODULES if first else ():
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    import codecs

    for encoding in encodings:
        try:
            codecs.lookup(encoding)
        except LookupError:
            log.warning("preload: unknown encoding %s", encoding)
    if not first:
        return
    # Every format the registry lists (imported lazily by the registry itself).
    try:
        registry = importlib.import_module("drivers.registry")
        registry.driver_classes()
    except Exception as exc:
        log.warning("preload: drivers not importable: %s", exc)
    for library in _LIBRARIES:
        with contextlib.suppress(OSError):
            ctypes.CDLL(library)
    try:
        seccomp.load_library()
    except seccomp.SeccompError as exc:
        raise SandboxError(str(exc)) from None
    _load_test_payload()
    _preloaded = True


def _load_test_payload() -> None:
    global _test_payload
    name = os.environ.get(TEST_PAYLOAD_ENV)
    if not name:
        return
    module = importlib.import_module(TEST_PAYLOAD_MODULE)
    _test_payload = module.prepare(name)


# --- the steps ---------------------------------------------------------------------------


def _check_fds(keep: Collection[int]) -> None:
    for fd in keep:
        try:
            os.fstat(fd)
        except OSError as exc:
            raise SandboxError(f"fd {fd} to keep is not open: {exc.strerror}") from None


def _check_single_threaded() -> None:
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = threading.active_count()
    if tasks != 1:
        raise SandboxError(f"confine() must run single-threaded ({tasks} threads)")


def _cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def _become_nobody() -> None:
    """Root launcher: run as an unprivileged host uid before anything else."""
    try:
        os.setgroups([])
        os.setresgid(ROOT_DRIVER_GID, ROOT_DRIVER_GID, ROOT_DRIVER_GID)
        os.setresuid(ROOT_DRIVER_UID, ROOT_DRIVER_UID, ROOT_DRIVER_UID)
    except OSError as exc:
        raise SandboxError(f"cannot switch to uid {ROOT_DRIVER_UID}: {exc.strerror}") from None
    # setuid() made us non-dumpable: /proc/self/uid_map would belong to root.
    _prctl(PR_SET_DUMPABLE, 1, what="PR_SET_DUMPABLE")


def _write(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"open {path}: {exc.strerror}") from None
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        raise SandboxError(f"write {path} ({text.strip()!r}): {exc.strerror}") from None
    finally:
        os.close(fd)


def _unshare(namespaces: int = NAMESPACES) -> None:
    uid, gid = os.geteuid(), os.getegid()
    rc = LIBC.unshare(namespaces)
    if rc < 0:
        err = ctypes.get_errno()
        hint = ""
        if err in (errno.EPERM, errno.ENOSPC):
            hint = " (unprivileged user namespaces disabled? see user.max_user_namespaces)"
        raise SandboxError(f"unshare: {os.strerror(err)}{hint}")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")


def _empty_root() -> None:
    """Pivot into an empty read-only tmpfs and detach the old root (all of it)."""
    _check(LIBC.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    base = next(
        (d for d in ("/tmp", "/mnt", "/dev", "/run", "/proc")
         if os.path.isdir(d) and not os.path.islink(d)),
        None,
    )
    if base is None:
        raise SandboxError("no directory to mount the empty root on")
    _check(
        LIBC.mount(b"pyfsmount", base.encode(), b"tmpfs",
                   MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   b"size=4k,nr_inodes=2,mode=0555"),
        "mount the empty root",
    )
    os.chdir(base)
    _check(LIBC.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(LIBC.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")
    if os.listdir("/"):
        raise SandboxError("the new root is not empty")


def _drop_privileges(cap_last: int) -> None:
    _prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN, what="PR_SET_SECUREBITS")
    for cap in range(cap_last + 1):
        rc = LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        if rc < 0 and ctypes.get_errno() != errno.EINVAL:
            _check(rc, f"PR_CAPBSET_DROP {cap}")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT_CLEAR_ALL")
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(LIBC.syscall(SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    for cap in range(cap_last + 1):
        if LIBC.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) > 0:
            raise SandboxError(f"capability {cap} still in the bounding set")


def _close_fds_except(keep: Collection[int]) -> None:
    """close_range() over every gap between the fds to keep."""
    low = 0
    for fd in [*sorted(set(keep)), 2**31 - 1]:
        if fd > low:
            rc = LIBC.syscall(SYS_CLOSE_RANGE, ctypes.c_uint(low), ctypes.c_uint(fd - 1), 0)
            if rc < 0:
                os.closerange(low, min(fd, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        low = fd + 1


def _file_size_limit(keep: Collection[int]) -> int:
    """0 unless a kept fd is a regular file open for writing (a log): then its size plus
    :data:`LOG_FILE_BUDGET`, so logging goes on and the disk stays safe."""
    limit = 0
    for fd in keep:
        try:
            st = os.fstat(fd)
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and writable:
            limit = max(limit, st.st_size + LOG_FILE_BUDGET)
    return limit


def _set_limits(limits: SandboxLimits, keep: Collection[int]) -> None:
    wanted = [
        (resource.RLIMIT_AS, limits.max_memory),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_NPROC, limits.max_processes),
        (resource.RLIMIT_FSIZE, _file_size_limit(keep)),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_MEMLOCK, 0),
        (resource.RLIMIT_MSGQUEUE, 0),
        (RLIMIT_LOCKS, 0),
        (resource.RLIMIT_RTPRIO, 0),
    ]
    for res, value in wanted:
        _limit(res, value, value)
    if limits.cpu_seconds is not None:
        _limit(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)


def _limit(res: int, soft: int, hard: int) -> None:
    _, old_hard = resource.getrlimit(res)
    if old_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, old_hard), min(hard, old_hard)
    try:
        resource.setrlimit(res, (soft, hard))
    except (OSError, ValueError) as exc:
        raise SandboxError(f"setrlimit({res}, {soft}): {exc}") from None


# --- the pid namespace: fork, and the parent that waits --------------------------------

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _fork_into_pid_namespace(
    limits: SandboxLimits, cap_last: int, nondumpable: bool
) -> None:
    """Fork; return in the child (pid 1 of the new pid namespace), never in the parent."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    alive_r, alive_w = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        raise SandboxError(f"fork into the pid namespace: {exc.strerror}") from None
    if pid == 0:
        os.close(alive_w)
        # Die with the parent; if it is already gone, its end of the pipe is closed.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, what="PR_SET_PDEATHSIG")
        os.set_blocking(alive_r, False)
        try:
            if os.read(alive_r, 1) == b"":
                os._exit(1)
        except BlockingIOError:
            pass
        os.close(alive_r)
        _handle_fatal_signals_as_pid_one()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return
    os.close(alive_r)
    try:
        _wait_for(pid, limits, cap_last, nondumpable, old_mask, alive_w)
    except BaseException as exc:  # never return into the driver's code
        with contextlib.suppress(Exception):
            os.write(2, f"pyfsmount sandbox: parent failed: {exc!r}\n".encode())
        with contextlib.suppress(Exception):
            os.kill(pid, signal.SIGKILL)
        os._exit(70)


def _handle_fatal_signals_as_pid_one() -> None:
    """As pid 1, a signal with the default action is dropped: give the forwarded ones a
    handler that exits as their default action would (SIGINT keeps Python's
    KeyboardInterrupt, whose exit the parent understands)."""
    for fatal in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(fatal) == signal.SIG_DFL:
            signal.signal(fatal, _exit_on_signal)


def _exit_on_signal(signum: int, frame: object) -> None:
    os._exit(128 + signum)


def fork_as_pid_one() -> int:
    """Fork a child that is pid 1 of a new pid namespace of its own: 0 in the child, its
    pid in the caller, which becomes a child subreaper to reap it.

    For a parent that waits for its children itself (the driver template): the child
    then confines itself with ``confine(..., pid_one=True)`` and needs no waiting
    parent inside the sandbox, a second copy of the interpreter's written pages (3 MiB
    private per mount, benchmarks/RESULTS.md).  The namespace is made by a short-lived
    intermediate process (a process cannot enter a new pid namespace itself, and
    ``unshare(CLONE_NEWPID)`` works once per process); the child is orphaned at once
    and reparented to the caller.  Needs CAP_SYS_ADMIN (the template runs as root).

    SandboxError if the pid namespace cannot be made (no CAP_SYS_ADMIN: the caller may
    fall back to a plain fork); OSError if a fork fails (no process left under
    RLIMIT_NPROC, say), which says nothing about the next attempt.
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1, what="PR_SET_CHILD_SUBREAPER")
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        intermediate = os.fork()
    except OSError:
        os.close(report_r)
        os.close(report_w)
        raise
    if intermediate == 0:
        os.close(report_r)
        _as_intermediate(report_w)  # returns only in the new pid 1
        return 0
    os.close(report_w)
    with os.fdopen(report_r, "rb") as report:
        answer = report.read()
    os.waitpid(intermediate, 0)
    if answer.isdigit():
        return int(answer)
    if answer.startswith(_FORK_FAILED):
        code = int(answer[len(_FORK_FAILED) :])
        raise OSError(code, os.strerror(code))
    raise SandboxError(answer.decode(errors="replace") or "the intermediate process died")


#: How the intermediate reports a failed fork (followed by the errno), as opposed to a
#: pid namespace it could not make (the message itself).
_FORK_FAILED = b"fork failed: errno "


def _as_intermediate(report_w: int) -> None:
    """In the intermediate: unshare the pid namespace, fork its pid 1, report the pid and
    exit; returns only in that child."""
    try:
        _check(LIBC.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
    except SandboxError as exc:
        os.write(report_w, str(exc).encode())
        os._exit(1)
    try:
        child = os.fork()
    except OSError as exc:
        os.write(report_w, _FORK_FAILED + str(exc.errno).encode())
        os._exit(1)
    if child == 0:
        os.close(report_w)
        return
    os.write(report_w, str(child).encode())
    os._exit(0)


def _wait_for(
    child: int,
    limits: SandboxLimits,
    cap_last: int,
    nondumpable: bool,
    old_mask: Iterable[int],
    alive_w: int,
) -> None:
    forwarded: set[int] = set()

    def forward(signum: int, frame: object) -> None:
        forwarded.add(signum)
        with contextlib.suppress(OSError):
            os.kill(child, signum)

    for forwarded_signal in _FORWARDED:
        signal.signal(forwarded_signal, forward)
    _drop_privileges(cap_last)
    if nondumpable:
        _prctl(PR_SET_DUMPABLE, 0, what="PR_SET_DUMPABLE")
    # alive_w stays open as long as we live: the child checks it after PR_SET_PDEATHSIG.
    _close_fds_except({2, alive_w})
    _set_limits(limits, {2})
    seccomp.install(seccomp.waiter_rules(os.getpid(), child))
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    while True:
        try:
            _, status = os.waitpid(child, 0)
        except ChildProcessError:
            os._exit(70)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            break
    if os.WIFSIGNALED(status):
        report_seccomp_kill(2, child, status)
        _die_by(os.WTERMSIG(status))
    code = os.WEXITSTATUS(status)
    if code > 128 and code - 128 in forwarded:
        _die_by(code - 128)
    os._exit(code)


def report_seccomp_kill(log_fd: int, pid: int, status: int) -> None:
    """If wait ``status`` says driver ``pid`` was killed by seccomp, say so on ``log_fd``
    (the launcher then finds the syscall: :func:`driver_killed_by`)."""
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS:
        with contextlib.suppress(OSError):
            os.write(log_fd, f"pyfsmount sandbox: driver (pid {pid}) killed by seccomp "
                             "(SIGSYS)\n".encode())


def _die_by(sig: int) -> None:
    """Exit the way the child did: by the same signal (no core: RLIMIT_CORE is 0)."""
    with contextlib.suppress(Exception):
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(128 + sig)


# --- the API -----------------------------------------------------------------------------


def confine(keep_fds: Collection[int], limits: SandboxLimits, pid_one: bool = False) -> None:
    """Confine the calling process (see the module docstring); returns in the process
    that must go on serving.  Raises SandboxError if a step fails.

    With ``pid_one`` the caller is already pid 1 of a pid namespace of its own, made by
    a parent that reaps it (:func:`fork_as_pid_one`): no other pid namespace is made
    and no waiting parent forked (step 4).
    """
    keep = frozenset(keep_fds)
    _check_fds(keep)
    _check_single_threaded()
    if pid_one and os.getpid() != 1:
        raise SandboxError(f"not pid 1 of a pid namespace of its own (pid {os.getpid()})")
    preload()
    cap_last = _cap_last_cap()
    started_as_root = os.geteuid() == 0
    if started_as_root:
        _become_nobody()
    _unshare(NAMESPACES & ~CLONE_NEWPID if pid_one else NAMESPACES)
    _empty_root()
    if pid_one:
        _handle_fatal_signals_as_pid_one()
    else:
        _fork_into_pid_namespace(limits, cap_last, nondumpable=started_as_root)
    # The serving process: pid 1 of its pid namespace.
    _drop_privileges(cap_last)
    if started_as_root:
        # Keep host processes that also run as nobody from ptracing us.
        _prctl(PR_SET_DUMPABLE, 0, what="PR_SET_DUMPABLE")
    _close_fds_except(keep)
    _set_limits(limits, keep)


#: Driver filters compiled ahead, by the pid they are for (see precompile_seccomp).
_compiled_filters: dict[int, bytes] = {}


def precompile_seccomp() -> None:
    """Build the driver's filter now, for the driver that :func:`confine` will make pid 1
    of its namespace: the driver template does this once, before it forks."""
    _compiled_filters[1] = seccomp.compile_program(seccomp.driver_rules(1))


def install_seccomp() -> None:
    """The allowlist (default: kill the process); see fusefs.seccomp.driver_rules."""
    if LIBC.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1:
        _prctl(PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    try:
        program = _compiled_filters.get(os.getpid())
        if program is None:
            seccomp.install(seccomp.driver_rules(os.getpid()))
        else:
            seccomp.load_program(program)
    except seccomp.SeccompError as exc:
        raise SandboxError(f"seccomp: {exc}") from None
    if _test_payload is not None:
        _test_payload()


def driver_killed_by(pid: int, timeout: float = 1.0) -> str | None:
    """For the launcher: the name of the system call that made seccomp kill host pid
    ``pid``, read from the kernel's audit record (root only; None if unreadable)."""
    kill = seccomp.find_kill(pid, timeout)
    return None if kill is None else kill.syscall_name
