"""Helpers for the FAT driver's unit tests (no tests here): trees, images, the mtools oracle.

There is no vfat in this machine's kernel, so the oracle is GNU mtools: images are made by
``mkfs.fat`` (or ``mformat``) and filled with ``mcopy``/``mmd``/``mdel``/``mattrib``, and
what the library shows is compared with what ``mcopy -s -n -m`` extracts (names, sizes,
contents, mtimes) and what ``mattrib`` and ``mdir`` print.  mtools runs with ``TZ=UTC``
and a UTF-8 locale (it converts long names through the locale), and volumes are opened
with ``tz=UTC`` so that both sides read DOS times the same way.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from drivers.base import Attr, BlockReader, Volume
from drivers.fat import FatVolume
from tests.support.commands import run

__all__ = [
    "compare_with_mtools",
    "extract",
    "mkfs",
    "mtools",
    "open_fat",
    "path_ino",
    "pattern",
]

TOOLS = ("mkfs.fat", "mformat", "mcopy", "mmd", "mdel", "mattrib", "mdir", "mlabel")
MTOOLS_ENV = {
    "MTOOLS_SKIP_CHECK": "1",
    "MTOOLS_NO_VFAT": "0",
    "TZ": "UTC",
    "LC_ALL": "C.UTF-8",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
}


def can_build() -> bool:
    return all(shutil.which(tool) for tool in TOOLS)


def mtools(tool: str, image: Path, *args: str | os.PathLike[str]) -> str:
    """Run one mtools command on ``image`` (``::/path`` names its files)."""
    return run(tool, "-i", image, *args, env=MTOOLS_ENV)


def mkfs(image: Path, size_kb: int, *options: str) -> Path:
    image.unlink(missing_ok=True)
    run("mkfs.fat", "-C", *options, image, str(size_kb))
    return image


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, not trivially repetitive contents."""
    return random.Random(seed).randbytes(size)


def extract(image: Path, dest: Path) -> Path:
    """What mtools sees in the image, copied out with long names and mtimes."""
    dest.mkdir(parents=True)
    mtools("mcopy", image, "-s", "-n", "-m", "::/", dest)
    return dest


def open_fat(image: Path, **options: str) -> FatVolume:
    """The library's volume on ``image`` (the descriptor lives as long as the process)."""
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    return FatVolume.open(BlockReader(fd), {"tz": "UTC", **options})


def path_ino(volume: Volume, path: str) -> int:
    ino = volume.root_ino
    for part in path.strip("/").split("/"):
        if part:
            ino = volume.lookup(ino, os.fsencode(part))
    return ino


def listing(volume: Volume, ino: int) -> dict[bytes, int]:
    entries = {e.name: e.ino for e in volume.readdir(ino)}
    return entries


def read_all(volume: Volume, ino: int, size: int, piece: int = 65536) -> bytes:
    out = bytearray()
    while len(out) < size:
        data = volume.read(ino, len(out), piece)
        assert data, f"short read at {len(out)} of {size}"
        out += data
    assert volume.read(ino, size, piece) == b""
    return bytes(out)


def compare_with_mtools(volume: Volume, extracted: Path) -> int:
    """Walk the volume and the extracted tree together; return the number of entries seen."""
    seen = 0
    pending = [(volume.root_ino, extracted)]
    while pending:
        ino, path = pending.pop()
        ours = listing(volume, ino)
        theirs = {os.fsencode(name) for name in os.listdir(path)}
        assert set(ours) == theirs, f"{path}: {sorted(set(ours) ^ theirs)[:10]}"
        for name, child in ours.items():
            seen += 1
            target = path / os.fsdecode(name)
            attr = volume.getattr(child)
            if attr.is_dir:
                assert target.is_dir(), target
                pending.append((child, target))
                continue
            _compare_file(volume, child, attr, target)
    return seen


def _compare_file(volume: Volume, ino: int, attr: Attr, target: Path) -> None:
    info = target.stat()
    assert attr.is_regular, target
    assert attr.size == info.st_size, target
    assert attr.mtime_ns == info.st_mtime_ns, target
    assert attr.ctime_ns == attr.mtime_ns, target
    assert read_all(volume, ino, attr.size) == target.read_bytes(), target


def mattrib_flags(image: Path, path: str) -> set[str]:
    """The attribute letters mattrib prints for one file (A, S, H, R)."""
    line = mtools("mattrib", image, f"::/{path.lstrip('/')}").splitlines()[0]
    return set(line[: line.index("::/")].replace(" ", ""))


def mdir_free_bytes(image: Path) -> int:
    """The "bytes free" mdir reports."""
    for line in mtools("mdir", image, "-a", "::/").splitlines():
        if line.strip().endswith("bytes free"):
            return int(line.split("bytes free")[0].replace(" ", ""))
    raise AssertionError("mdir printed no free space")


def patch(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_bytes(image: Path, offset: int, length: int) -> bytes:
    with open(image, "rb") as f:
        f.seek(offset)
        return f.read(length)
