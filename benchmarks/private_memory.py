"""Where a template-forked driver's private memory goes, probe by probe (issue 7).

    sudo .venv/bin/python benchmarks/private_memory.py [--quick]

For each of the benchmark's probes (bench.py: the stat walk, the sequential read, every
small file, random 4 KiB reads), the image (ext4 unless --format says) is mounted afresh
through a driver template, as the broker mounts it. Then the private memory
(Private_Clean + Private_Dirty) of the driver's processes is printed, idle and after the
probe: the sandbox's waiter (0 where the template made the driver pid 1 of a pid
namespace of its own: it then has none) and the serving process, and the serving
process's growth split by mapping (anonymous, heap, the rest).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import (
    FORMATS,
    FULL,
    QUICK,
    PyfsmountTemplate,
    Scale,
    drop_caches,
    image_of,
    random_reads,
    read_file,
    read_small_files,
    stat_walk,
)

MiB = 1024.0
#: How long a mount rests after a probe before "at rest" is measured: longer than the
#: driver's idle period, after which it returns freed memory (fusefs/heaptrim.py).
RESTED_S = 2.0


def private_by_mapping(pid: int) -> collections.Counter[str]:
    """Private KiB per mapping kind: [anon], [heap], or the file mapped."""
    kinds: collections.Counter[str] = collections.Counter()
    kind = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            kind = (
                fields[5]
                if len(fields) > 5 and fields[5] == "[heap]"
                else ("[anon]" if len(fields) == 5 else "files and other")
            )
        elif fields[0] in ("Private_Clean:", "Private_Dirty:"):
            kinds[kind] += int(fields[1])
    return kinds


def probes(scale: Scale) -> dict[str, Callable[[Path], object]]:
    return {
        "stat walk": stat_walk,
        "sequential read": lambda root: read_file(root / "big"),
        "every small file": read_small_files,
        "random 4 KiB reads": lambda root: random_reads(root / "big", scale.random_reads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the small image")
    parser.add_argument(
        "--format", default="ext4", choices=[f.name for f in FORMATS], help="default: ext4"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("private_memory.py needs root (mounts, drop_caches)")
    scale = QUICK if args.quick else FULL
    image = image_of(next(f for f in FORMATS if f.name == args.format), scale)
    target = Path("/tmp/pyfsmount-private-memory")
    target.mkdir(exist_ok=True)
    mounter = PyfsmountTemplate()
    print(
        "| probe | waiter MiB | serving idle MiB | serving after MiB | at rest MiB "
        "| growth by mapping MiB |"
    )
    print("|---|---|---|---|---|---|")
    try:
        for name, probe in probes(scale).items():
            drop_caches()
            mounter.mount(image, target)
            try:
                # A driver forked as pid 1 of its own pid namespace serves alone; one that
                # made its namespace itself has a waiting parent (fusefs/sandbox.py).
                *waiters, serving = mounter.daemon_pids(target)
                idle = private_by_mapping(serving)
                probe(target)
                after = private_by_mapping(serving)
                time.sleep(RESTED_S)
                rested = private_by_mapping(serving)
                growth = ", ".join(
                    f"{kind} {(after[kind] - idle[kind]) / MiB:+.1f}" for kind in sorted(after)
                )
                print(
                    f"| {name} "
                    f"| {sum(sum(private_by_mapping(w).values()) for w in waiters) / MiB:.1f} "
                    f"| {sum(idle.values()) / MiB:.1f} | {sum(after.values()) / MiB:.1f} "
                    f"| {sum(rested.values()) / MiB:.1f} | {growth} |"
                )
            finally:
                mounter.unmount(target)
    finally:
        target.rmdir()


if __name__ == "__main__":
    main()
