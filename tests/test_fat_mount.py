"""FAT through a real pyfsmount mount, with mtools as the oracle (no kernel vfat here).

Images are made by mkfs.fat (or mtools' mformat) and filled by ``mcopy -s -m`` from a
generated tree: long and Unicode names, names that differ from their 8.3 alias only in
case, 8.3 names in lower case (the NT flags), a deep directory, a big directory, files
spanning many clusters and a fragmented one.  ``mcopy -s -n -m`` extracts the same image
as mtools reads it; the mount must show the same names, sizes, contents and mtimes
(FAT keeps 2 s), with vfat's permission rules.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
from pathlib import Path

import pytest

from tests.launcher import mount_image, mounted_fs_type, mountpoint, run_pyfsmount

__all__ = ["mountpoint"]

MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0", "TZ": "UTC"}
MTIME = 1_700_000_000  # even: FAT keeps 2-second mtimes

#: Option sets: name -> the command that makes the empty file system at {image}.
FORMATS = {
    "fat12": ["mkfs.fat", "-F", "12", "-C", "{image}", "1440"],
    "fat16": ["mkfs.fat", "-F", "16", "-s", "4", "-C", "{image}", "32768"],
    # FAT32 needs 65,525 clusters at least (mtools refuses fewer, as the spec says).
    "fat32": ["mkfs.fat", "-F", "32", "-s", "1", "-f", "1", "-C", "{image}", "65536"],
    "fat32-4k-sectors": [
        "mkfs.fat",
        "-F",
        "32",
        "-S",
        "4096",
        "-s",
        "1",
        "-C",
        "{image}",
        "270000",
    ],
    "mformat-fat16": ["mformat", "-C", "-T", "65536", "-h", "2", "-s", "32", "-i", "{image}"],
}


def make_tree(root: Path, small: bool) -> None:
    rng = random.Random(5)
    names = [
        "README.TXT",
        "lower.txt",
        "Mixed.Txt",
        "a name with spaces.text",
        "Ünïcödé — ☃.txt",
        "x" * 200 + ".long",
        "UPPER",
        "dot.in.the.middle.tar.gz",
    ]
    for name in names:
        (root / name).write_bytes(rng.randbytes(rng.randrange(0, 3000)))
    deep = root
    for level in range(12):
        deep = deep / f"level{level}"
        deep.mkdir()
    (deep / "bottom.txt").write_text("the bottom\n")
    many = root / "many"
    many.mkdir()
    for i in range(60 if small else 250):  # mcopy is quadratic in a directory's size
        (many / f"entry number {i:04d}.dat").write_bytes(rng.randbytes(rng.randrange(0, 600)))
    (root / "big.bin").write_bytes(rng.randbytes(90_000 if small else 3_000_000))
    (root / "empty").mkdir()
    (root / "empty-file").touch()
    for path in [root, *root.rglob("*")]:
        os.utime(path, (MTIME, MTIME))


def build(tmp: Path, fmt: str) -> Path:
    image = tmp / f"{fmt}.img"
    tree = tmp / f"tree-{fmt}"
    tree.mkdir()
    make_tree(tree, small=fmt == "fat12")
    command = [arg.format(image=image) for arg in FORMATS[fmt]]
    subprocess.run(command, check=True, capture_output=True, env=MTOOLS_ENV)
    mcopy = ["mcopy", "-s", "-m", "-i", str(image), *sorted(map(str, tree.iterdir())), "::/"]
    subprocess.run(mcopy, check=True, capture_output=True, env=MTOOLS_ENV)
    # Big enough, except on the floppy, to be read ahead across its fragments.
    fragment(image, 70_000 if fmt == "fat12" else 2_500_000)
    return image


def fragment(image: Path, size: int) -> None:
    """Delete every other file of many/ and copy a file in: its chain fills the holes."""
    listing = subprocess.run(
        ["mdir", "-b", "-i", str(image), "::/many"],
        check=True,
        capture_output=True,
        text=True,
        env=MTOOLS_ENV,
    ).stdout.split("\n")
    victims = [line for line in listing if line.strip()][::2]
    subprocess.run(["mdel", "-i", str(image), *victims], check=True, env=MTOOLS_ENV)
    source = image.parent / "fragmented.bin"
    source.write_bytes(random.Random(9).randbytes(size))
    os.utime(source, (MTIME, MTIME))
    subprocess.run(
        ["mcopy", "-m", "-i", str(image), str(source), "::/many/fragmented.bin"],
        check=True,
        env=MTOOLS_ENV,
    )


def view(root: Path) -> dict[str, tuple[str, int, str, int]]:
    """relative path -> (kind, size, sha256, mtime in s) of everything under ``root``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", 0, "", int(st.st_mtime))
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[rel] = ("file", st.st_size, digest, int(st.st_mtime))
    return found


@pytest.fixture(scope="module")
def fat_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each format's image and mtools' extraction of it."""
    out = {}
    for fmt in FORMATS:
        tmp = tmp_path_factory.mktemp(fmt)
        image = build(tmp, fmt)
        extracted = tmp / "mtools"
        subprocess.run(
            ["mcopy", "-s", "-n", "-m", "-i", str(image), "::/", str(extracted)],
            check=True,
            capture_output=True,
            env=MTOOLS_ENV,
        )
        out[fmt] = (image, extracted)
    return out


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_mount_equals_what_mtools_reads(
    fat_images: dict[str, tuple[Path, Path]], fmt: str, mountpoint: Path
) -> None:
    image, extracted = fat_images[fmt]
    mount_image(image, mountpoint)
    assert mounted_fs_type(mountpoint) == "fuse.pyfsmount"
    want = view(extracted)
    got = view(mountpoint)
    # mtools sets directory mtimes to the extraction time; compare theirs by name only.
    assert sorted(got) == sorted(want)
    for rel, (kind, size, digest, mtime) in want.items():
        if kind == "file":
            assert got[rel] == (kind, size, digest, mtime), rel
        else:
            assert got[rel][0] == "dir", rel


def test_permissions_follow_vfat_rules(
    fat_images: dict[str, tuple[Path, Path]], mountpoint: Path
) -> None:
    image, _ = fat_images["fat32"]
    mount_image(image, mountpoint, "fmask=0133,dmask=0022,uid=1000,gid=1000")
    file_st = (mountpoint / "README.TXT").stat()
    dir_st = (mountpoint / "many").stat()
    assert stat.S_IMODE(file_st.st_mode) == 0o644
    assert stat.S_IMODE(dir_st.st_mode) == 0o755
    assert (file_st.st_uid, file_st.st_gid) == (1000, 1000)


def test_an_exfat_image_is_refused_with_one_line(tmp_path: Path, mountpoint: Path) -> None:
    image = tmp_path / "exfat.img"
    boot = bytearray(512)
    boot[0:3] = b"\xeb\x76\x90"
    boot[3:11] = b"EXFAT   "
    boot[510:512] = b"\x55\xaa"
    image.write_bytes(bytes(boot) + bytes(1 << 20))
    result = run_pyfsmount("-t", "vfat", str(image), str(mountpoint))
    assert result.returncode == 32
    assert len(result.stderr.strip().splitlines()) == 1
    assert "exFAT" in result.stderr
