"""Two revisions of pyfsmount side by side, in alternating order (issue 7).

    sudo .venv/bin/python benchmarks/ab.py OLD [NEW] [--probe seq|walk|small|random|mount]
                                          [--format ext4] [--runs 6]

OLD and NEW are git revisions (NEW defaults to the working tree). Each is exported
into ``benchmarks/work/ab-*`` and mounted standalone, as ``pyfsmount IMAGE DIR`` would,
with that copy's code in both the launcher and the driver. Every run mounts afresh after
dropping the page cache and times one probe on the benchmark image of the format
(bench.py builds it if missing):

- ``seq``: the 512 MiB file read 1 MiB at a time, MB/s;
- ``walk``: bench.py's stat walk, s;
- ``small``: every small file read, s;
- ``random``: bench.py's random 4 KiB reads of the 512 MiB file, reads per second;
- ``mount``: mount to the first stat, ms.

``--after PROBE`` runs PROBE, untimed, before each timed probe: the full benchmark runs
the small files before the random reads, and this VM's memory is not the same after it.

Why the order alternates (ABBA): on this VM the run just after another mount's page
cache was dropped is faster than the one after it. An A/B that always ran A first
showed a 30% "gain" that was only the order (benchmarks/RESULTS.md, 2026-12-03).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench import (
    FORMATS,
    FULL,
    PROBES,
    PROJECT,
    WORK,
    Mounter,
    Pyfsmount,
    alternating,
    cold_mount,
    image_of,
    mount_time,
    print_medians,
)


def export(revision: str | None) -> Path:
    """The project's code at ``revision`` (None: the working tree), in a directory."""
    name = "worktree" if revision is None else revision.replace("/", "_")
    target = WORK / f"ab-{name}"
    subprocess.run(["rm", "-rf", str(target)], check=True)
    target.mkdir(parents=True)
    if revision is None:
        for package in ("drivers", "fusefs"):
            subprocess.run(["cp", "-r", str(PROJECT / package), str(target)], check=True)
    else:
        archive = subprocess.run(
            ["git", "-C", str(PROJECT), "archive", revision, "drivers", "fusefs"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


#: ``--probe`` and ``--after`` names of bench.py's cold probes.
PROBE_COLUMNS = {
    "seq": "seq read MB/s",
    "walk": "stat walk s",
    "small": "small files s",
    "random": "random 4K ops/s",
}


def measure(probe: str, mounter: Mounter, image: Path, target: Path) -> float:
    """One cold ``probe`` (or the mount time) on a fresh mount, as bench.py takes it."""
    if probe == "mount":
        return mount_time(mounter, image, target)
    with cold_mount(mounter, image, target):
        return PROBES[PROBE_COLUMNS[probe]](target, FULL)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("old", help="git revision")
    parser.add_argument("new", nargs="?", help="git revision (default: the working tree)")
    parser.add_argument("--probe", choices=(*PROBE_COLUMNS, "mount"), default="seq")
    parser.add_argument("--format", default="ext4", choices=[f.name for f in FORMATS])
    parser.add_argument("--runs", type=int, default=6, help="runs of each (default 6)")
    parser.add_argument(
        "--after",
        choices=tuple(PROBE_COLUMNS),
        help="before each timed probe, run this one untimed on a mount of its own, as "
        "bench.py's order does (what the one before left in memory matters on this VM)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("ab.py needs root (mounts, drop_caches)")
    image = image_of(next(f for f in FORMATS if f.name == args.format), FULL)
    variants = {
        args.old: Pyfsmount(code=export(args.old)),
        args.new or "worktree": Pyfsmount(code=export(args.new)),
    }

    def take(name: str, target: Path) -> float:
        if args.after:
            measure(args.after, variants[name], image, target)
        return measure(args.probe, variants[name], image, target)

    results = alternating(list(variants), args.runs, "ab-", take)
    units = {"seq": "MB/s", "walk": "s", "small": "s", "random": "reads/s", "mount": "ms"}
    print_medians(results, units[args.probe], ".3g")


if __name__ == "__main__":
    main()
