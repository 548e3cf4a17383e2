"""The broker's costs: mount latency through it, and 100 mounts held at once.

    sudo .venv/bin/python benchmarks/broker_bench.py [--mounts 100] [--latency-runs 20]

Latency is request to usable mount: from the caller's Mount call (the image and the
directory sent as fds) to the first stat under the mount answered, for the sample ext4
and squashfs images, cold (page cache dropped before each). Beside it, in the same run,
the same image mounted by the kernel (loop) and by the C FUSE driver (fuse2fs,
squashfuse), mount to first stat. Then N mounts at once through the broker: the time to
set them up, the memory they hold (PSS, so that pages shared with the template are
counted once, summed over every driver process, the template and the broker), and the
time to unmount them all and see every driver gone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import drop_caches

from fusefs.broker.client import BrokerClient

PROJECT = Path(__file__).resolve().parent.parent
IMAGES = {
    "ext4": PROJECT / "images" / "sample-ext4.img",
    "squashfs": PROJECT / "images" / "sample-squashfs.img",
}
C_DRIVERS = {"ext4": ["fuse2fs", "-o", "ro"], "squashfs": ["squashfuse"]}


def pids_with(needle: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    sock = work / "broker.sock"
    policy = work / "policy.toml"  # the default allows 16 mounts per user
    policy.write_text("[limits]\nmounts_per_user = 10000\nmounts_total = 10000\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "fusefs.broker", "--socket", str(sock), "--policy", str(policy)],
        cwd=PROJECT,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(500):
        if sock.exists():
            try:
                BrokerClient(str(sock)).close()
                return process, sock
            except OSError:
                pass
        time.sleep(0.02)
    raise SystemExit("the broker did not start")


def broker_latency(sock: Path, fs: str, target: Path, runs: int) -> list[float]:
    times = []
    with BrokerClient(str(sock)) as broker:
        for _ in range(runs):
            drop_caches()
            with open(IMAGES[fs], "rb") as image:
                start = time.perf_counter()
                mounted = broker.mount(image.fileno(), directory=str(target))
                os.stat(target / "README.txt")
                times.append((time.perf_counter() - start) * 1000)
            broker.unmount(mounted.id)
    return times


def command_latency(command: list[str], target: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        drop_caches()
        start = time.perf_counter()
        subprocess.run([*command, str(target)], check=True, capture_output=True)
        os.stat(target / "README.txt")
        times.append((time.perf_counter() - start) * 1000)
        subprocess.run(["umount", str(target)], check=True)
    return times


def held_mounts(sock: Path, work: Path, count: int) -> dict[str, float]:
    targets = [work / f"m{i}" for i in range(count)]
    for target in targets:
        target.mkdir()
    ids = []
    with BrokerClient(str(sock)) as broker:
        start = time.perf_counter()
        for i, target in enumerate(targets):
            fs = "ext4" if i % 2 == 0 else "squashfs"
            with open(IMAGES[fs], "rb") as image:
                ids.append(broker.mount(image.fileno(), directory=str(target)).id)
            os.stat(target / "README.txt")
        setup = time.perf_counter() - start
        drivers = pids_with(b"fusefs.template")
        memory = pss_mib(drivers + pids_with(b"fusefs.broker"))
        start = time.perf_counter()
        for mount_id in ids:
            broker.unmount(mount_id)
        while len(pids_with(b"fusefs.template")) > 1:
            time.sleep(0.01)
        teardown = time.perf_counter() - start
    return {
        "mounts": count,
        "set up s": setup,
        "processes": len(drivers),
        "total PSS MiB": memory,
        "PSS MiB per mount": memory / count,
        "tear down s": teardown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mounts", type=int, default=100)
    parser.add_argument("--latency-runs", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("broker_bench.py needs root (the broker, loop mounts, drop_caches)")
    work = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    process, sock = start_broker(work)
    target = work / "target"
    target.mkdir()
    try:
        print("Mount to first stat, ms (median, min-max over runs):\n")
        print("| image | pyfsmount broker | kernel (loop) | C FUSE driver |")
        print("|---|---|---|---|")
        for fs in IMAGES:
            rows = [
                broker_latency(sock, fs, target, args.latency_runs),
                command_latency(
                    ["mount", "-o", "loop,ro", str(IMAGES[fs])], target, args.latency_runs
                ),
            ]
            if shutil.which(C_DRIVERS[fs][0]):
                rows.append(
                    command_latency([*C_DRIVERS[fs], str(IMAGES[fs])], target, args.latency_runs)
                )
            cells = [f"{statistics.median(r):.1f} ({min(r):.1f}-{max(r):.1f})" for r in rows]
            print(f"| {fs} ({C_DRIVERS[fs][0]}) | " + " | ".join(cells) + " |")
        print()
        held = held_mounts(sock, work, args.mounts)
        print(f"{args.mounts} mounts held at once through the broker (ext4, squashfs):\n")
        print("| " + " | ".join(held) + " |")
        print("|---" * len(held) + "|")
        print("| " + " | ".join(f"{v:.3g}" for v in held.values()) + " |")
    finally:
        process.terminate()
        process.wait()
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        for child in work.iterdir():
            if child.is_dir():
                subprocess.run(["umount", "-l", str(child)], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
