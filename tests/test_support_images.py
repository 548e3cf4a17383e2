"""Every option set builds an image the kernel mounts and shows the tree in.

The kernel's view of each image is compared with the tree's manifest, allowing only for
what the format cannot hold (128-byte inodes: whole seconds, 32-bit times) and for what
``mke2fs -d`` is known not to copy; the characterization tests at the end pin those
losses down, so that a new e2fsprogs that fixes one shows up here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.images import (
    BIGDIR_SETS,
    OPTION_SETS,
    ImageCache,
    build_ext,
    derived_ctime,
    image_time,
)
from tests.support.kernel import kernel_mount
from tests.support.scan import Scan, assert_scans_equal, diff_scans, scan_path, show_path, without
from tests.support.trees import NS, Manifest, build_tree

#: dumpe2fs feature names each option set must (and, with "^", must not) have.
FEATURES = {
    "ext2": ("^has_journal", "^extent", "filetype"),
    "ext2-1k": ("^has_journal", "^extent"),
    "ext3": ("has_journal", "^extent"),
    "ext4": ("has_journal", "extent", "64bit", "metadata_csum", "flex_bg"),
    "ext4-1k": ("extent",),
    "inline_data": ("inline_data",),
    "inode128": ("extent",),
    "bigalloc": ("bigalloc",),
    "meta_bg": ("meta_bg", "^resize_inode"),
    "nojournal": ("^has_journal", "extent"),
    "64bit-csum": ("64bit", "metadata_csum", "metadata_csum_seed"),
    "ext4-old": ("^64bit", "^metadata_csum", "uninit_bg"),
    "htree": ("dir_index",),
    "htree-1k": ("dir_index",),
}


def _superblock(image: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True
    ).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def expected_view(manifest: Manifest, option_set: str) -> Scan:
    """What the kernel should show of the tree's image, lost+found aside."""
    opt = OPTION_SETS[option_set]
    expected: Scan = {}
    for path, entry in manifest.entries.items():
        made = manifest.made[path]
        assert made.atime_ns is not None and made.mtime_ns is not None
        changes: dict[str, object] = {
            "atime_ns": image_time(made.atime_ns, opt),
            "mtime_ns": image_time(made.mtime_ns, opt),
            "ctime_ns": image_time(derived_ctime(made.mtime_ns), opt),
        }
        if path == b"/":
            changes["nlink"] = entry.nlink + 1  # lost+found
        if entry.kind == "lnk" and entry.nlink > 1:
            # mke2fs -d makes a separate symlink for each name of a linked one.
            changes.update(nlink=1, ino=-len(expected) - 1)
        expected[path] = dataclasses.replace(entry, **changes)  # type: ignore[arg-type]
    return expected


def _inline_data_losses(manifest: Manifest, lines: list[str]) -> tuple[list[str], list[str]]:
    """Split differences into mke2fs's inline_data trailing-hole bug and the rest."""
    sparse = {show_path(p) for p in manifest.paths("sparse")}
    known = [
        line
        for line in lines
        if line.split(":")[0] in sparse and re.search(r": (size expected|contents differ)", line)
    ]
    return known, [line for line in lines if line not in known]


@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_image_builds_checks_and_mounts(images: ImageCache, option_set: str) -> None:
    manifest = images.tree("standard")
    image = images.get("standard", option_set)
    opt = OPTION_SETS[option_set]
    assert image.stat().st_size <= 128 << 20, "images should stay small"
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    sb = _superblock(image)
    features = set(sb["Filesystem features"].split())
    for feature in FEATURES[option_set]:
        if feature.startswith("^"):
            assert feature[1:] not in features, (option_set, features)
        else:
            assert feature in features, (option_set, features)
    assert int(sb["Block size"]) == opt.block_size
    assert int(sb["Inode size"]) == opt.inode_size

    kernel = without(images.kernel_scan("standard", option_set), b"/lost+found")
    lines = diff_scans(expected_view(manifest, option_set), kernel, ignore=("blocks", "dir:size"))
    if option_set == "inline_data":
        known, lines = _inline_data_losses(manifest, lines)
        assert known, "mke2fs -d no longer drops trailing holes with inline_data: update this"
    assert lines == [], "\n".join(lines[:30])


def test_image_layouts(images: ImageCache) -> None:
    """The option sets make the structures they are there for."""

    def debugfs(image: Path, command: str) -> str:
        return subprocess.run(
            ["debugfs", "-R", command, str(image)], capture_output=True, text=True, check=True
        ).stdout

    islands = "/sparse/islands"
    for option_set in ("ext4", "ext4-1k", "bigalloc"):
        text = debugfs(images.get("standard", option_set), f"ex {islands}")
        assert re.search(r"^\s*2/\s*2", text, re.M), f"{option_set}: no depth-2 extent tree"
    text = debugfs(images.get("standard", "ext2-1k"), "stat /sparse/indirect-levels")
    assert "(TIND)" in text
    text = debugfs(images.get("standard", "inline_data"), "stat /files/size-0000100")
    assert "Size of inline data: 100" in text
    text = debugfs(images.get("standard", "htree"), "htree_dump /dirs/medium")
    assert "Indirect levels: 0" in text
    text = debugfs(images.get("standard", "64bit-csum"), "stats")
    assert "Checksum seed:" in text
    meta = _superblock(images.get("standard", "meta_bg"))
    groups = int(meta["Block count"]) // int(meta["Blocks per group"])
    assert groups > 2 * 16  # 16 descriptors per 1 KiB block: 3+ meta groups


@pytest.fixture(scope="module")
def bigdir_images(images: ImageCache) -> ImageCache:
    images.prebuild(("bigdir", name) for name in BIGDIR_SETS)  # in parallel
    return images


@pytest.mark.slow
@pytest.mark.parametrize("option_set", BIGDIR_SETS)
def test_big_directory_image(bigdir_images: ImageCache, option_set: str) -> None:
    images = bigdir_images
    manifest = images.tree("bigdir")
    kernel = without(images.kernel_scan("bigdir", option_set), b"/lost+found")
    assert_scans_equal(
        expected_view(manifest, option_set),
        kernel,
        ignore=("blocks", "dir:size"),
        label=option_set,
    )
    if option_set.startswith("htree"):
        text = subprocess.run(
            ["debugfs", "-R", "htree_dump /bigdir", str(images.get("bigdir", option_set))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        levels = 1 if option_set == "htree-1k" else 0
        assert f"Indirect levels: {levels}" in text


def test_build_is_deterministic(tmp_path: Path) -> None:
    digests = []
    for name in ("one", "two"):
        manifest = build_tree(tmp_path / name, "tiny")
        image = build_ext(manifest.root, tmp_path / f"{name}.img", "ext4", manifest=manifest)
        digests.append(hashlib.sha256(image.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_what_plain_mke2fs_does_not_copy(tmp_path: Path) -> None:
    """Characterizes ``mke2fs -d`` 1.47.0 without the fix-up (see images.py)."""
    manifest = build_tree(tmp_path / "tree", "tiny")
    image = build_ext(manifest.root, tmp_path / "plain.img", "ext4", exact=False)
    with kernel_mount(image) as mounted:
        kernel = scan_path(mounted)
    source = manifest.entries
    with_ns = [p for p, m in manifest.made.items() if (m.mtime_ns or 0) % NS and p != b"/"]
    assert with_ns and all(kernel[p].mtime_ns % NS == 0 for p in with_ns), "ns now kept"
    late = b"/times/y2106-past"
    assert kernel[late].mtime_ns == image_time(source[late].mtime_ns, OPTION_SETS["inode128"])
    assert kernel[late].mtime_ns != source[late].mtime_ns, "post-2038 times now kept"
    assert kernel[b"/"].atime_ns != source[b"/"].atime_ns, "root times now copied"
    assert stat.S_IMODE(kernel[b"/"].mode) == 0o755 != stat.S_IMODE(source[b"/"].mode)
    assert kernel[b"/"].xattrs == source[b"/"].xattrs  # root xattrs are copied
    assert source[b"/links/sym"].nlink == 2 and kernel[b"/links/sym"].nlink == 1
    assert kernel[b"/links/fifo"].nlink == 2  # other hard links are kept
    assert kernel[b"/files/zeros-64k"].blocks == 0  # zero blocks become holes
    # Everything else is copied: contents, owners, modes, devices, xattrs, ACLs.
    lines = diff_scans(
        source,
        without(kernel, b"/lost+found"),
        ignore=("atime_ns", "mtime_ns", "ctime_ns", "blocks", "dir:size", "links", "lnk:nlink"),
    )
    assert [line for line in lines if not line.startswith("/:")] == []


def test_inline_data_drops_trailing_holes(images: ImageCache) -> None:
    """mke2fs -d -O inline_data (1.47.0) cuts a sparse file after its last data block."""
    kernel = images.kernel_scan("standard", "inline_data")
    source = images.tree("standard").entries
    path = b"/sparse/hole-at-end"
    assert source[path].size == 8 << 20
    assert kernel[path].size == 4096
