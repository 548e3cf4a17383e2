"""Side-by-side benchmark: pyfsmount against the kernel and the C FUSE drivers, in one run.

    sudo .venv/bin/python benchmarks/bench.py            # full: 20k files + a 512 MiB file
    sudo .venv/bin/python benchmarks/bench.py --quick    # small tree, a 64 MiB file, 1 run
    sudo .venv/bin/python benchmarks/bench.py --format squashfs-zstd --only pyfsmount

One source tree is packed into an image per format (ext4 by mkfs.ext4, squashfs with
gzip and with zstd by mksquashfs). For each format, each of its mounters (the kernel's
loop mount, the C FUSE drivers: fuse2fs, squashfuse, squashfuse_ll; pyfsmount) and each
run, the image is mounted afresh and the page cache dropped, so every figure is cold
(but re-read, which is warm by design).
Reported: mount-to-first-stat, a ``find -printf`` stat walk, a sequential read of the
big file, a second read of it on the same mount (warm: the page cache, where the mount
keeps it), reading every small file, random 4 KiB reads of the big file, and the daemon's
peak RSS. Mounters take turns run by run (this VM's speed drifts over minutes); medians
over the runs, their ranges, then pyfsmount's ratio to each other mounter.

A full run also appends what it printed to ``benchmarks/RESULTS.md``, under a heading
with the date, the command, the commit and the machine (``--no-record`` does not);
a ``--quick`` run records only when asked (``--record``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import mmap
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fusefs.driver import PAGE_REPORTING_ORDER, page_orders
from fusefs.launch import Mount, make_mount
from fusefs.options import parse_options
from fusefs.template import Template

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
WORK = HERE / "work"
RESULTS = HERE / "RESULTS.md"
PYTHON = sys.executable


@dataclass(frozen=True)
class Scale:
    name: str  # names the images and tree built for it in WORK
    files: int
    dirs: int
    max_file: int
    big_file: int
    runs: int
    random_reads: int


FULL = Scale(
    name="full",
    files=20_000,
    dirs=200,
    max_file=16 * 1024,
    big_file=512 << 20,
    runs=3,
    random_reads=4000,
)
QUICK = Scale(
    name="quick",
    files=2_000,
    dirs=40,
    max_file=16 * 1024,
    big_file=64 << 20,
    runs=1,
    random_reads=1000,
)


def text_corpus(rng: random.Random, size: int) -> bytes:
    """Word-like text, compressible about as much as real files (gzip ~2.5x), not more."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(4000)]
    out = bytearray()
    while len(out) < size:
        out += " ".join(rng.choices(words, k=16)).encode() + b"\n"
    return bytes(out[:size])


def build_tree(root: Path, scale: Scale) -> None:
    rng = random.Random(1234)
    corpus = text_corpus(rng, 8 << 20)
    for d in range(scale.dirs):
        (root / f"d{d:03d}").mkdir(parents=True)
    for i in range(scale.files):
        size = rng.randint(0, scale.max_file)
        start = rng.randrange(0, len(corpus) - size)
        (root / f"d{i % scale.dirs:03d}" / f"f{i:05d}").write_bytes(corpus[start : start + size])
    with (root / "big").open("wb") as big:
        for _ in range(scale.big_file >> 20):
            start = rng.randrange(0, len(corpus) - (1 << 20))
            big.write(corpus[start : start + (1 << 20)])


def source_tree(scale: Scale) -> Path:
    """The generated tree every image of this scale is packed from (kept in WORK)."""
    tree = WORK / f"tree-{scale.name}"
    complete = tree.with_suffix(".complete")
    if not complete.exists():
        shutil.rmtree(tree, ignore_errors=True)
        build_tree(tree, scale)
        complete.touch()
    return tree


def make_ext4(src: Path, image: Path, scale: Scale) -> None:
    size_mib = (scale.big_file >> 20) + scale.files * scale.max_file // 2 // (1 << 20) + 200
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(src), str(image), f"{size_mib}M"], check=True
    )


def make_squashfs(*options: str) -> Callable[[Path, Path, Scale], None]:
    def make(src: Path, image: Path, scale: Scale) -> None:
        subprocess.run(
            ["mksquashfs", str(src), str(image), "-noappend", "-quiet", "-no-progress", *options],
            check=True,
        )

    return make


def make_fat32(src: Path, image: Path, scale: Scale) -> None:
    size_kib = ((scale.big_file >> 20) + scale.files * scale.max_file // 2 // (1 << 20) + 300) << 10
    subprocess.run(
        ["mkfs.fat", "-F", "32", "-C", str(image), str(size_kib)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    entries = sorted(str(p) for p in src.iterdir())
    subprocess.run(
        ["mcopy", "-s", "-m", "-i", str(image), *entries, "::/"],
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )


def image_of(fmt: Format, scale: Scale) -> Path:
    image = WORK / f"{fmt.name}-{scale.name}.img"
    if not image.exists():
        WORK.mkdir(exist_ok=True)
        partial = image.with_suffix(".partial")
        fmt.make(source_tree(scale), partial, scale)
        partial.rename(image)
    return image


class Mounter:
    """One way to mount the image: ``mount`` returns once the tree can be used."""

    name = ""

    def prepare(self) -> None:
        """What is up before a mount is asked for (a resident process), outside the timing."""

    def mount(self, image: Path, target: Path) -> None:
        raise NotImplementedError

    def unmount(self, target: Path) -> None:
        unmount(target)

    def daemon_pids(self, target: Path) -> list[int]:
        return []


class Kernel(Mounter):
    name = "kernel"

    def mount(self, image: Path, target: Path) -> None:
        subprocess.run(["mount", "-o", "loop,ro", str(image), str(target)], check=True)


@dataclass(frozen=True)
class Format:
    """One image format: how to make it, who mounts it, whom pyfsmount is compared with."""

    name: str
    make: Callable[[Path, Path, Scale], None]
    mounters: Callable[[], list[Mounter]]


def squashfs_mounters() -> list[Mounter]:
    return [
        Kernel(),
        Squashfuse("squashfuse"),
        Squashfuse("squashfuse_ll"),
        Pyfsmount(),
        PyfsmountTemplate(),
    ]


FORMATS = [
    Format(
        "ext4",
        make_ext4,
        lambda: [
            Kernel(),
            Fuse2fs(),
            Pyfsmount(),
            PyfsmountTemplate(),
            Pyfsmount("sandbox=off"),
        ],
    ),
    Format(
        "squashfs-gzip",
        make_squashfs("-comp", "gzip"),
        squashfs_mounters,
    ),
    Format(
        "squashfs-zstd",
        make_squashfs("-comp", "zstd"),
        squashfs_mounters,
    ),
    # No kernel vfat on this machine: fusefat, and mtools (no mount: see mtools_row).
    Format("fat32", make_fat32, lambda: [Fusefat(), Pyfsmount(), PyfsmountTemplate()]),
]


def mtools_row(image: Path, scale: Scale) -> dict[str, float]:
    """mtools reads the image without mounting: ``mdir -/`` walks it, ``mcopy`` reads."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    start_probe(drop_caches())
    walk = timed(
        lambda: subprocess.run(
            ["mdir", "-/", "-a", "-i", str(image), "::"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=env,
        )
    )
    start_probe(drop_caches())
    read = timed(
        lambda: subprocess.run(
            ["mcopy", "-n", "-i", str(image), "::/big", "-"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=env,
        )
    )
    return {"stat walk s": walk, "seq read MB/s": scale.big_file / 1e6 / read}


def machine_row(image: Path, scale: Scale) -> dict[str, float]:
    """The machine's own pace in this run, to read the others' figures against.

    The disk's ceilings, read from the image file with O_DIRECT (no mount, no page
    cache): random 4 KiB reads, and a sequential read of as many bytes as the big file
    has, 1 MiB at a time. And a fixed Python loop, which this VM runs 2x slower in some
    minutes than in others.
    """
    size = image.stat().st_size
    rng = random.Random(99)
    fd = os.open(image, os.O_RDONLY | os.O_DIRECT)
    small, large = mmap.mmap(-1, 4096), mmap.mmap(-1, 1 << 20)
    try:
        drop_caches()
        start = time.perf_counter()
        for _ in range(scale.random_reads):
            os.preadv(fd, [small], rng.randrange(0, size - 4096) & ~4095)
        disk = scale.random_reads / (time.perf_counter() - start)
        drop_caches()
        length = min(scale.big_file, size) & ~((1 << 20) - 1)
        start = time.perf_counter()
        for offset in range(0, length, 1 << 20):
            os.preadv(fd, [large], offset)
        sequential = length / 1e6 / (time.perf_counter() - start)
    finally:
        os.close(fd)
        small.close()
        large.close()
    return {
        "random 4K ops/s": disk,
        "seq read MB/s": sequential,
        "cpu loop s": timed(python_loop),
    }


def python_loop() -> int:
    """Ten million bytecode-level additions: the pace of Python code on this machine now."""
    total = 0
    for i in range(10_000_000):
        total += i
    return total


class Fuse2fs(Mounter):
    name = "fuse2fs"

    def mount(self, image: Path, target: Path) -> None:
        subprocess.run(
            ["fuse2fs", "-o", "ro", str(image), str(target)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def daemon_pids(self, target: Path) -> list[int]:
        return pids_with(b"fuse2fs", os.fsencode(target))


class Squashfuse(Mounter):
    def __init__(self, program: str) -> None:
        self.name = program

    def mount(self, image: Path, target: Path) -> None:
        subprocess.run(
            [self.name, str(image), str(target)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def daemon_pids(self, target: Path) -> list[int]:
        return pids_with(os.fsencode(self.name), os.fsencode(target))


class Fusefat(Mounter):
    name = "fusefat"

    def mount(self, image: Path, target: Path) -> None:
        subprocess.run(
            ["fusefat", "-o", "ro", str(image), str(target)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def daemon_pids(self, target: Path) -> list[int]:
        return pids_with(b"fusefat", os.fsencode(target))


class Pyfsmount(Mounter):
    """``pyfsmount IMAGE DIR``: the project's own code, or the ``drivers`` and ``fusefs``
    packages in ``code`` (ab.py's exported revisions)."""

    def __init__(self, *options: str, code: Path | None = None) -> None:
        self.options = list(options)
        self.name = "pyfsmount" + (f" -o {','.join(options)}" if options else "")
        self.code = code

    def mount(self, image: Path, target: Path) -> None:
        args = ["-o", ",".join(self.options)] if self.options else []
        subprocess.run(
            [PYTHON, "-m", "fusefs", *args, str(image), str(target)],
            check=True,
            cwd=self.code or PROJECT,
            env={**os.environ, "PYTHONPATH": str(self.code)} if self.code else None,
            stderr=subprocess.DEVNULL,
        )

    def daemon_pids(self, target: Path) -> list[int]:
        supervisors = pids_with(b"fusefs", os.fsencode(target))
        drivers = pids_with(b"fusefs.driver")
        return supervisors + drivers


class PyfsmountTemplate(Mounter):
    """pyfsmount as the broker runs it: a resident launcher asks a driver template
    (fusefs/template.py, started once, everything imported) to fork each driver.
    ``mount+stat ms`` is then request to usable mount, without interpreter starts."""

    name = "pyfsmount template"

    def __init__(self) -> None:
        self.template: Template | None = None
        self.mounts: dict[Path, tuple[Mount, threading.Thread]] = {}

    def prepare(self) -> None:
        """The template is started once, before the first mount is timed: it is resident
        wherever it is used (the broker, the interceptor)."""
        if self.template is None:
            self.template = Template()
            atexit.register(self.template.close)

    def mount(self, image: Path, target: Path) -> None:
        self.prepare()
        mount = make_mount(str(image), str(target), parse_options([]), template=self.template)
        supervisor = threading.Thread(target=mount.supervise, daemon=True)
        supervisor.start()
        self.mounts[target] = (mount, supervisor)

    def unmount(self, target: Path) -> None:
        mount, supervisor = self.mounts.pop(target)
        mount.request_stop()
        supervisor.join()
        mount.driver.control.close()

    def daemon_pids(self, target: Path) -> list[int]:
        if target not in self.mounts:
            return []
        forked = self.mounts[target][0].driver.process.pid
        return [forked, *(pid for pid in pids_with(b"fusefs.template") if parent_of(pid) == forked)]


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
    except OSError:
        return 0


def private_mib(pids: list[int]) -> float:
    """Memory the daemon's processes hold alone (not shared with a template or each other)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


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


#: Memory touched once at the start of a run (see :func:`host_backed_memory`): more than
#: any probe fills (the 512 MiB file's page cache, the image's, the daemon's).
WARM_MEMORY = 3 << 30
MADV_POPULATE_WRITE = 23  # Linux 5.14; not in Python 3.11's mmap module


@contextlib.contextmanager
def host_backed_memory() -> Iterator[str]:
    """Keep free memory backed by the host for the run; yield a line saying so.

    This VM's balloon driver hands free memory back to its host in the background (free
    page reporting: blocks of order 5, 128 MiB every ~2 s), and the next page cache made
    of such a page pays a host fault on first touch. A cold read thus ran at whatever
    share of its pages had been handed back since the last probe freed them: a buffered
    512 MiB read of the ext4 image at 1,600-1,900 MB/s right after ``drop_caches``,
    320-380 after 8-12 s, and the pace of every cold probe depended on its mounter's
    start-up time, memory and place in the order, not on its file system. With reporting
    paused the same read ran at 1,310-1,530 MB/s 0-6 s after the drop (RESULTS.md,
    2026-12-03 night).

    So, for the run: reporting is paused (the order set one past the largest, so no
    block qualifies) and the original order restored afterwards; and :data:`WARM_MEMORY`
    is touched once and freed, so the first probes too find pages the host backs.
    Machines without the parameter run as they are.
    """
    try:
        original = PAGE_REPORTING_ORDER.read_text().strip()
    except OSError:
        yield "no free page reporting"
        return
    orders = page_orders()
    PAGE_REPORTING_ORDER.write_text(f"{orders}\n")
    # A plain `kill` ends the run through the finally clause too.
    on_sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with mmap.mmap(-1, WARM_MEMORY) as memory:
            memory.madvise(MADV_POPULATE_WRITE)
        yield f"free page reporting paused (order {original} -> {orders}) for the run"
    finally:
        PAGE_REPORTING_ORDER.write_text(f"{original}\n")
        signal.signal(signal.SIGTERM, on_sigterm)


def alternating(
    names: list[str], runs: int, prefix: str, take: Callable[[str, Path], float]
) -> dict[str, list[float]]:
    """``take(name, target)`` ``runs`` times for each name, on host-backed memory, in
    alternating order (ABBA: on this VM the run just after another mount's page cache
    was dropped is faster than the one after it); the figures by name."""
    results: dict[str, list[float]] = {name: [] for name in names}
    with (
        host_backed_memory() as memory,
        tempfile.TemporaryDirectory(prefix=prefix, dir=WORK) as directory,
    ):
        print(memory)
        for run in range(runs):
            for name in names if run % 2 == 0 else names[::-1]:
                results[name].append(take(name, Path(directory)))
    return results


def print_medians(results: dict[str, list[float]], unit: str, spec: str) -> None:
    """Each name's median and its runs, figures formatted with ``spec``."""
    for name, values in results.items():
        runs = " ".join(f"{value:{spec}}" for value in values)
        print(f"{name}: median {statistics.median(values):{spec}} {unit} ({runs})")


def drop_caches() -> float:
    """Empty the page cache; the time it was emptied (see :func:`start_probe`)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return time.perf_counter()


#: Seconds from emptying the page cache to the start of every cold probe.
PROBE_START_S = 1.0


def start_probe(dropped: float) -> None:
    """Wait until :data:`PROBE_START_S` after ``dropped`` (:func:`drop_caches`).

    This VM hands memory freed by drop_caches back to its host (virtio-balloon free
    page reporting, 128 MiB every 2 s), and a page taken back costs a host fault when
    the page cache fills it again. A buffered 512 MiB read of the image file measured
    1.6-1.9 GB/s started at once, 0.86-1.0 GB/s after 1-2 s, 0.67-0.71 after 3 s and
    0.32-0.61 after 4-12 s. So a cold probe run right after its mount was faster for a
    mounter that mounts in 20 ms than for one that takes 600 ms, whatever the file
    system did. Every cold probe (every mounter, mtools) therefore starts at the same
    time after the drop: longer than any mount takes. (Runs now pause the reporting
    itself, :func:`host_backed_memory`; the common start remains, as the one condition
    every mounter is measured under.)
    """
    late = time.perf_counter() - dropped - PROBE_START_S
    if late > 0:
        print(f"  (a probe started {late:.2f} s late: slower mount than PROBE_START_S)")
    else:
        time.sleep(-late)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def stat_walk(root: Path) -> None:
    """Every entry's size, mode and owner: one stat each. ``%U`` (the number) and not ``%u``:
    find resolves a name by reopening /etc/passwd per entry (about 8 us here, the same for
    every mounter), which measured find and NSS rather than the file system."""
    subprocess.run(
        ["find", str(root), "-printf", "%s %m %U\n"], check=True, stdout=subprocess.DEVNULL
    )


def read_file(path: Path, chunk: int = 1 << 20) -> int:
    total = 0
    with path.open("rb", buffering=0) as f:
        while data := f.read(chunk):
            total += len(data)
    return total


def reread(path: Path) -> float:
    """Seconds to read ``path`` a second time on the same mount (the first read fills the
    page cache; a mount that keeps it serves the second from memory)."""
    read_file(path)
    return timed(lambda: read_file(path))


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


#: The cold probes by their column: each gives its figure for a fresh mount at ``root``.
PROBES: dict[str, Callable[[Path, Scale], float]] = {
    "stat walk s": lambda root, scale: timed(lambda: stat_walk(root)),
    "seq read MB/s": lambda root, scale: (
        scale.big_file / 1e6 / timed(lambda: read_file(root / "big"))
    ),
    "re-read MB/s": lambda root, scale: scale.big_file / 1e6 / reread(root / "big"),
    "small files s": lambda root, scale: timed(lambda: read_small_files(root)),
    "random 4K ops/s": lambda root, scale: (
        scale.random_reads / timed(lambda: random_reads(root / "big", scale.random_reads))
    ),
}


def mount_time(mounter: Mounter, image: Path, target: Path) -> float:
    """Milliseconds from emptying the page cache to the first stat in a fresh mount."""
    start = drop_caches()
    mounter.mount(image, target)
    try:
        (target / "d000").stat()
        return (time.perf_counter() - start) * 1000
    finally:
        mounter.unmount(target)
        wait_unmounted(target)


@contextlib.contextmanager
def cold_mount(
    mounter: Mounter, image: Path, target: Path, meanwhile: Callable[[], object] | None = None
) -> Iterator[None]:
    """A fresh mount of ``image`` at ``target`` on an empty page cache, for one probe.

    The body runs at the common start after the drop (:func:`start_probe`), whatever the
    mounter's start-up took; ``meanwhile`` runs between the mount and that start
    (standalone_gap.py's throwaway processes). Unmounted afterwards.
    """
    dropped = drop_caches()
    mounter.mount(image, target)
    try:
        if meanwhile is not None:
            meanwhile()
        start_probe(dropped)
        yield
    finally:
        mounter.unmount(target)
        wait_unmounted(target)


def measure(mounter: Mounter, image: Path, scale: Scale) -> dict[str, float]:
    """One cold run of every measurement, each on a fresh mount."""
    results: dict[str, float] = {}
    target = Path(tempfile.mkdtemp(prefix="bench-", dir=WORK))
    try:
        mounter.prepare()
        results["mount+stat ms"] = mount_time(mounter, image, target)
        for label, probe in PROBES.items():
            with cold_mount(mounter, image, target):
                results[label] = probe(target, scale)
                if pids := mounter.daemon_pids(target):
                    results["peak RSS MiB"] = max(
                        results.get("peak RSS MiB", 0.0), peak_rss_mib(pids)
                    )
                    results["private MiB"] = max(results.get("private MiB", 0.0), private_mib(pids))
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        target.rmdir()
    return results


def unmount(target: Path, attempts: int = 20) -> None:
    """``umount``, again while the mount is busy: once in a full run (2026-12-03) a mount
    was busy right after its first stat, with nothing of the benchmark's open in it, and
    the run ended there."""
    for attempt in range(attempts):
        result = subprocess.run(["umount", str(target)], capture_output=True, text=True)
        if result.returncode == 0:
            if attempt:
                print(f"  (unmounted at attempt {attempt + 1}: {target} was busy)")
            return
        time.sleep(0.1)
    raise RuntimeError(f"umount {target}: {result.stderr.strip()}")


def wait_unmounted(target: Path) -> None:
    for _ in range(500):
        if os.path.realpath(target) not in Path("/proc/self/mounts").read_text():
            return
        time.sleep(0.01)


LOWER_IS_BETTER = {"mount+stat ms", "stat walk s", "small files s", "peak RSS MiB", "private MiB"}


def report(table: dict[str, dict[str, float]], scale: Scale, fmt: Format) -> str:
    present = {m for row in table.values() for m in row} | {"peak RSS MiB"}
    order = [
        "mount+stat ms",
        "stat walk s",
        "seq read MB/s",
        "re-read MB/s",
        "small files s",
        "random 4K ops/s",
        "peak RSS MiB",
        "private MiB",
        "cpu loop s",
    ]
    metrics = [m for m in order if m in present]
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
        for other in table:
            if other.startswith("pyfsmount"):
                continue
            ratios = []
            for m in metrics:
                if m == "cpu loop s":
                    continue
                if m in row and m in table[other] and table[other][m]:
                    ratios.append(f"{m} {row[m] / table[other][m]:.2f}x")
            lines.append(f"- {name} vs {other}: " + ", ".join(ratios))
    header = (
        f"{fmt.name}: {scale.files} files of 0-{scale.max_file // 1024} KiB in "
        f"{scale.dirs} dirs + one {scale.big_file >> 20} MiB file; "
        f"medians of {scale.runs} cold run(s)"
    )
    return header + "\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small image, one run")
    parser.add_argument("--runs", type=int, help="runs per mounter (median is reported)")
    parser.add_argument("--only", action="append", help="mounter names to run (repeatable)")
    parser.add_argument(
        "--format",
        action="append",
        choices=[f.name for f in FORMATS],
        help="formats to run (repeatable; default: all)",
    )
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        help=f"append the results to {RESULTS.relative_to(PROJECT)} (default: unless --quick)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.py needs root (loop mounts, drop_caches)")
    scale = QUICK if args.quick else FULL
    if args.runs:
        scale = Scale(**{**scale.__dict__, "runs": args.runs})
    formats = [f for f in FORMATS if not args.format or f.name in args.format]
    with host_backed_memory() as memory:
        print(memory, file=sys.stderr)
        printed = [run_format(fmt, scale, args.only) for fmt in formats]
    printed = [text for text in printed if text]
    if printed and (not args.quick if args.record is None else args.record):
        record(printed, memory)


def run_format(fmt: Format, scale: Scale, only: list[str] | None) -> str:
    """Every mounter of ``fmt`` (or those ``only`` names), run by run: the table it
    printed, with its ranges ('' if no mounter was chosen)."""
    image = image_of(fmt, scale)
    rows: dict[str, Callable[[], dict[str, float]]] = {
        m.name: functools.partial(measure, m, image, scale)
        for m in fmt.mounters()
        if not only or m.name in only
    }
    if not only or "machine" in only:
        rows["machine"] = functools.partial(machine_row, image, scale)
    if fmt.name == "fat32" and (not only or "mtools" in only):
        rows["mtools"] = functools.partial(mtools_row, image, scale)
    if not rows:
        return ""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in rows}
    # Round-robin: this VM's speed drifts by 2x over minutes, so each mounter's
    # n-th run is taken next to the others' n-th run, not minutes apart. And the
    # order turns by one each run, so that no mounter always follows the same one
    # (what a probe leaves in memory changed the next one's pace on this VM while it
    # handed free memory back to its host: RESULTS.md, 2026-12-03 evening and night).
    names = list(rows)
    for run in range(scale.runs):
        turn = run % len(names)
        for name in names[turn:] + names[:turn]:
            runs[name].append(rows[name]())
    table = {name: summarize(results) for name, results in runs.items()}
    for name, results in runs.items():
        print(f"{fmt.name} {name}: {results}", file=sys.stderr)
    printed = report(table, scale, fmt) + "\n\n" + spread(runs)
    print(printed + "\n", flush=True)
    return printed


def record(printed: list[str], memory: str) -> None:
    """Append this run's tables to RESULTS.md, under what it takes to reproduce them
    (``memory``: how the run kept the host's backing of free memory)."""
    command = " ".join(["sudo .venv/bin/python benchmarks/bench.py", *sys.argv[1:]])
    commit = subprocess.run(
        ["git", "-C", str(PROJECT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = [
        f"## {when}: `{command}` (recorded by bench.py)",
        "",
        f"{machine()}; {memory}; commit {commit or 'unknown'}.",
        "",
        *(f"{text}\n" for text in printed),
    ]
    with RESULTS.open("a") as results:
        results.write("\n" + "\n".join(section))
    print(f"recorded in {RESULTS}")


def machine() -> str:
    """The machine in one line: CPUs, memory, kernel, Python."""
    memory = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        "0",
    )
    return (
        f"{os.cpu_count()} CPUs, {int(memory) >> 20} GiB, Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}"
    )


def summarize(results: list[dict[str, float]]) -> dict[str, float]:
    """Median of each measurement over the runs."""
    return {k: statistics.median(r[k] for r in results if k in r) for k in results[0]}


def spread(runs: dict[str, list[dict[str, float]]]) -> str:
    """Each mounter's range (min-max) per measurement: how far to trust the medians."""
    lines = ["Ranges over the runs (min-max):", ""]
    for name, results in runs.items():
        cells = []
        for k in results[0]:
            values = [r[k] for r in results if k in r]
            cells.append(f"{k} {min(values):.3g}-{max(values):.3g}")
        lines.append(f"- {name}: " + ", ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
