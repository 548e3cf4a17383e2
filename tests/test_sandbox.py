"""The driver sandbox, with real processes: attacks from inside, inspection from outside,
and a real FUSE mount served by a confined process.

Each scenario runs twice: with the driver started by root (it becomes nobody) and
started by an ordinary user (uid TEST_UID via setpriv when the tests run as root, the
current user otherwise).  The confined processes are ``python -m tests.sandbox_payloads
driver`` (see that module); attacks are picked with PYFSMOUNT_TEST_PAYLOAD.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fusefs import sandbox, seccomp

try:
    from tests import sandbox_payloads as sp
except ImportError:  # tests/ is not a package on sys.path: pytest put tests/ itself there
    import sandbox_payloads as sp  # type: ignore[no-redef,import-not-found]

ROOT = Path(__file__).resolve().parent.parent
TEST_UID = 12345
IS_ROOT = os.geteuid() == 0
WHO = ["root", "user"]
SIGSYS = -signal.SIGSYS
#: Small enough that RLIMIT_NPROC, not RLIMIT_AS (each thread's stack and malloc arena
#: count against the address space), ends the thread bomb.
THREAD_BOMB_NPROC = 6


def _userns_available() -> bool:
    probe = subprocess.run(
        ["unshare", "--user", "--map-current-user", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


pytestmark = [
    pytest.mark.skipif(
        sys.platform != "linux" or os.uname().machine != "x86_64", reason="Linux x86_64 only"
    ),
    pytest.mark.skipif(not _userns_available(), reason="no unprivileged user namespaces"),
]


def _as(who: str) -> list[str]:
    if who == "root":
        if not IS_ROOT:
            pytest.skip("needs root")
        return []
    if IS_ROOT:
        return ["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--clear-groups"]
    return []


def _uid(who: str) -> int:
    return os.geteuid() if who == "user" and not IS_ROOT else (TEST_UID if who == "user" else 0)


@dataclass
class Driver:
    """A driver process (the sandbox's waiting parent) and the launcher's ends."""

    proc: subprocess.Popen[bytes]
    control: socket.socket
    image_fd: int
    control_fd: int  # its number in the driver
    stderr_path: Path
    closers: list[Any] = field(default_factory=list)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def result(self) -> dict[str, Any] | None:
        for line in self.stderr().splitlines():
            if line.startswith(sp.RESULT_MARK):
                return dict(json.loads(line[len(sp.RESULT_MARK) :]))
        return None

    def inner_pid(self, timeout: float = 5.0) -> int:
        """The host pid of the confined child (pid 1 of its namespace)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError):
                        text = Path(f"/proc/{entry}/stat").read_text()
                        if int(text.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                            return int(entry)
            time.sleep(0.02)
        raise AssertionError("no confined child found")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.control.close()
        os.close(self.image_fd)
        for closer in self.closers:
            closer()


def start_driver(who: str, tmp: Path, payload: str = "", **env: str) -> Driver:
    tmp.mkdir(parents=True, exist_ok=True)
    image = tmp / "image"
    image.write_bytes(sp.IMAGE_TEXT)
    image_fd = os.open(image, os.O_RDONLY)
    launcher_end, driver_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stderr_path = tmp / "stderr"
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        sandbox.TEST_PAYLOAD_ENV: payload,
        "PYFSMOUNT_TEST_IMAGE_FD": str(image_fd),
        "PYFSMOUNT_TEST_CONTROL_FD": str(driver_end.fileno()),
        **env,
    }
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [
                *_as(who),
                sys.executable,
                "-m",
                "tests.sandbox_payloads",
                "driver",
                str(image_fd),
                str(driver_end.fileno()),
            ],
            pass_fds=(image_fd, driver_end.fileno()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=environ,
            cwd=ROOT,
        )
    control_fd = driver_end.fileno()
    driver_end.close()
    return Driver(proc, launcher_end, image_fd, control_fd, stderr_path)


# --- attacks from inside ----------------------------------------------------------------

#: payload -> (expected returncode, expected fields of the reported result or None)
EXPECTED: dict[str, tuple[int, dict[str, Any] | None]] = {
    "open_etc_passwd": (0, {"open": "EACCES", "stat": "ENOENT"}),
    "saved_dirfd": (0, {"fcntl": "EBADF", "openat": "EACCES"}),
    "socket_inet": (0, {"socket": "EACCES"}),
    "socket_unix": (0, {"socket": "EACCES"}),
    "connect_unix": (SIGSYS, None),
    "execve_sh": (SIGSYS, None),
    "fork": (SIGSYS, None),
    "ptrace_launcher": (SIGSYS, None),
    "mount_tmpfs": (SIGSYS, None),
    "unshare_user": (SIGSYS, None),
    "write_image": (0, {"write": "EBADF"}),
    "pwrite_image": (SIGSYS, None),
    "mmap_exec": (SIGSYS, None),
    "mprotect_exec": (SIGSYS, None),
    "kill_init": (0, {"pid": 1}),
    "kill_launcher": (0, {"kill": "EPERM", "kill_all": "EPERM"}),
    "memory_bomb": (0, {"error": "MemoryError"}),
    "thread_bomb": (0, {"error": "can't start new thread"}),
    "pipe": (0, {"pipe": "EPERM"}),
    "bpf": (SIGSYS, None),
    "keyctl": (SIGSYS, None),
    "perf_event_open": (SIGSYS, None),
    "userfaultfd": (SIGSYS, None),
    "io_uring_setup": (SIGSYS, None),
    "setns": (SIGSYS, None),
    "open_by_handle_at": (SIGSYS, None),
    "x32_getpid": (SIGSYS, None),
}


@dataclass
class Outcome:
    returncode: int
    result: dict[str, Any] | None
    stderr: str
    host: dict[str, Any]


def _run_payload(who: str, name: str, base: Path) -> Outcome:
    tmp = base / f"{who}-{name}"
    tmp.mkdir(parents=True)
    shared = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    os.chmod(shared, 0o777)
    marker = shared / "pwned"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(shared / "host.sock"))
    os.chmod(shared / "host.sock", 0o777)
    listener.listen(1)
    listener.setblocking(False)
    victim = subprocess.Popen(["sleep", "60"])
    host: dict[str, Any] = {}
    limits = {"max_processes": THREAD_BOMB_NPROC} if name == "thread_bomb" else {}
    driver = start_driver(
        who,
        tmp,
        name,
        PYFSMOUNT_TEST_LIMITS=json.dumps(limits),
        PYFSMOUNT_TEST_MARKER=str(marker),
        PYFSMOUNT_TEST_SOCKET=str(shared / "host.sock"),
        PYFSMOUNT_TEST_VICTIM_PID=str(victim.pid),
    )
    try:
        returncode = driver.proc.wait(30)
        try:
            listener.accept()
            host["accepted"] = True
        except BlockingIOError:
            host["accepted"] = False
        host["marker"] = marker.exists()
        host["victim_alive"] = victim.poll() is None
        status = Path(f"/proc/{victim.pid}/status").read_text()
        host["victim_tracer"] = int(re.search(r"TracerPid:\s+(\d+)", status)[1])  # type: ignore[index]
        if returncode == SIGSYS and IS_ROOT:
            match = re.search(r"driver \(pid (\d+)\) killed by seccomp", driver.stderr())
            if match:
                host["killed_by"] = sandbox.driver_killed_by(int(match[1]), timeout=0.5)
        return Outcome(returncode, driver.result(), driver.stderr(), host)
    finally:
        victim.kill()
        victim.wait()
        listener.close()
        driver.close()
        for path in shared.iterdir():
            path.unlink()
        shared.rmdir()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Outcome]:
    """Every payload as every identity, four processes at a time."""
    base = tmp_path_factory.mktemp("payloads")
    os.chmod(base, 0o755)
    whos = [w for w in WHO if w == "user" or IS_ROOT]
    jobs = [(w, n) for w in whos for n in EXPECTED]
    with ThreadPoolExecutor(4) as pool:
        futures = {job: pool.submit(_run_payload, *job, base) for job in jobs}
        return {job: future.result() for job, future in futures.items()}


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("who", WHO)
def test_payload(outcomes: dict[tuple[str, str], Outcome], who: str, name: str) -> None:
    if (who, name) not in outcomes:
        pytest.skip("needs root")
    out = outcomes[(who, name)]
    returncode, fields = EXPECTED[name]
    assert out.returncode == returncode, out.stderr
    if fields is not None:
        assert out.result is not None, out.stderr
        for key, value in fields.items():
            if key == "error":
                assert value in out.result[key]
            else:
                assert out.result[key] == value, out.result
    # the host saw nothing
    assert out.host == {
        **out.host,
        "accepted": False,
        "marker": False,
        "victim_alive": True,
        "victim_tracer": 0,
    }


def test_kill_init_survives(outcomes: dict[tuple[str, str], Outcome]) -> None:
    """kill(1, SIGKILL) targets the driver itself (pid 1 of its namespace), which the
    kernel refuses to kill from inside: the call returns and nothing else is hit."""
    for (_, name), out in outcomes.items():
        if name == "kill_init":
            assert out.result is not None and out.result["kill"] in ("ok", "EPERM")


def test_memory_bomb_stops_at_rlimit_as(outcomes: dict[tuple[str, str], Outcome]) -> None:
    for (_, name), out in outcomes.items():
        if name == "memory_bomb":
            assert out.result is not None
            assert out.result["allocated_mib"] < sandbox.SandboxLimits().max_memory // 2**20


def test_thread_bomb_stops_at_rlimit_nproc(outcomes: dict[tuple[str, str], Outcome]) -> None:
    """RLIMIT_NPROC counts tasks of the driver's uid in its own user namespace (the
    waiting parent, the driver, its threads), also when the launcher is root."""
    for (_, name), out in outcomes.items():
        if name == "thread_bomb":
            assert out.result is not None
            assert out.result["threads"] == THREAD_BOMB_NPROC - 2, out.result


@pytest.mark.parametrize("who", WHO)
def test_rlimits_inside(who: str) -> None:
    """The limits as the driver sees them; with stderr a pipe, no file may grow at all."""
    proc = subprocess.run(
        [*_as(who), sys.executable, "-m", "tests.sandbox_payloads", "driver", "0", "1"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=ROOT,
        env={
            "PYTHONPATH": str(ROOT),
            sandbox.TEST_PAYLOAD_ENV: "rlimits",
            "PYFSMOUNT_TEST_LIMITS": json.dumps({"cpu_seconds": 30}),
        },
        timeout=30,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    (line,) = [x for x in err.splitlines() if x.startswith(sp.RESULT_MARK)]
    limits = json.loads(line[len(sp.RESULT_MARK) :])
    default = sandbox.SandboxLimits()
    assert limits == {
        "AS": [default.max_memory] * 2,
        "NOFILE": [default.max_open_files] * 2,
        "NPROC": [default.max_processes] * 2,
        "FSIZE": [0, 0],
        "CORE": [0, 0],
        "MEMLOCK": [0, 0],
        "CPU": [30, 31],
    }


#: The system call each killed payload dies on, as the kernel's audit record names it.
KILLED_BY = {
    "connect_unix": "connect",
    "execve_sh": "execve",
    "fork": "clone",
    "ptrace_launcher": "ptrace",
    "mount_tmpfs": "mount",
    "unshare_user": "unshare",
    "pwrite_image": "pwrite64",
    "mmap_exec": "mmap",
    "mprotect_exec": "mprotect",
    "bpf": "bpf",
    "keyctl": "keyctl",
    "perf_event_open": "perf_event_open",
    "userfaultfd": "userfaultfd",
    "io_uring_setup": "io_uring_setup",
    "setns": "setns",
    "open_by_handle_at": "open_by_handle_at",
    "x32_getpid": "x32:getpid",
}


@pytest.mark.skipif(not IS_ROOT, reason="the kernel log is readable by root only here")
def test_audit_names_the_killing_syscall(outcomes: dict[tuple[str, str], Outcome]) -> None:
    """Best effort: without auditd the kernel prints at most 10 audit records per 5 s
    ("kauditd_printk_skb: N callbacks suppressed"), so some records of this burst of
    kills are missing; every record that is there names the right system call."""
    assert set(KILLED_BY) == {n for n, (rc, _) in EXPECTED.items() if rc == SIGSYS}
    named = {
        (who, name): out.host.get("killed_by")
        for (who, name), out in outcomes.items()
        if name in KILLED_BY
    }
    assert any(named.values()), named
    for (_, name), syscall in named.items():
        assert syscall in (None, KILLED_BY[name]), (name, syscall)


# --- a real mount, inspected from outside -------------------------------------------------

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


@contextlib.contextmanager
def serving(who: str, tmp: Path) -> Iterator[tuple[Driver, Path, dict[str, Any]]]:
    """A confined driver serving a FUSE mount made by root with mount(2); yields the
    driver, the mountpoint and what /proc showed before the FUSE fd arrived."""
    if not IS_ROOT:
        pytest.skip("mounting FUSE needs root here (/dev/fuse is 0600)")
    driver = start_driver(who, tmp)
    mountpoint = Path(tempfile.mkdtemp(prefix="sbx-mnt-", dir="/tmp"))
    os.chmod(mountpoint, 0o755)
    try:
        driver.control.settimeout(20)
        message = json.loads(driver.control.recv(4096))
        assert message["ok"], driver.stderr()
        pid = driver.inner_pid()
        before = {"fds": sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")), "pid": pid}
        uid = _uid(who)
        fuse_fd = sp.root_fuse_mount(str(mountpoint), uid, uid)
        try:
            socket.send_fds(driver.control, [b"fd"], [fuse_fd])
        finally:
            os.close(fuse_fd)
        yield driver, mountpoint, before
    finally:
        _libc.umount2(str(mountpoint).encode(), 2)  # MNT_DETACH
        driver.close()
        mountpoint.rmdir()


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


@pytest.mark.parametrize("who", WHO)
def test_serves_a_real_mount_while_confined(who: str, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    with serving(who, tmp_path) as (driver, mountpoint, before):
        client = subprocess.run(
            [*_as(who), sys.executable, "-m", "tests.sandbox_payloads", "client", str(mountpoint)],
            capture_output=True,
            cwd=ROOT,
            timeout=30,
            check=False,
            env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")},
        )
        assert client.returncode == 0, client.stderr.decode() + driver.stderr()
        seen = json.loads(client.stdout)
        assert seen == {
            "listdir": ["hello.txt", "link", "sub"],
            "sub": ["nested.txt"],
            "size": len(sp.IMAGE_TEXT),
            "mode": "0o100644",
            "content": sp.IMAGE_TEXT.decode(),
            "nested": "hello",
            "readlink": "hello.txt",
            "getxattr": "xattr value",
            "listxattr": ["user.test"],
            "statvfs_blocks": 10,
            "missing": "ENOENT",
        }
        pid = before["pid"]
        status = _status(pid)
        # /proc as the launcher sees it
        assert before["fds"] == sorted({0, 1, 2, driver.image_fd, driver.control_fd})
        assert status["Seccomp"] == "2"
        assert status["NoNewPrivs"] == "1"
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[cap], 16) == 0, (cap, status[cap])
        expected_uid = sandbox.ROOT_DRIVER_UID if who == "root" else _uid(who)
        assert status["Uid"].split() == [str(expected_uid)] * 4
        for ns in ("user", "mnt", "pid", "net", "ipc", "uts"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"Max address space\s+536870912\s+536870912", limits)
        assert re.search(r"Max open files\s+64\s+64", limits)
        # stderr is a regular file here: it may grow by LOG_FILE_BUDGET, nothing more
        fsize = int(re.search(r"Max file size\s+(\d+)", limits)[1])  # type: ignore[index]
        assert sandbox.LOG_FILE_BUDGET <= fsize < sandbox.LOG_FILE_BUDGET + 2**20
        assert re.search(r"Max core file size\s+0\s+0", limits)
        # an empty root; no host mount (and no copy of the FUSE mount) inside
        assert os.listdir(f"/proc/{pid}/root") == []
        mountinfo = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        assert len(mountinfo) == 1 and " / / ro," in mountinfo[0], mountinfo
        # the waiting parent is confined too
        parent = _status(driver.proc.pid)
        assert parent["Seccomp"] == "2" and parent["NoNewPrivs"] == "1"
        assert int(parent["CapEff"], 16) == 0 and int(parent["CapBnd"], 16) == 0
        assert len(os.listdir(f"/proc/{driver.proc.pid}/fd")) == 2  # stderr, liveness pipe
        if who == "root":
            # unmounting on the host ends serving: no copy of the mount is kept inside
            assert _libc.umount2(str(mountpoint).encode(), 0) == 0
            assert driver.proc.wait(10) == 0
            assert "served and closed" in driver.stderr()
        else:
            # SIGTERM to the parent reaches the driver (pid 1 inside); the parent dies of it
            driver.proc.send_signal(signal.SIGTERM)
            assert driver.proc.wait(10) == -signal.SIGTERM
        assert not Path(f"/proc/{pid}").exists() or _status(pid)["State"].startswith("Z")


def test_sigkill_of_the_parent_kills_the_driver(tmp_path: Path) -> None:
    who = "root" if IS_ROOT else "user"
    driver = start_driver(who, tmp_path)
    try:
        driver.control.settimeout(20)
        assert json.loads(driver.control.recv(4096))["ok"]
        pid = driver.inner_pid()
        driver.proc.kill()
        driver.proc.wait(10)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not Path(f"/proc/{pid}").exists()
    finally:
        driver.close()


# --- in-process pieces (no confinement happens here) --------------------------------------


def test_confine_refuses_a_closed_fd() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    with pytest.raises(sandbox.SandboxError, match=f"fd {fd}"):
        sandbox.confine({0, 1, 2, fd}, sandbox.SandboxLimits())


def test_syscall_names() -> None:
    assert sandbox.syscall_name(0) == "read"
    assert sandbox.syscall_name(257) == "openat"
    assert sandbox.syscall_name(59) == "execve"
    assert sandbox.syscall_name(435) == "clone3"
    assert sandbox.syscall_name(99999).startswith("syscall_")
    assert sandbox.syscall_name(0x40000000 | 39) == "x32:getpid"


def test_parse_audit_record() -> None:
    line = (
        b"6,1234,5678,-;audit: type=1326 audit(1795469390.138:2): auid=4294967295 "
        b'uid=65534 gid=65534 ses=4294967295 pid=5185 comm="python" exe="/usr/bin/python3" '
        b"sig=31 arch=c000003e syscall=51 compat=0 ip=0x7fefd9b28887 code=0x80000000"
    )
    (kill,) = seccomp.parse_audit([line, b"6,1,2,-;unrelated"])
    assert (kill.pid, kill.signal, kill.syscall, kill.syscall_name) == (5185, 31, 51, "getsockname")


def test_a_precompiled_filter_loads_and_acts_as_built() -> None:
    allowed = [seccomp.Rule(name, seccomp.ACT_ALLOW) for name in ("exit_group", "getpid")]
    program = seccomp.compile_program(allowed, default=seccomp.act_errno(errno.EACCES))
    assert len(program) % 8 == 0
    pid = os.fork()
    if pid == 0:  # the child: filtered, it may get its pid but not its working directory
        code = 3
        try:
            sandbox._prctl(sandbox.PR_SET_NO_NEW_PRIVS, 1, what="no_new_privs")
            seccomp.load_program(program)
            os.getpid()
            os.getcwd()
        except PermissionError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_filter_compiles_and_kills_by_default() -> None:
    with seccomp.Filter() as flt:
        flt.add_all(seccomp.driver_rules(1))
        read, write = os.pipe()
        try:
            flt.export_pfc(write)
            os.close(write)
            text = b""
            while chunk := os.read(read, 65536):
                text += chunk
        finally:
            os.close(read)
    pfc = text.decode()
    assert pfc.rstrip().endswith(
        "# default action\n  action KILL_PROCESS;\n# invalid architecture action\n"
        "action KILL_PROCESS;\n#\n# pseudo filter code end\n#"
    )
    assert 'syscall "execve"' not in pfc
