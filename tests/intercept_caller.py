"""Run under pyfsmount-intercept by the tests: one mount, then a look at what it made.

    python -m tests.intercept_caller OUT TARGET COMMAND...

Runs COMMAND (a mount(8) line, or ``direct SOURCE FSTYPE`` for a mount(2) call made with
ctypes), then writes to OUT (a pickle): its exit status and stderr, the errno of a direct
call, TARGET's line of /proc/self/mountinfo, and a scan of TARGET if something is
mounted there. All of this happens inside the intercepted namespaces.
"""

from __future__ import annotations

import ctypes
import pickle
import subprocess
import sys
from typing import Any

from tests.support.scan import scan_path

MS_RDONLY = 1


def main() -> None:
    out, target, *command = sys.argv[1:]
    result: dict[str, Any] = {}
    if command[0] == "direct":
        libc = ctypes.CDLL(None, use_errno=True)
        source, fs_type = command[1], command[2]
        rc = libc.mount(source.encode(), target.encode(), fs_type.encode(), MS_RDONLY, None)
        result["returncode"] = rc
        result["errno"] = ctypes.get_errno() if rc else 0
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
