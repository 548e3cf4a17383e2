"""The seccomp half of the sandbox: libseccomp through ctypes, the driver's allowlist,
syscall names, and the kernel's record of a seccomp kill.

libseccomp (Debian's ``libseccomp2``) compiles the rules into a BPF program, adds the
architecture check (a non-x86_64 or x32 system call kills the process) and loads it.
Nothing here is imported lazily: :func:`load_library` runs in :func:`fusefs.sandbox.preload`,
before the root file system goes away.

The allowlist is in :func:`driver_rules`; SECURITY.md explains every entry.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import select
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fusefs.libc import LIBC

# --- libseccomp constants (seccomp.h, libseccomp 2.5) ---------------------------------
ACT_KILL_PROCESS = 0x80000000
ACT_ALLOW = 0x7FFF0000
ACT_LOG = 0x7FFC0000


def act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


FLTATR_ACT_BADARCH = 2
FLTATR_CTL_NNP = 3
FLTATR_CTL_TSYNC = 4

CMP_NE = 1
CMP_LT = 2
CMP_LE = 3
CMP_EQ = 4
CMP_GE = 5
CMP_GT = 6
CMP_MASKED_EQ = 7
CMP_MASKED_EQ = 7

ARCH_X86_64 = 0xC000003E  # AUDIT_ARCH_X86_64
X32_SYSCALL_BIT = 0x40000000

# --- kernel constants (x86_64) ----------------------------------------------------------
PROT_EXEC = 0x4
AF_UNIX = 1
SOCK_STREAM = 1
SOL_SOCKET = 1
SOL_TCP = 6
SO_SNDBUF = 7
SO_RCVBUF = 8
PR_SET_NAME = 15
PR_GET_NAME = 16
AT_EMPTY_PATH = 0x1000
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL = 0, 1, 2, 3, 4
F_DUPFD_CLOEXEC = 1030
FIONBIO = 0x5421
FIOCLEX = 0x5451
FIONCLEX = 0x5450
TCGETS = 0x5401
CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_SIGHAND = 0x00000800
CLONE_THREAD = 0x00010000
CLONE_SYSVSEM = 0x00040000
CLONE_SETTLS = 0x00080000
CLONE_PARENT_SETTID = 0x00100000
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_CHILD_SETTID = 0x01000000
#: What glibc's pthread_create asks for; any other bit (a namespace, CLONE_PARENT,
#: CLONE_UNTRACED, an exit signal, ...) makes clone() a kill.
THREAD_CLONE_FLAGS = (
    CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
)
THREAD_CLONE_OPTIONAL = (
    CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID | CLONE_CHILD_SETTID
)

SIGSYS = 31


class SeccompError(OSError):
    """libseccomp is missing, refused a rule, or could not load the filter."""


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@dataclass(frozen=True)
class Cmp:
    """One argument comparison: ``arg OP a`` (``arg & a == b`` for MASKED_EQ)."""

    arg: int
    op: int
    a: int
    b: int = 0


@dataclass(frozen=True)
class Rule:
    """``action`` for ``syscall`` when every comparison holds (all of them: AND)."""

    syscall: str
    action: int = ACT_ALLOW
    cmps: tuple[Cmp, ...] = field(default_factory=tuple)


_lib: ctypes.CDLL | None = None


def load_library() -> ctypes.CDLL:
    """libseccomp.so.2, loaded once (before the sandbox hides the file system)."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise SeccompError(
            errno.ENOENT, f"libseccomp is not installed (apt-get install libseccomp2): {exc}"
        ) from None
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.restype = None
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_num_arch.argtypes = (ctypes.c_uint32, ctypes.c_int)
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p  # malloc'd char *
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_export_pfc.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.seccomp_export_pfc.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.seccomp_export_bpf.restype = ctypes.c_int
    _lib = lib
    return lib


def syscall_number(name: str) -> int:
    """The x86_64 number of a system call (negative for a name the kernel lacks)."""
    return int(load_library().seccomp_syscall_resolve_name(name.encode()))


def syscall_name(nr: int) -> str:
    """``257 -> "openat"`` for x86_64 (libseccomp's table); ``"syscall_N"`` if unknown.

    An x32-ABI number (bit 30 set) is named ``"x32:NAME"``.
    """
    if nr >= X32_SYSCALL_BIT and nr & X32_SYSCALL_BIT:
        return "x32:" + syscall_name(nr & ~X32_SYSCALL_BIT)
    try:
        lib = load_library()
    except SeccompError:
        return f"syscall_{nr}"
    ptr = lib.seccomp_syscall_resolve_num_arch(ARCH_X86_64, nr)
    if not ptr:
        return f"syscall_{nr}"
    try:
        return ctypes.string_at(ptr).decode()
    finally:
        LIBC.free(ptr)


class Filter:
    """A libseccomp filter context: default action, rules, load."""

    def __init__(self, default: int = ACT_KILL_PROCESS) -> None:
        self._lib = load_library()
        ctx = self._lib.seccomp_init(default)
        if not ctx:
            raise SeccompError(errno.ENOMEM, "seccomp_init failed")
        self._ctx: int | None = ctx
        # Another architecture (i386 int 0x80, x32) is an attack, never a mistake.
        self._attr(FLTATR_ACT_BADARCH, ACT_KILL_PROCESS)
        self._attr(FLTATR_CTL_NNP, 1)
        self._attr(FLTATR_CTL_TSYNC, 1)

    def _attr(self, attr: int, value: int) -> None:
        rc = self._lib.seccomp_attr_set(self._ctx, attr, value)
        if rc < 0:
            raise SeccompError(-rc, f"seccomp_attr_set({attr}): {os.strerror(-rc)}")

    def add(self, rule: Rule) -> None:
        nr = syscall_number(rule.syscall)
        if nr < 0:
            # A name this kernel/libseccomp does not know (e.g. a newer call): skip it,
            # the default action covers it.
            return
        array = (_ArgCmp * max(1, len(rule.cmps)))()
        for i, cmp in enumerate(rule.cmps):
            array[i] = _ArgCmp(cmp.arg, cmp.op, cmp.a, cmp.b)
        rc = self._lib.seccomp_rule_add_array(self._ctx, rule.action, nr, len(rule.cmps), array)
        if rc < 0:
            raise SeccompError(-rc, f"seccomp rule for {rule.syscall}: {os.strerror(-rc)}")

    def add_all(self, rules: Iterable[Rule]) -> Filter:
        for rule in rules:
            self.add(rule)
        return self

    def export_pfc(self, fd: int) -> None:
        """Write the filter in libseccomp's readable pseudo-code to ``fd``."""
        rc = self._lib.seccomp_export_pfc(self._ctx, fd)
        if rc < 0:
            raise SeccompError(-rc, "seccomp_export_pfc failed")

    def export_bpf(self) -> bytes:
        """The BPF program :meth:`load` would load, for :func:`load_program`."""
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            rc = self._lib.seccomp_export_bpf(self._ctx, fd)
            if rc < 0:
                raise SeccompError(-rc, "seccomp_export_bpf failed")
            size = os.lseek(fd, 0, os.SEEK_CUR)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)

    def load(self) -> None:
        rc = self._lib.seccomp_load(self._ctx)
        if rc < 0:
            raise SeccompError(-rc, f"seccomp_load: {os.strerror(-rc)}")

    def release(self) -> None:
        if self._ctx is not None:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _allow(*names: str) -> list[Rule]:
    return [Rule(name) for name in names]


def _errno(code: int, *names: str) -> list[Rule]:
    return [Rule(name, act_errno(code)) for name in names]


def _self_signal_rules(pid: int) -> list[Rule]:
    """kill/tgkill only at the calling process (raise(), abort(), Python's SIGINT exit)."""
    return [
        Rule("kill", ACT_ALLOW, (Cmp(0, CMP_EQ, pid),)),
        Rule("kill", act_errno(errno.EPERM), (Cmp(0, CMP_NE, pid),)),
        Rule("tgkill", ACT_ALLOW, (Cmp(0, CMP_EQ, pid),)),
        Rule("tgkill", act_errno(errno.EPERM), (Cmp(0, CMP_NE, pid),)),
    ]


def _no_exec_memory() -> list[Rule]:
    no_exec = (Cmp(2, CMP_MASKED_EQ, PROT_EXEC, 0),)
    return [Rule("mmap", ACT_ALLOW, no_exec), Rule("mprotect", ACT_ALLOW, no_exec)]


def _common_rules() -> list[Rule]:
    """What any confined Python process needs to run, allocate, take signals and exit."""
    return [
        *_allow(
            # memory (the heap, pymalloc arenas, freeing)
            "brk", "munmap", "mremap", "madvise",
            # signals delivered to us, sigprocmask around critical sections
            "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "restart_syscall",
            "getpid", "gettid",
            "write",  # the log on fd 2
            "exit", "exit_group",
        ),
        *_no_exec_memory(),
    ]


def driver_rules(pid: int) -> list[Rule]:
    """The serving allowlist for a driver process whose pid (in its namespace) is ``pid``.

    Every entry is measured (``strace -f -c`` of a confined driver serving a mount) or
    is the errno answer to a harmless probe; see SECURITY.md.
    """
    rules = _common_rules() + _self_signal_rules(pid)
    rules += _allow(
        # I/O on the fds we hold: image (pread64), FUSE channel (read/writev), control
        # socket (sendto/recvmsg), trio's wakeup socketpair (recvfrom/sendto), stderr
        "read", "pread64", "writev", "close", "lseek",
        # file data read ahead through the image's O_DIRECT bulk descriptor, where
        # there is one (BlockReader.read_bulk)
        "preadv2",  # os.preadv: CPython calls preadv2 where the kernel has it
        "cachestat",  # whether the page cache holds a range already (drivers/pagecache.py)
        "recvmsg", "recvfrom", "sendmsg", "sendto", "getsockname", "getpeername",
        # trio's event loop
        "epoll_create1", "epoll_ctl", "epoll_wait",
        # threads and their synchronisation (Python, glibc)
        "futex", "set_robust_list", "rseq", "sched_yield", "sched_getaffinity",
        # time, randomness, identity: no side effects
        "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
        "getrandom", "getuid", "geteuid", "getgid", "getegid",
        "fstat",
    )
    rules += [
        # threads only: the namespace, exit-signal and ptrace bits must be clear
        Rule(
            "clone",
            ACT_ALLOW,
            (Cmp(0, CMP_MASKED_EQ, 0xFFFFFFFF & ~THREAD_CLONE_OPTIONAL, THREAD_CLONE_FLAGS),),
        ),
        # clone3 takes its flags in memory, out of BPF's reach: ENOSYS makes glibc use clone
        Rule("clone3", act_errno(errno.ENOSYS)),
        # fstat() is newfstatat(fd, "", AT_EMPTY_PATH); a path lookup finds nothing anyway
        Rule("newfstatat", ACT_ALLOW, (Cmp(3, CMP_MASKED_EQ, AT_EMPTY_PATH, AT_EMPTY_PATH),)),
        Rule("newfstatat", act_errno(errno.ENOENT), (Cmp(3, CMP_MASKED_EQ, AT_EMPTY_PATH, 0),)),
        Rule("statx", ACT_ALLOW, (Cmp(2, CMP_MASKED_EQ, AT_EMPTY_PATH, AT_EMPTY_PATH),)),
        Rule("statx", act_errno(errno.ENOENT), (Cmp(2, CMP_MASKED_EQ, AT_EMPTY_PATH, 0),)),
        # fcntl: descriptor flags and status flags only (no locks, leases, F_SETOWN ...)
        *[Rule("fcntl", ACT_ALLOW, (Cmp(1, CMP_EQ, cmd),)) for cmd in
          (F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC)],
        # ioctl: Python sets O_NONBLOCK and close-on-exec with these; isatty() is told no
        *[Rule("ioctl", ACT_ALLOW, (Cmp(1, CMP_EQ, cmd),)) for cmd in (FIONBIO, FIOCLEX, FIONCLEX)],
        Rule("ioctl", act_errno(errno.ENOTTY), (Cmp(1, CMP_EQ, TCGETS),)),
        # socket.socket(fileno=) asks SO_TYPE/SO_PROTOCOL; trio shrinks its wakeup
        # socketpair's buffers and tries TCP_NODELAY on it (EOPNOTSUPP on AF_UNIX anyway)
        Rule("getsockopt", ACT_ALLOW, (Cmp(1, CMP_EQ, SOL_SOCKET),)),
        *[Rule("setsockopt", ACT_ALLOW, (Cmp(1, CMP_EQ, SOL_SOCKET), Cmp(2, CMP_EQ, opt)))
          for opt in (SO_SNDBUF, SO_RCVBUF)],
        Rule("setsockopt", act_errno(errno.EOPNOTSUPP), (Cmp(1, CMP_EQ, SOL_TCP),)),
        # thread names (trio's thread cache names its workers)
        Rule("prctl", ACT_ALLOW, (Cmp(0, CMP_EQ, PR_SET_NAME),)),
        Rule("prctl", ACT_ALLOW, (Cmp(0, CMP_EQ, PR_GET_NAME),)),
        # trio's wakeup socketpair; a connected pair reaches nobody else
        Rule("socketpair", ACT_ALLOW,
             (Cmp(0, CMP_EQ, AF_UNIX), Cmp(1, CMP_MASKED_EQ, 0xF, SOCK_STREAM))),
        # getrlimit (glibc, Python) and lowering our own limits
        Rule("prlimit64", ACT_ALLOW, (Cmp(0, CMP_EQ, 0),)),
        Rule("getrlimit", ACT_ALLOW),
    ]
    # Probes that benign code makes and must see fail softly (never reach the kernel):
    # libfuse opens /dev/null to check fds 0-2 and makes a pipe for splice (EPERM
    # makes it fall back to read/writev), tracebacks open source files, glibc's NSS
    # tries nscd's socket.
    rules += _errno(errno.EACCES, "open", "openat", "openat2", "creat", "socket")
    rules += _errno(errno.ENOENT, "stat", "lstat", "access", "faccessat", "faccessat2",
                    "readlink", "readlinkat", "getcwd")
    rules += _errno(errno.EPERM, "pipe", "pipe2")
    return rules


def waiter_rules(pid: int, child: int) -> list[Rule]:
    """The pid-namespace parent: wait for the child, forward signals to it, exit like it
    (measured: wait4, kill, rt_sigaction, rt_sigprocmask, rt_sigreturn, getpid,
    write, exit_group).  A signal to anyone else is a kill."""
    return [
        *_common_rules(),
        Rule("wait4"),
        Rule("kill", ACT_ALLOW, (Cmp(0, CMP_EQ, child),)),
        Rule("kill", ACT_ALLOW, (Cmp(0, CMP_EQ, pid),)),
        Rule("tgkill", ACT_ALLOW, (Cmp(0, CMP_EQ, pid),)),
    ]


def install(rules: Sequence[Rule], default: int = ACT_KILL_PROCESS) -> None:
    """Build and load a filter (no_new_privs must already be set)."""
    with Filter(default) as flt:
        flt.add_all(rules)
        flt.load()


def compile_program(rules: Sequence[Rule], default: int = ACT_KILL_PROCESS) -> bytes:
    """The filter :func:`install` would load, as BPF: built once (the driver template
    does it before forking), it loads in microseconds, where building takes milliseconds."""
    with Filter(default) as flt:
        flt.add_all(rules)
        return flt.export_bpf()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


SYS_SECCOMP = 317  # x86_64
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
BPF_INSTRUCTION_SIZE = 8


def load_program(program: bytes) -> None:
    """Load a :func:`compile_program` filter for every thread, as libseccomp's load does
    (no_new_privs must already be set)."""
    if not program or len(program) % BPF_INSTRUCTION_SIZE:
        raise SeccompError(errno.EINVAL, "not a BPF program")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // BPF_INSTRUCTION_SIZE, ctypes.addressof(buffer))
    rc = LIBC.syscall(
        SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(fprog)
    )
    if rc != 0:
        err = ctypes.get_errno() if rc < 0 else errno.EBUSY  # > 0: a thread that can't sync
        raise SeccompError(err, f"loading the filter: {os.strerror(err)}")


# --- the kernel's record of a kill ------------------------------------------------------

_AUDIT_RE = re.compile(rb"type=1326 .*?\bpid=(\d+)\b.*?\bsig=(\d+)\b.*?\bsyscall=(\d+)\b")


@dataclass(frozen=True)
class SeccompKill:
    pid: int
    signal: int
    syscall: int

    @property
    def syscall_name(self) -> str:
        return syscall_name(self.syscall)


def parse_audit(lines: Iterable[bytes]) -> list[SeccompKill]:
    """Seccomp kills (``type=1326 ... pid=N ... sig=31 ... syscall=N``) in kernel log lines."""
    kills = []
    for line in lines:
        match = _AUDIT_RE.search(line)
        if match and int(match.group(2)) != 0:
            kills.append(SeccompKill(*(int(g) for g in match.groups())))
    return kills


def read_kernel_log(path: str = "/dev/kmsg") -> list[bytes]:
    """Every record in the kernel ring buffer, without blocking.

    ``/dev/kmsg`` is readable by root (and by anyone when ``kernel.dmesg_restrict`` is 0);
    PermissionError otherwise.  An unprivileged launcher learns only the SIGSYS.
    """
    lines: list[bytes] = []
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # overwritten records; go on with the next one
                continue
            if not record:
                break
            lines.append(record)
    finally:
        os.close(fd)
    return lines


def find_kill(pid: int, timeout: float = 1.0) -> SeccompKill | None:
    """The seccomp kill the kernel logged for host pid ``pid``, if it can be read here.

    The audit record is printed by kauditd a moment after the kill, so this polls
    for up to ``timeout`` seconds.  None if there is none or the log is not readable.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            kills = [k for k in parse_audit(read_kernel_log()) if k.pid == pid]
        except OSError:
            return None
        if kills:
            return kills[-1]
        if time.monotonic() >= deadline:
            return None
        select.select([], [], [], 0.05)
