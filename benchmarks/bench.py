"""Side-by-side benchmark: pyfsmount against the kernel and the C FUSE drivers, in one run.

    sudo .venv/bin/python benchmarks/bench.py            # full: 20k files + a 512 MiB file
    sudo .venv/bin/python benchmarks/bench.py --quick    # small tree, a 64 MiB file, 1 run

For each mounter of the image (kernel loop mount, fuse2fs, pyfsmount) and each run, the
image is mounted afresh and the page cache dropped, so every figure is cold. Reported:
mount-to-first-stat, a ``find -printf`` stat walk, a sequential read of the big file,
reading every small file, random 4 KiB reads of the big file, and the daemon's peak RSS.
Medians over the runs, then each mounter's ratio to the kernel and to fuse2fs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
WORK = HERE / "work"
PYTHON = sys.executable


@dataclass(frozen=True)
class Scale:
    files: int
    dirs: int
    max_file: int
    big_file: int
    runs: int
    random_reads: int


FULL = Scale(files=20_000, dirs=200, max_file=16 * 1024, big_file=512 << 20, runs=3,
             random_reads=4000)
QUICK = Scale(files=2_000, dirs=40, max_file=16 * 1024, big_file=64 << 20, runs=1,
              random_reads=1000)


def build_tree(root: Path, scale: Scale) -> None:
    rng = random.Random(1234)
    for d in range(scale.dirs):
        (root / f"d{d:03d}").mkdir(parents=True)
    for i in range(scale.files):
        size = rng.randint(0, scale.max_file)
        (root / f"d{i % scale.dirs:03d}" / f"f{i:05d}").write_bytes(rng.randbytes(size))
    with (root / "big").open("wb") as big:
        chunk = rng.randbytes(1 << 20)
        for _ in range(scale.big_file >> 20):
            big.write(chunk)


def ext4_image(scale: Scale) -> Path:
    name = "quick" if scale is QUICK else "full"
    image = WORK / f"ext4-{name}.img"
    if image.exists():
        return image
    WORK.mkdir(exist_ok=True)
    src = Path(tempfile.mkdtemp(dir=WORK))
    try:
        build_tree(src, scale)
        size_mib = (scale.big_file >> 20) + scale.files * scale.max_file // 2 // (1 << 20) + 200
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-d", str(src), str(image), f"{size_mib}M"], check=True
        )
    finally:
        shutil.rmtree(src)
    return image


class Mounter:
    """One way to mount the image: ``mount`` returns once the tree can be used."""

    name = ""

    def mount(self, image: Path, target: Path) -> None:
        raise NotImplementedError

    def unmount(self, target: Path) -> None:
        subprocess.run(["umount", str(target)], check=True)

    def daemon_pids(self, target: Path) -> list[int]:
        return []


class Kernel(Mounter):
    name = "kernel"

    def mount(self, image: Path, target: Path) -> None:
        subprocess.run(["mount", "-o", "loop,ro", str(image), str(target)], check=True)


class Fuse2fs(Mounter):
    name = "fuse2fs"

    def mount(self, image: Path, target: Path) -> None:
        subprocess.run(["fuse2fs", "-o", "ro", str(image), str(target)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def daemon_pids(self, target: Path) -> list[int]:
        return pids_with(b"fuse2fs", os.fsencode(target))


class Pyfsmount(Mounter):
    def __init__(self, *options: str) -> None:
        self.options = list(options)
        self.name = "pyfsmount" + (f" -o {','.join(options)}" if options else "")

    def mount(self, image: Path, target: Path) -> None:
        args = ["-o", ",".join(self.options)] if self.options else []
        subprocess.run([PYTHON, "-m", "fusefs", *args, str(image), str(target)], check=True,
                       cwd=PROJECT, stderr=subprocess.DEVNULL)

    def daemon_pids(self, target: Path) -> list[int]:
        supervisors = pids_with(b"fusefs", os.fsencode(target))
        drivers = pids_with(b"fusefs.driver")
        return supervisors + drivers


def pids_with(*needles: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if all(n in cmdline for n in needles):
                found.append(int(entry))
    return found


def peak_rss_mib(pids: list[int]) -> float:
    """The largest VmHWM among the daemon's processes (the driver, for pyfsmount)."""
    peaks = []
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return max(peaks, default=float("nan"))


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def stat_walk(root: Path) -> None:
    subprocess.run(["find", str(root), "-printf", "%s %m %u\n"], check=True,
                   stdout=subprocess.DEVNULL)


def read_file(path: Path, chunk: int = 1 << 20) -> int:
    total = 0
    with path.open("rb", buffering=0) as f:
        while data := f.read(chunk):
            total += len(data)
    return total


def read_small_files(root: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name != "big":
                total += read_file(Path(dirpath) / name)
    return total


def random_reads(path: Path, count: int) -> None:
    rng = random.Random(99)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(count):
            os.pread(fd, 4096, rng.randrange(0, size - 4096) & ~4095)
    finally:
        os.close(fd)


def measure(mounter: Mounter, image: Path, scale: Scale) -> dict[str, float]:
    """One cold run of every measurement, each on a fresh mount."""
    results: dict[str, float] = {}
    target = Path(tempfile.mkdtemp(prefix="bench-", dir=WORK))
    big = target / "big"
    probes: list[tuple[str, Callable[[], float]]] = [
        ("stat walk s", lambda: timed(lambda: stat_walk(target))),
        ("seq read MB/s", lambda: scale.big_file / 1e6 / timed(lambda: read_file(big))),
        ("small files s", lambda: timed(lambda: read_small_files(target))),
        ("random 4K ops/s",
         lambda: scale.random_reads / timed(lambda: random_reads(big, scale.random_reads))),
    ]
    try:
        drop_caches()
        start = time.perf_counter()
        mounter.mount(image, target)
        (target / "d000").stat()
        results["mount+stat ms"] = (time.perf_counter() - start) * 1000
        mounter.unmount(target)
        for label, probe in probes:
            drop_caches()
            mounter.mount(image, target)
            try:
                results[label] = probe()
                if mounter.daemon_pids(target):
                    results["peak RSS MiB"] = max(
                        results.get("peak RSS MiB", 0.0), peak_rss_mib(mounter.daemon_pids(target))
                    )
            finally:
                mounter.unmount(target)
                wait_unmounted(target)
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        target.rmdir()
    return results


def wait_unmounted(target: Path) -> None:
    for _ in range(500):
        if os.path.realpath(target) not in Path("/proc/self/mounts").read_text():
            return
        time.sleep(0.01)


LOWER_IS_BETTER = {"mount+stat ms", "stat walk s", "small files s", "peak RSS MiB"}


def report(table: dict[str, dict[str, float]], scale: Scale) -> str:
    metrics = list(next(iter(table.values())).keys() | {"peak RSS MiB"})
    order = ["mount+stat ms", "stat walk s", "seq read MB/s", "small files s",
             "random 4K ops/s", "peak RSS MiB"]
    metrics = [m for m in order if m in metrics]
    lines = [f"| mounter | {' | '.join(metrics)} |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in table.items():
        cells = [f"{row[m]:.3g}" if m in row else "-" for m in metrics]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append("")
    lines.append("Ratios (pyfsmount / other; < 1 is better for times and RSS, > 1 for rates):")
    lines.append("")
    for name, row in table.items():
        if not name.startswith("pyfsmount"):
            continue
        for other in ("kernel", "fuse2fs"):
            if other not in table:
                continue
            ratios = []
            for m in metrics:
                if m in row and m in table[other] and table[other][m]:
                    ratios.append(f"{m} {row[m] / table[other][m]:.2f}x")
            lines.append(f"- {name} vs {other}: " + ", ".join(ratios))
    header = (f"{scale.files} files of 0-{scale.max_file // 1024} KiB in {scale.dirs} dirs + "
              f"one {scale.big_file >> 20} MiB file; medians of {scale.runs} cold run(s)")
    return header + "\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small image, one run")
    parser.add_argument("--runs", type=int, help="runs per mounter (median is reported)")
    parser.add_argument("--only", action="append", help="mounter names to run (repeatable)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.py needs root (loop mounts, drop_caches)")
    scale = QUICK if args.quick else FULL
    if args.runs:
        scale = Scale(**{**scale.__dict__, "runs": args.runs})
    image = ext4_image(scale)
    mounters: list[Mounter] = [Kernel(), Fuse2fs(), Pyfsmount(), Pyfsmount("sandbox=off")]
    if args.only:
        mounters = [m for m in mounters if m.name in args.only]
    table: dict[str, dict[str, float]] = {}
    for mounter in mounters:
        runs = [measure(mounter, image, scale) for _ in range(scale.runs)]
        table[mounter.name] = {k: statistics.median(r[k] for r in runs if k in r)
                               for k in runs[0]}
        print(f"{mounter.name}: {table[mounter.name]}", file=sys.stderr)
    print(report(table, scale))


if __name__ == "__main__":
    main()
