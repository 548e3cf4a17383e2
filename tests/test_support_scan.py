"""The scans and their comparison: same shape from the kernel and from the library API."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from drivers.base import Attr, BlockReader, CorruptImage, DirEntry, NoSuchAttribute, StatFs, Volume
from tests.support.images import ImageCache
from tests.support.scan import (
    Entry,
    assert_same_tree,
    assert_scans_equal,
    attr_of_stat,
    diff_scans,
    scan_path,
    scan_path_isolated,
    scan_volume,
    without,
)


class PathVolume(Volume):
    """A Volume serving a directory of the host through os calls (inode numbers = st_ino).

    What scan_volume makes of it must be what scan_path makes of the directory itself.
    """

    fs_type = "path"

    def __init__(self, root: Path) -> None:
        self.paths: dict[int, bytes] = {}
        base = os.fsencode(root)
        self.root_ino = os.lstat(base).st_ino
        stack = [base]
        while stack:
            path = stack.pop()
            st = os.lstat(path)
            self.paths.setdefault(st.st_ino, path)
            if stat.S_ISDIR(st.st_mode):
                stack.extend(os.path.join(path, name) for name in os.listdir(path))

    @classmethod
    def probe(cls, reader: BlockReader) -> bool:
        return False

    @classmethod
    def open(cls, reader: BlockReader, options: Mapping[str, str]) -> Volume:
        raise NotImplementedError

    def getattr(self, ino: int) -> Attr:
        return attr_of_stat(os.lstat(self.paths[ino]))

    def lookup(self, dir_ino: int, name: bytes) -> int:
        return os.lstat(os.path.join(self.paths[dir_ino], name)).st_ino

    def readdir(self, dir_ino: int, offset: int = 0) -> Iterator[DirEntry]:
        names = sorted(os.listdir(self.paths[dir_ino]))
        for index, name in enumerate(names[offset:], offset + 1):
            yield DirEntry(name, self.lookup(dir_ino, name), index)

    def read(self, ino: int, offset: int, size: int) -> bytes:
        with open(self.paths[ino], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def readlink(self, ino: int) -> bytes:
        return os.readlink(self.paths[ino])

    def listxattr(self, ino: int) -> list[bytes]:
        return [os.fsencode(n) for n in os.listxattr(self.paths[ino], follow_symlinks=False)]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        try:
            return os.getxattr(self.paths[ino], name, follow_symlinks=False)
        except OSError as exc:
            raise NoSuchAttribute(name.decode()) from exc

    def statfs(self) -> StatFs:
        return StatFs(4096, 0, 0, 0, 0, 0)


def _entry(**kw: object) -> Entry:
    fields: dict[str, object] = {
        "kind": "reg",
        "mode": 0o100644,
        "uid": 0,
        "gid": 0,
        "size": 0,
        "nlink": 1,
    }
    fields.update(kw)
    return Entry(**fields)  # type: ignore[arg-type]


def test_equal_scans_have_no_differences() -> None:
    scan = {b"/": _entry(kind="dir", mode=0o40755), b"/a": _entry(xattrs={b"user.x": b"1"})}
    assert diff_scans(scan, dict(scan)) == []
    assert_scans_equal(scan, dict(scan))


def test_differences_are_described() -> None:
    want = {
        b"/": _entry(kind="dir", mode=0o40755),
        b"/f": _entry(size=3, mtime_ns=-1, xattrs={b"user.a": b"1", b"user.b": b"2"}),
        b"/dev": _entry(kind="chr", mode=0o20600, rdev=os.makedev(300, 70000)),
        b"/gone": _entry(),
    }
    got = {
        b"/": _entry(kind="dir", mode=0o40755),
        b"/f": _entry(size=4, mtime_ns=0, xattrs={b"user.a": b"9"}, errors=("read: boom",)),
        b"/dev": _entry(kind="chr", mode=0o20600, rdev=os.makedev(44, 5)),
        b"/new\xff": _entry(),
    }
    lines = diff_scans(want, got)
    text = "\n".join(lines)
    assert "/gone: missing (reg)" in text
    assert "/new\\xff: unexpected" in text
    assert "/f: size expected 3, got 4" in text
    assert "1969-12-31T23:59:59.999999999 (-1)" in text
    assert "/f: xattr b'user.a': expected b'1', got b'9'" in text
    assert "/f: xattr b'user.b': expected b'2', got None" in text
    assert "/f: error: read: boom" in text
    assert "rdev expected 300:70000, got 44:5" in text
    assert (
        diff_scans(want, got, ignore=("paths", "size", "mtime_ns", "xattrs", "errors", "rdev"))
        == []
    )
    assert not any("size" in line for line in diff_scans(want, got, ignore=("reg:size",)))
    assert any("xattr b'user.b'" in line for line in diff_scans(want, got, ("xattr:user.a",)))


def test_hard_link_grouping_is_compared_not_inode_numbers() -> None:
    want = {b"/a": _entry(ino=5, nlink=2), b"/b": _entry(ino=5, nlink=2), b"/c": _entry(ino=6)}
    same = {b"/a": _entry(ino=7, nlink=2), b"/b": _entry(ino=7, nlink=2), b"/c": _entry(ino=8)}
    split = {b"/a": _entry(ino=7, nlink=2), b"/b": _entry(ino=9, nlink=2), b"/c": _entry(ino=8)}
    assert diff_scans(want, same) == []
    assert any("hard links" in line for line in diff_scans(want, split))
    assert diff_scans(want, split, ignore=("links",)) == []
    assert any("ino expected 5, got 7" in line for line in diff_scans(want, same, check_ino=True))


def test_assertion_shows_the_first_differences() -> None:
    want = {b"/%d" % i: _entry(size=i) for i in range(100)}
    got = {b"/%d" % i: _entry(size=i + 1) for i in range(100)}
    with pytest.raises(AssertionError) as info:
        assert_scans_equal(want, got, label="demo", limit=30)
    message = str(info.value)
    assert message.startswith("demo: 100 difference(s)")
    assert message.count("size expected") == 30
    assert "... and 70 more" in message


def test_content_difference_is_located(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(bytes(300_000))
    before = scan_path(tmp_path)
    with open(tmp_path / "f", "r+b") as f:
        f.seek(200_000)
        f.write(b"x")
    after = scan_path(tmp_path)
    lines = [line for line in diff_scans(before, after) if "contents" in line]
    assert lines == [lines[0]] and "first difference in bytes 196608..262144" in lines[0]


def test_scan_volume_has_the_shape_of_scan_path(images: ImageCache) -> None:
    """The library walk and the kernel walk agree entry for entry on the same tree."""
    manifest = images.tree("standard")
    kernel = scan_path(manifest.root)
    library = scan_volume(PathVolume(manifest.root), use_lookup=True)
    assert_scans_equal(kernel, library, ignore=("atime_ns",))  # the library reads update atimes
    assert {e.kind for e in library.values()} >= {"dir", "reg", "lnk", "chr", "blk", "fifo", "sock"}


def test_driver_errors_are_recorded_not_raised(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"fine")
    (tmp_path / "bad").write_bytes(b"bad")
    (tmp_path / "link").symlink_to("ok")

    class Broken(PathVolume):
        def read(self, ino: int, offset: int, size: int) -> bytes:
            if self.paths[ino].endswith(b"bad"):
                raise CorruptImage("extent tree loops")
            return super().read(ino, offset, size)

        def readlink(self, ino: int) -> bytes:
            raise IndexError("out of range")

    scan = scan_volume(Broken(tmp_path))
    assert scan[b"/bad"].errors == ("read at 0: CorruptImage: extent tree loops",)
    assert scan[b"/bad"].sha256 is None
    assert scan[b"/link"].errors == ("readlink: IndexError: out of range",)
    assert scan[b"/ok"].errors == ()
    lines = diff_scans(scan_path(tmp_path), scan)
    assert "/bad: error: read at 0: CorruptImage: extent tree loops" in lines


def test_volume_that_reads_past_eof_is_caught(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")

    class Overlong(PathVolume):
        def read(self, ino: int, offset: int, size: int) -> bytes:
            return b"z" * size if offset < 10 else b""

    entry = scan_volume(Overlong(tmp_path), chunk=4)[b"/f"]
    assert entry.sha256 != scan_path(tmp_path)[b"/f"].sha256


def test_same_tree_of_two_directories(tmp_path: Path) -> None:
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "f").write_bytes(b"same")
        os.utime(tmp_path / side / "f", ns=(1, 2))
        os.utime(tmp_path / side, ns=(3, 4))
    os.utime(tmp_path / "a", ns=(3, 4))
    assert_same_tree(tmp_path / "a", tmp_path / "b", ignore=("ctime_ns",))
    (tmp_path / "b" / "f").write_bytes(b"diff")
    with pytest.raises(AssertionError, match="contents differ"):
        assert_same_tree(tmp_path / "a", tmp_path / "b", ignore=("ctime_ns", "mtime_ns"))


def test_without_drops_subtrees() -> None:
    scan = {p: _entry() for p in (b"/", b"/lost+found", b"/lost+found/x", b"/lost+foundx")}
    assert set(without(scan, b"/lost+found")) == {b"/", b"/lost+foundx"}


def test_isolated_scan(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    os.mkfifo(tmp_path / "pipe")  # never opened: a scan does not block on it
    assert scan_path_isolated(tmp_path) == scan_path(tmp_path)
    with pytest.raises(TimeoutError):
        scan_path_isolated(tmp_path, timeout=0.001)
