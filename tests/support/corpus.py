"""The shared corpus of real corrupt and unusual images, examined through real mounts.

``../shared/corpus/`` (or ``$PYFSMOUNT_CORPUS``) holds images from public test suites
with an ``index.tsv`` that says what each is (blkid's type) and whether Linux mounts it.
:func:`examine` puts one image through everything a user could do to it:

1. decompress it (sparse: most of the big ones are mostly zeros);
2. mount it with ``pyfsmount -f`` (foreground, so the driver's log is ours to read);
   a refusal must be exit code 32 and one line saying why;
3. walk, stat, read and list the xattrs of everything, in a child process with a
   deadline (a hang is a failure, an EIO on a damaged file is an outcome);
4. check the driver is still alive, its peak RSS is under :data:`RSS_BUDGET_MIB`, it
   logged no driver bug, and it exits when unmounted;
5. where the kernel mounts the image (ext2/3/4), compare the two trees entry by entry.

:func:`examine_all` runs the lot two at a time; ``scripts/corpus_report.py`` writes the
summary table, ``tests/test_corpus.py`` asserts there is no failure and no unexplained
difference from the kernel.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import lzma
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.launcher import PROJECT, PYFSMOUNT, driver_pids, mounted_fs_type, pids_mentioning
from tests.support.kernel import MountError, fuse_cleanup, kernel_mount, unmount
from tests.support.scan import Scan, diff_scans, scan_path, scan_path_isolated

CORPUS = Path(os.environ.get("PYFSMOUNT_CORPUS", PROJECT.parent / "shared" / "corpus"))
#: Why each image that differs from the kernel differs: path, a tab, the cause.
KNOWN_DIFFERENCES = PROJECT / "tests" / "corpus_differences.tsv"
#: Formats pyfsmount serves; every other image must be refused with a reason.
SERVED_TYPES = frozenset({"ext2", "ext3", "ext4", "ext", "squashfs", "vfat", "dos-partitioned"})
EXT_TYPES = frozenset({"ext2", "ext3", "ext4", "ext"})
#: Peak resident memory a driver may reach on any image (the sample images take ~40).
RSS_BUDGET_MIB = 160
#: Seconds for a mount to be answered (accepted or refused).
MOUNT_DEADLINE = 60.0
#: Seconds for the whole walk of one mounted image.
WALK_DEADLINE = 180.0
#: ext4's errnos for corrupt metadata and bad checksums (pyfsmount: EIO).
KERNEL_ERRNOS = re.compile(r"\b(EUCLEAN|EBADMSG)\b")
#: Decompression chunk; an all-zero chunk becomes a hole.
CHUNK = 1 << 20


@dataclass(frozen=True)
class CorpusImage:
    """One line of index.tsv."""

    path: str
    fstype: str
    size: int
    source: str
    kernel_mounts: bool
    note: str

    @property
    def file(self) -> Path:
        return CORPUS / self.path

    @property
    def mount_options(self) -> list[str]:
        # As index.tsv's kernel mounts were made: ro,noload (no journal replay).
        return ["noload"] if self.fstype in EXT_TYPES else []


@dataclass
class Result:
    """What happened to one image.

    ``outcome`` is one of: ``identical`` (served, equal to the kernel's mount),
    ``differs`` (served, with ``differences`` from the kernel's), ``served`` (no kernel
    oracle here), ``refused`` (exit 32, ``detail`` is the reason), ``skipped`` (not
    examined, ``detail`` says why) or ``failure`` (a daemon death, hang, budget overrun,
    driver bug or malformed refusal: ``detail`` says which).
    """

    image: CorpusImage
    outcome: str
    detail: str = ""
    differences: list[str] = field(default_factory=list)
    entries: int = 0
    eio: int = 0
    peak_rss_mib: float = 0.0
    seconds: float = 0.0
    #: Differences from the kernel that are only EIO against EUCLEAN/EBADMSG.
    errno_only: int = 0


def corpus_images() -> list[CorpusImage]:
    """Every image of the index, in its order."""
    with (CORPUS / "index.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        CorpusImage(
            path=row["path"],
            fstype=row["fstype"],
            size=int(row["size_bytes"]),
            source=row["source"],
            kernel_mounts=row["kernel_mounts"] == "yes",
            note=row["note"],
        )
        for row in rows
    ]


def materialize(image: CorpusImage, directory: Path) -> Path:
    """The decompressed image as a sparse file in ``directory``."""
    target = directory / "image"
    zero = bytes(CHUNK)
    decompress = gzip.open if image.path.endswith(".gz") else lzma.open
    with decompress(image.file, "rb") as source, target.open("wb") as out:
        size = 0
        while chunk := source.read(CHUNK):
            if chunk == zero[: len(chunk)]:
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            size += len(chunk)
        out.truncate(size)
    return target


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except OSError:
        return False
    return state != "Z"


def driver_of(target: Path) -> int | None:
    """The driver process serving the foreground mount at ``target``."""
    supervisors = set(pids_mentioning(target))
    for pid in driver_pids():
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except OSError:
            continue
        if parent in supervisors:
            return pid
    return None


@contextmanager
def foreground_mount(
    image: Path, target: Path, options: Iterable[str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``pyfsmount -f``; yields once mounted or exited; always unmounts and reaps it."""
    args = [arg for option in options for arg in ("-o", option)]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*PYFSMOUNT, "-f", *args, str(image), str(target)],
            cwd=PROJECT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + MOUNT_DEADLINE
        while process.poll() is None and mounted_fs_type(target) is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        yield process
    finally:
        if process.poll() is None:
            unmount(target)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        fuse_cleanup(target)


def _log_problem(text: str) -> str | None:
    """A line of the driver's log that shows a bug (an exception escaping a driver)."""
    for line in text.splitlines():
        if "driver bug" in line or line.startswith("Traceback"):
            return line.strip()
    return None


def examine(image: CorpusImage, work: Path) -> Result:
    """Mount, walk and check one image (see the module docstring)."""
    if image.path.endswith(".tar.xz"):
        return Result(image, "skipped", "a tar archive of a 2 TiB sparse member")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=work) as tmp_name:
        tmp = Path(tmp_name)
        result = _examine(image, materialize(image, tmp), tmp)
    result.seconds = time.monotonic() - started
    return result


def _examine(image: CorpusImage, path: Path, tmp: Path) -> Result:
    target = tmp / "mnt"
    target.mkdir()
    log = tmp / "driver.log"
    ours: Scan | None = None
    with foreground_mount(path, target, image.mount_options, log) as process:
        if process.poll() is not None:
            return _refusal(image, process.returncode, log.read_text(errors="replace"))
        if mounted_fs_type(target) is None:
            return Result(image, "failure", f"no answer to the mount in {MOUNT_DEADLINE:.0f} s")
        driver = driver_of(target)
        if driver is None:
            return Result(image, "failure", "mounted, but no driver process found")
        try:
            ours = scan_path_isolated(target, timeout=WALK_DEADLINE)
        except TimeoutError:
            return Result(image, "failure", f"the walk took over {WALK_DEADLINE:.0f} s (hang)")
        except RuntimeError as exc:
            return Result(image, "failure", f"the walk failed: {str(exc)[-300:]}")
        if not is_alive(driver):
            return Result(image, "failure", "the driver died during the walk")
        peak = peak_rss_mib(driver)
        if os.stat(target).st_ino != 1:
            return Result(image, "failure", "the mount stopped answering after the walk")
    if process.returncode != 0:
        return Result(image, "failure", f"the daemon exited {process.returncode} on unmount")
    problem = _log_problem(log.read_text(errors="replace"))
    if problem:
        return Result(image, "failure", f"driver bug: {problem}")
    result = Result(
        image,
        "served",
        entries=len(ours),
        eio=sum(1 for e in ours.values() if any("EIO" in err for err in e.errors)),
        peak_rss_mib=peak,
    )
    if peak > RSS_BUDGET_MIB:
        result.outcome, result.detail = "failure", f"peak RSS {peak:.0f} MiB over budget"
        return result
    if image.kernel_mounts:
        _compare_with_kernel(image, path, ours, result)
    return result


def _refusal(image: CorpusImage, code: int, log: str) -> Result:
    lines = [line for line in log.splitlines() if line.strip()]
    if code != 32 or len(lines) != 1 or "Traceback" in log:
        return Result(image, "failure", f"exit {code}, log: {' | '.join(lines[-3:])}")
    reason = lines[0].removeprefix("pyfsmount: ").split(": ", 1)[-1]
    result = Result(image, "refused", reason)
    if image.kernel_mounts:
        result.differences = ["refused, but the kernel mounts it"]
    return result


def as_pyfsmount_errno(scan: Scan) -> Scan:
    """The kernel's scan with ext4's corruption errnos as pyfsmount answers them: EIO.

    ext4 says EUCLEAN (EFSCORRUPTED) for corrupt metadata and EBADMSG (EFSBADCRC) for a
    bad checksum; pyfsmount answers EIO for every corrupt structure of every format.
    """
    return {
        path: dataclasses.replace(
            entry, errors=tuple(KERNEL_ERRNOS.sub("EIO", e) for e in entry.errors)
        )
        if entry.errors
        else entry
        for path, entry in scan.items()
    }


def _compare_with_kernel(image: CorpusImage, path: Path, ours: Scan, result: Result) -> None:
    try:
        with kernel_mount(path, "ext4", "ro,noload") as kernel_root:
            theirs = scan_path(kernel_root)
    except MountError as exc:
        result.detail = f"kernel refused here: {str(exc).splitlines()[0]}"
        return
    result.differences = diff_scans(as_pyfsmount_errno(theirs), ours)
    result.errno_only = len(diff_scans(theirs, ours)) - len(result.differences)
    result.outcome = "differs" if result.differences else "identical"


def known_differences() -> dict[str, str]:
    """Image path -> the cause of its differences from the kernel (corpus_differences.tsv)."""
    with KNOWN_DIFFERENCES.open(newline="") as f:
        rows = [row for row in csv.reader(f, delimiter="\t") if row and not row[0].startswith("#")]
    return {path: cause for path, cause in rows}


def cause_of(result: Result, known: dict[str, str]) -> str | None:
    """The documented cause of ``result``'s differences: by its path, or for a refusal by
    a ``refused:TEXT`` line whose TEXT its reason contains."""
    if result.image.path in known:
        return known[result.image.path]
    if result.outcome == "refused":
        for key, cause in known.items():
            if key.startswith("refused:") and key.removeprefix("refused:") in result.detail:
                return cause
    return None


def explain(result: Result) -> list[tuple[str, str | None]]:
    """Each difference of ``result`` from the kernel with its documented cause (or None)."""
    cause = cause_of(result, known_differences())
    return [(line, cause) for line in result.differences]


def examine_all(
    images: Iterable[CorpusImage], work: Path, progress: Callable[[Result], None] | None = None
) -> list[Result]:
    """:func:`examine` every image, two at a time (this machine has two cores)."""

    def one(image: CorpusImage) -> Result:
        result = examine(image, work)
        if progress is not None:
            progress(result)
        return result

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, images))
