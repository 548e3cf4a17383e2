"""The interceptor's costs: a trapped mount, and everything else at full speed.

    sudo .venv/bin/python benchmarks/intercept_bench.py [--runs 20]

A caller in a private mount namespace times its own mount(2) calls (syscall to return)
and unmounts after each: the sample ext4 image redirected to pyfsmount through the
interceptor, against the kernel mounting the same image (a read-only loop device set up
beforehand); util-linux's ``mount -o loop`` of the same image (a process, its loop setup
and the mount), through the interceptor (loop device emulated) and without it; a tmpfs
passed through to the kernel by the interceptor, against the same tmpfs with no
interceptor. Then the same caller times 300,000 unrelated system calls (getppid, stat,
and an ioctl that is not a loop device's) with and without the interceptor's filter: the
filter traps only the mount family and the loop driver's ioctls, so these should cost
the same.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
SAMPLE = PROJECT / "images" / "sample-ext4.img"

CALLER = r"""
import ctypes, fcntl, json, os, subprocess, sys, termios, time
libc = ctypes.CDLL(None, use_errno=True)
source, fs_type, runs, target, how = sys.argv[1:6]
times = []
for _ in range(int(runs)):
    start = time.perf_counter()
    if how == "mount8":
        command = ["mount", "-t", fs_type, "-o", "loop,ro", source, target]
        subprocess.run(command, check=True)
    elif libc.mount(source.encode(), target.encode(), fs_type.encode(), 1, None) != 0:
        raise SystemExit(f"mount: {os.strerror(ctypes.get_errno())}")
    times.append((time.perf_counter() - start) * 1000)
    os.stat(target)
    if libc.umount2(target.encode(), 0) != 0:
        raise SystemExit(f"umount: {os.strerror(ctypes.get_errno())}")
    time.sleep(0.05)  # the driver's exit (and an autoclear loop device's)
reader, writer = os.pipe()
count = bytearray(4)
start = time.perf_counter()
for _ in range(100_000):
    os.getppid()
    os.stat("/")
    fcntl.ioctl(reader, termios.FIONREAD, count)  # an ioctl, but not a loop device's
loop = time.perf_counter() - start
print(json.dumps({"mount_ms": times, "loop_s": loop}))
"""


def run_caller(
    source: str, fs_type: str, runs: int, intercept: list[str], how: str = "direct"
) -> dict[str, object]:
    target = tempfile.mkdtemp(prefix="intercept-bench-")
    command = ["unshare", "--mount", "--propagation", "private", *intercept]
    command += [sys.executable, "-c", CALLER, source, fs_type, str(runs), target, how]
    try:
        done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=True)
    finally:
        os.rmdir(target)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("intercept_bench.py needs root (namespaces, loop devices)")
    intercept = [sys.executable, "-m", "fusefs.intercept", "--allow", "tmpfs", "--"]
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(SAMPLE)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        rows = {
            "ext4 image, redirected to pyfsmount": run_caller(
                str(SAMPLE), "ext4", args.runs, intercept
            ),
            "ext4 image, kernel (loop device)": run_caller(loop, "ext4", args.runs, []),
            "mount(8) -o loop, redirected (emulated loop device)": run_caller(
                str(SAMPLE), "ext4", args.runs, intercept, "mount8"
            ),
            "mount(8) -o loop, kernel": run_caller(str(SAMPLE), "ext4", args.runs, [], "mount8"),
            "tmpfs, through the interceptor": run_caller("none", "tmpfs", args.runs, intercept),
            "tmpfs, no interceptor": run_caller("none", "tmpfs", args.runs, []),
        }
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    print("| mount | call to return, ms: median (min-max) | 300,000 other syscalls, s |")
    print("|---|---|---|")
    for name, row in rows.items():
        times = row["mount_ms"]
        assert isinstance(times, list)
        median = statistics.median(times)
        print(
            f"| {name} | {median:.2f} ({min(times):.2f}-{max(times):.2f}) | {row['loop_s']:.3f} |"
        )


if __name__ == "__main__":
    main()
