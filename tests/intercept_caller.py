"""Run under pyfsmount-intercept by the tests: one mount, then a look at what it made.

    python -m tests.intercept_caller OUT TARGET COMMAND...

Runs COMMAND, then writes to OUT (a pickle): its exit status and stderr, the errno of a
direct call, TARGET's line of /proc/self/mountinfo, and a scan of TARGET if something is
mounted there. All of this happens inside the intercepted namespaces. COMMAND is

- a mount(8) line;
- ``direct SOURCE FSTYPE [DATA]``: one mount(2) call made with ctypes;
- ``newapi SOURCE FSTYPE [KEY=VALUE|FLAG]...``: fsopen, fsconfig (source, then each
  option), FSCONFIG_CMD_CREATE, fsmount and move_mount to TARGET, made with ctypes;
  ``step`` names the call that failed;
- ``newapi-unmounted SOURCE FSTYPE``: the same up to FSCONFIG_CMD_CREATE, then the
  context is closed without a mount (and the caller lingers a second);
- ``newapi-read SOURCE FSTYPE``: fsopen, then a read() of the context fd (``read``: the
  byte count, or the negated errno);
- ``race READABLE SECRET FSTYPE N``: N mount(2) calls of a symlink that a thread keeps
  swapping between two images; ``outcomes`` lists, per call, the errno or the names at
  the root of what was mounted (unmounted again at once);
- ``escalate SOURCE FSTYPE``: one mount(2), then tests.support.escalation's attempt;
- ``killed SOURCE FSTYPE``: children that call mount(2) and are killed mid-call (after
  0 to 40 ms), then one more mount(2) of SOURCE, whose result is reported.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from tests.support.escalation import try_escalation
from tests.support.scan import scan_path

MS_RDONLY = 1
SYS_MOVE_MOUNT, SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 429, 430, 431, 432
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
MOUNT_ATTR_RDONLY = 1
AT_FDCWD, MOVE_MOUNT_F_EMPTY_PATH = -100, 0x4

libc = ctypes.CDLL(None, use_errno=True)


def syscall(number: int, *args: object) -> int:
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result: int = libc.syscall(ctypes.c_long(number), *converted)
    return result


def new_mount_api(
    target: str, source: str, fs_type: str, options: list[str], attach: bool
) -> tuple[str | None, int]:
    """The new-mount-API sequence; (failed step or None, errno)."""
    if fs_type == "NULL":  # libmount's probe: is the new API there?
        return "fsopen", ctypes.get_errno() if syscall(SYS_FSOPEN, None, FSOPEN_CLOEXEC) else 0
    fs_fd = syscall(SYS_FSOPEN, fs_type.encode(), FSOPEN_CLOEXEC)
    if fs_fd < 0:
        return "fsopen", ctypes.get_errno()
    settings = [("source", source)] + [
        tuple(o.split("=", 1)) if "=" in o else (o, None) for o in options
    ]
    for key, value in settings:
        if value is None:
            rc = syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_SET_FLAG, key.encode(), None, 0)
        else:
            rc = syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
        if rc < 0:
            return f"fsconfig {key}", ctypes.get_errno()
    if syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_CMD_CREATE, None, None, 0) < 0:
        return "fsconfig create", ctypes.get_errno()
    if not attach:
        os.close(fs_fd)
        return None, 0
    mount_fd = syscall(SYS_FSMOUNT, fs_fd, FSMOUNT_CLOEXEC, MOUNT_ATTR_RDONLY)
    os.close(fs_fd)
    if mount_fd < 0:
        return "fsmount", ctypes.get_errno()
    rc = syscall(SYS_MOVE_MOUNT, mount_fd, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH)
    os.close(mount_fd)
    return (None, 0) if rc == 0 else ("move_mount", ctypes.get_errno())


def mount2(source: str, target: str, fs_type: str, data: str = "") -> int:
    """mount(2), read-only: 0 or the errno."""
    rc = libc.mount(source.encode(), target.encode(), fs_type.encode(), MS_RDONLY, data.encode())
    return ctypes.get_errno() if rc else 0


def race(target: str, readable: str, secret: str, fs_type: str, calls: int) -> list[object]:
    """Mount a symlink that is swapped between two images all the while."""
    link = os.path.join(os.path.dirname(readable), "image-link")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for image in (readable, secret):
                os.symlink(image, link + ".new")
                os.replace(link + ".new", link)

    os.symlink(readable, link)
    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes: list[object] = []
    try:
        for _ in range(calls):
            error = mount2(link, target, fs_type)
            if error:
                outcomes.append(error)
            else:
                outcomes.append(sorted(os.listdir(target)))
                libc.umount2(target.encode(), 0)
    finally:
        stop.set()
        swapper.join()
    return outcomes


def killed(target: str, source: str, fs_type: str) -> int:
    """Callers killed mid-mount(2); then the result of one that is not."""
    for delay in (0, 0.002, 0.005, 0.01, 0.02, 0.04):
        child = os.fork()
        if child == 0:
            os._exit(mount2(source, target, fs_type))
        time.sleep(delay)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    while libc.umount2(target.encode(), 0) == 0:  # the calls that completed in time
        pass
    return mount2(source, target, fs_type)


def main() -> None:
    out, target, *command = sys.argv[1:]
    result: dict[str, Any] = {}
    if command[0] == "direct":
        source, fs_type, *data = command[1:]
        result["errno"] = mount2(source, target, fs_type, ",".join(data))
        result["returncode"] = -1 if result["errno"] else 0
    elif command[0] in ("newapi", "newapi-unmounted"):
        source, fs_type, *options = command[1:]
        attach = command[0] == "newapi"
        result["step"], result["errno"] = new_mount_api(target, source, fs_type, options, attach)
        if not attach:
            time.sleep(1)
    elif command[0] == "newapi-read":  # what libmount's message loop reads from the fd
        fs_fd = syscall(SYS_FSOPEN, command[2].encode(), FSOPEN_CLOEXEC)
        try:
            result["read"] = len(os.read(fs_fd, 4096))
        except OSError as exc:
            result["read"] = -(exc.errno or 0)
        os.close(fs_fd)
    elif command[0] == "race":
        readable, secret, fs_type, calls = command[1:]
        result["outcomes"] = race(target, readable, secret, fs_type, int(calls))
    elif command[0] == "escalate":
        result["errno"] = mount2(command[1], target, command[2])
        result["escalation"] = try_escalation(target)
    elif command[0] == "killed":
        result["errno"] = killed(target, command[1], command[2])
    else:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        result["returncode"], result["stderr"] = done.returncode, done.stderr
    with open("/proc/self/mountinfo") as f:
        lines = [line.split() for line in f]
    mine = [line for line in lines if line[4] == target]
    result["mountinfo"] = mine[-1] if mine else None
    if mine:
        result["scan"] = scan_path(target)
    with open(out, "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main()
