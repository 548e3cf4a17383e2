"""The tree generator makes what it says, deterministically, and the host keeps it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.support.images import ImageCache
from tests.support.scan import diff_scans
from tests.support.trees import FEATURES, NS, Manifest, build_tree


def _intent_mismatches(manifest: Manifest) -> list[str]:
    problems = []
    for path, made in manifest.made.items():
        entry = manifest.entries.get(path)
        if entry is None:
            problems.append(f"{path!r}: not in the tree")
            continue
        checks: dict[str, tuple[object, object]] = {
            "kind": (made.kind, entry.kind),
            "uid": (made.uid, entry.uid),
            "gid": (made.gid, entry.gid),
            "mtime_ns": (made.mtime_ns, entry.mtime_ns),
            "xattrs": (made.xattrs, entry.xattrs),
        }
        # Reading a symlink moves its atime: only the first name of a linked one is exact.
        if not (made.kind == "lnk" and entry.nlink > 1):
            checks["atime_ns"] = (made.atime_ns, entry.atime_ns)
        if made.perm is not None:
            checks["perm"] = (made.perm, stat.S_IMODE(entry.mode))
        for name in ("size", "sha256", "target", "rdev"):
            value = getattr(made, name)
            if value is not None and made.kind != "dir":
                checks[name] = (value, getattr(entry, name))
        problems.extend(
            f"{path!r}: {name} meant {want!r}, is {got!r}"
            for name, (want, got) in checks.items()
            if want != got
        )
    return problems


def test_tree_is_what_the_generator_meant(standard_tree: Manifest) -> None:
    assert _intent_mismatches(standard_tree) == []
    assert set(standard_tree.entries) == set(standard_tree.made)


def test_every_feature_is_present(standard_tree: Manifest) -> None:
    missing = set(FEATURES) - {"big_dir"} - {k for k, v in standard_tree.features.items() if v}
    assert not missing
    for feature, paths in standard_tree.features.items():
        assert all(p in standard_tree.entries for p in paths), feature


def test_tree_covers_the_edge_cases(standard_tree: Manifest) -> None:
    entries = standard_tree.entries
    nlinks = {e.nlink for e in entries.values() if e.kind == "reg"}
    assert {2, 3} <= nlinks
    devices = [e for e in entries.values() if e.kind in ("chr", "blk")]
    assert any(os.major(e.rdev) > 255 for e in devices)
    assert any(os.minor(e.rdev) > 255 for e in devices)
    assert any(os.major(e.rdev) == 4095 and os.minor(e.rdev) == 1048575 for e in devices)
    targets = [len(e.target or b"") for e in entries.values() if e.kind == "lnk"]
    assert min(targets) == 1 and max(targets) == 1000 and 59 in targets and 60 in targets
    names = [p.rsplit(b"/", 1)[1] for p in entries]
    assert max(len(n) for n in names) == 255
    assert standard_tree.paths("name_non_utf8")
    ids = {e.uid for e in entries.values()} | {e.gid for e in entries.values()}
    assert max(ids) == 2**32 - 2 and 65536 in ids
    modes = {stat.S_IMODE(e.mode) for e in entries.values()}
    assert {0o4755, 0o2755, 0o1777, 0o7777, 0o000} <= modes
    times = [t for e in entries.values() for t in (e.atime_ns, e.mtime_ns)]
    assert min(times) == -(2**31) * NS and max(times) == (2**34 - 2**31 - 1) * NS
    assert any(t % NS for t in times if t < 0) and any(t % NS for t in times if t > 2**31 * NS)
    sizes = {e.size for e in entries.values() if e.kind == "reg"}
    assert {0, 1, 4095, 4096, 4097} <= sizes and max(sizes) > 64 * 2**20
    islands = entries[standard_tree.paths("deep_extents")[0]]
    assert islands.blocks * 512 < islands.size // 3  # mostly holes
    xattr_names = {n for e in entries.values() for n in e.xattrs}
    assert {
        b"system.posix_acl_access",
        b"system.posix_acl_default",
        b"security.capability",
    } <= xattr_names


def test_tree_is_deterministic(tmp_path: Path) -> None:
    one = build_tree(tmp_path / "one", "tiny")
    two = build_tree(tmp_path / "two", "tiny")
    assert one.made == two.made
    assert one.features == two.features
    # ctimes are the build's; atimes of linked symlinks move when the first name is read.
    assert diff_scans(one.entries, two.entries, ignore=("ctime_ns", "lnk:atime_ns")) == []


def test_big_directory(images: ImageCache) -> None:
    manifest = images.tree("bigdir")
    (big,) = manifest.paths("big_dir")
    children = [p for p in manifest.entries if p.startswith(big + b"/")]
    assert len(children) >= 10_000
    assert max(len(p) - len(big) - 1 for p in children) == 255
    assert _intent_mismatches(manifest) == []
