"""Whether a standalone driver reads the big file more slowly than a template-forked one.

    sudo .venv/bin/python benchmarks/standalone_gap.py [--format ext4] [--runs 6]
                                                       [--churn imports|memory|files|cpu]

In the full runs of bench.py with this VM's free page reporting on, the standalone
driver's sequential read was slower than the template-forked driver's (ext4 307 against
530 MB/s at 0c9da6b), with the same driver code: memory its start freed was handed back
to the host before the read filled the page cache with it. With the reporting paused
for the run (bench.host_backed_memory, as here now) the gap went (747 against 754 MB/s
at 4e5a514; RESULTS.md, 2026-12-03 night). This script times only that read, as
bench.py does (an untimed stat walk on a mount of its own first, then drop the page
cache, mount, start 1 s after the drop, read the 512 MiB file 1 MiB at a time), for
three variants in alternating order:

- ``standalone``: ``pyfsmount IMAGE DIR``, a fresh launcher and driver;
- ``template``: a driver forked from a resident template;
- ``template+churn``: the same, but a throwaway process does part of what a standalone
  mount does (``--churn``) between the mount and the read:
  ``imports`` starts an interpreter that imports everything a driver imports (cold, as
  the cache was just dropped); ``memory`` touches 128 MiB and frees it; ``files`` reads
  the driver's 29 MiB of module files; ``cpu`` spins for 0.5 s.

If ``template+churn`` reads like ``standalone``, the churn is (part of) the reason.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
from pathlib import Path

from bench import (
    FORMATS,
    FULL,
    PYTHON,
    Mounter,
    Pyfsmount,
    PyfsmountTemplate,
    alternating,
    cold_mount,
    image_of,
    print_medians,
    read_file,
    stat_walk,
    timed,
)

CHURNS = {
    "imports": "import fusefs.driver\nfrom fusefs import sandbox\nsandbox.preload()\n",
    "memory": "b = bytearray(128 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n",
    "files": "import sys\nfor name in sys.argv[1:]: open(name, 'rb').read()\n",
    "cpu": "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.5: pass\n",
}


#: What the driver imports: the files the ``files`` churn reads.
DRIVER_FILES = (
    "import sys, fusefs.driver\nfrom fusefs import sandbox\nsandbox.preload()\n"
    "for m in list(sys.modules.values()):\n"
    "    name = getattr(m, '__cached__', None) or getattr(m, '__file__', None)\n"
    "    if name: print(name)\n"
)


def churn_command(churn: str) -> list[str]:
    arguments: list[str] = []
    if churn == "files":
        listing = subprocess.run(
            [PYTHON, "-c", DRIVER_FILES], check=True, capture_output=True, text=True
        )
        arguments = sorted(set(listing.stdout.split()))
    return [PYTHON, "-c", CHURNS[churn], *arguments]


def timed_read(mounter: Mounter, image: Path, target: Path, churn: list[str] | None) -> float:
    """MB/s of a cold read of the big file, after an untimed walk (bench.py's order);
    ``churn`` runs between that read's mount and its start."""
    with cold_mount(mounter, image, target):
        stat_walk(target)
    meanwhile = functools.partial(subprocess.run, churn, check=True) if churn else None
    with cold_mount(mounter, image, target, meanwhile):
        seconds = timed(lambda: read_file(target / "big"))
    return FULL.big_file / 1e6 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", default="ext4", choices=[f.name for f in FORMATS])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--churn", default="imports", choices=sorted(CHURNS))
    args = parser.parse_args()
    image = image_of(next(f for f in FORMATS if f.name == args.format), FULL)
    template = PyfsmountTemplate()
    template.prepare()
    variants: dict[str, tuple[Mounter, list[str] | None]] = {
        "standalone": (Pyfsmount(), None),
        "template": (template, None),
        "template+churn": (template, churn_command(args.churn)),
    }

    def take(name: str, target: Path) -> float:
        mounter, churn = variants[name]
        return timed_read(mounter, image, target, churn)

    print_medians(alternating(list(variants), args.runs, "gap-", take), "MB/s", ".0f")


if __name__ == "__main__":
    main()
