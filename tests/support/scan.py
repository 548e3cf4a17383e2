"""Scans of a whole file system, and the differences between two scans.

A scan maps every path (bytes, absolute inside the file system: ``b"/"`` is the root,
``b"/dir/name"`` a child) to an :class:`Entry` with everything ``stat``, ``readlink``,
``read`` and the xattr calls show.  Three producers share that shape:

* :func:`scan_path` walks a mounted tree through the kernel (a loop mount, a FUSE mount,
  or a source directory);
* :func:`scan_volume` walks a :class:`drivers.base.Volume` through the library API;
* :func:`tests.support.trees.build_tree` records one of a source tree as its manifest.

:func:`diff_scans` lists the differences in words; :func:`assert_scans_equal` fails a test
with the first ones; :func:`assert_same_tree` does both for two mounted directories (the
FUSE differential test: kernel mount vs pyfsmount mount of the same image).

Errors met while scanning (EIO from a FUSE mount, a driver exception) do not stop a scan:
they are recorded in :attr:`Entry.errors` and show up as differences.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import hashlib
import os
import pickle
import resource
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.base import Attr, BlockReader, Volume
from drivers.registry import open_volume

#: Bytes read per call when hashing file contents.
CHUNK = 1 << 20
#: Granularity of the per-range digests that locate a content difference.
PIECE = 1 << 16
#: A directory listing longer than this is reported as an error (a loop in a corrupt image).
MAX_DIR_ENTRIES = 1_000_000

Scan = dict[bytes, "Entry"]

KINDS: dict[int, str] = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "reg",
    stat.S_IFLNK: "lnk",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "sock",
}


def attr_of_stat(st: os.stat_result) -> Attr:
    """What a driver's getattr should answer for a file the kernel stats as ``st``."""
    return Attr(
        ino=st.st_ino,
        mode=st.st_mode,
        nlink=st.st_nlink,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        rdev=st.st_rdev,
        blocks=st.st_blocks,
        atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
    )


def kind_of(mode: int) -> str:
    """``"dir"``, ``"reg"``, ``"lnk"``, ``"chr"``, ``"blk"``, ``"fifo"``, ``"sock"`` or ``"?"``."""
    return KINDS.get(stat.S_IFMT(mode), "?")


@dataclass(frozen=True, slots=True)
class Entry:
    """Everything observable about one path, as one view of the file system shows it.

    ``ino`` is recorded but not part of equality: inode numbers of two views need not
    agree, only the grouping of hard links (checked by :func:`diff_scans`).  ``pieces``
    (digests of each 64 KiB of a regular file) only serve to locate a content
    difference.  ``xattrs`` is excluded from the hash (a dict), not from equality.
    """

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    rdev: int = 0
    blocks: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    sha256: str | None = None
    target: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict, hash=False)
    errors: tuple[str, ...] = ()
    ino: int = field(default=0, compare=False)
    pieces: tuple[str, ...] = field(default=(), compare=False, repr=False)


#: Fields :func:`diff_scans` compares, in the order it reports them.
FIELDS: tuple[str, ...] = (
    "kind",
    "mode",
    "uid",
    "gid",
    "size",
    "nlink",
    "rdev",
    "blocks",
    "atime_ns",
    "mtime_ns",
    "ctime_ns",
    "sha256",
    "target",
    "xattrs",
    "errors",
)


class _Hasher:
    """sha256 of a whole stream plus short digests of each :data:`PIECE` of it."""

    def __init__(self) -> None:
        self.total = hashlib.sha256()
        self.pieces: list[str] = []
        self._piece = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        self.total.update(data)
        view = memoryview(data)
        while view:
            take = min(len(view), PIECE - self._filled)
            self._piece.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == PIECE:
                self._flush()

    def _flush(self) -> None:
        self.pieces.append(self._piece.hexdigest()[:16])
        self._piece = hashlib.sha256()
        self._filled = 0

    def finish(self) -> tuple[str, tuple[str, ...]]:
        if self._filled:
            self._flush()
        return self.total.hexdigest(), tuple(self.pieces)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + name if parent.endswith(b"/") else parent + b"/" + name


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}: {errno.errorcode.get(exc.errno, exc.errno)}"
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- kernel side


def _path_xattrs(path: bytes, errors: list[str]) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        errors.append(f"listxattr: {_describe(exc)}")
        return {}
    result: dict[bytes, bytes] = {}
    for name in names:
        key = os.fsencode(name)
        try:
            result[key] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            errors.append(f"getxattr {key!r}: {_describe(exc)}")
    return dict(sorted(result.items()))


def _open_noatime(path: bytes, flags: int) -> int:
    """open(2) without moving the atime where allowed (a source tree is read repeatedly)."""
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


def list_dir(path: bytes) -> list[bytes]:
    fd = _open_noatime(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return sorted(os.fsencode(name) for name in os.listdir(fd))
    finally:
        os.close(fd)


def _hash_path(path: bytes, errors: list[str]) -> tuple[str | None, tuple[str, ...]]:
    hasher = _Hasher()
    buffer = bytearray(CHUNK)
    try:
        fd = _open_noatime(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        errors.append(f"open: {_describe(exc)}")
        return None, ()
    try:
        with open(fd, "rb", buffering=0, closefd=False) as stream:
            while True:
                count = stream.readinto(buffer)
                if not count:
                    break
                hasher.update(memoryview(buffer)[:count])
    except OSError as exc:
        errors.append(f"read: {_describe(exc)}")
        return None, ()
    finally:
        os.close(fd)
    return hasher.finish()


def entry_of_path(path: bytes, *, contents: bool = True) -> Entry:
    """The :class:`Entry` of one path (not following a final symlink)."""
    errors: list[str] = []
    st = os.lstat(path)
    kind = kind_of(st.st_mode)
    digest: str | None = None
    pieces: tuple[str, ...] = ()
    target: bytes | None = None
    if kind == "reg" and contents:
        digest, pieces = _hash_path(path, errors)
    elif kind == "lnk":
        try:
            target = os.readlink(path)
        except OSError as exc:
            errors.append(f"readlink: {_describe(exc)}")
    xattrs = _path_xattrs(path, errors)
    return _entry(kind, attr_of_stat(st), digest, pieces, target, xattrs, errors)


def scan_path(
    root: str | bytes | os.PathLike[str] | os.PathLike[bytes], *, contents: bool = True
) -> Scan:
    """Walk a mounted tree through the kernel: lstat, read, readlink and xattrs of every path.

    Symlinks are never followed and the walk does not cross into other mounts.  Keys are
    ``b"/"`` for ``root`` itself and ``b"/a/b"`` for what lies under it.  Files and
    directories are opened with O_NOATIME where allowed, so scanning a source tree does
    not move its atimes.  ``contents=False`` skips reading files.
    """
    base = os.fsencode(root).rstrip(b"/") or b"/"
    root_dev = os.lstat(base).st_dev
    result: Scan = {}
    stack: list[bytes] = [b"/"]
    while stack:
        rel = stack.pop()
        full = base if rel == b"/" else base + rel
        try:
            entry = entry_of_path(full, contents=contents)
        except OSError as exc:
            result[rel] = Entry("?", 0, 0, 0, 0, 0, errors=(f"lstat: {_describe(exc)}",))
            continue
        if entry.kind == "dir" and (rel == b"/" or os.lstat(full).st_dev == root_dev):
            try:
                names = list_dir(full)
            except OSError as exc:
                entry = dataclasses.replace(
                    entry, errors=(*entry.errors, f"readdir: {_describe(exc)}")
                )
                names = []
            stack.extend(_join(rel, name) for name in reversed(names))
        result[rel] = entry
    return result


_SCAN_CHILD = """
import os, pickle, sys
from tests.support.scan import scan_path
result = scan_path(os.fsencode(sys.argv[1]), contents=sys.argv[2] == "1")
sys.stdout.buffer.write(pickle.dumps(result))
"""


def scan_path_isolated(
    root: str | os.PathLike[str],
    *,
    timeout: float = 120.0,
    contents: bool = True,
    max_memory: int = 4 << 30,
) -> Scan:
    """:func:`scan_path` in a child process killed after ``timeout`` seconds.

    For mounts served by code under test (FUSE): a daemon that stops answering makes
    the scan raise TimeoutError instead of hanging the test run, and a tree that never
    ends (a directory loop) makes it fail on its address-space limit (RuntimeError)
    instead of exhausting the machine.
    """

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))

    project = Path(__file__).resolve().parents[2]
    try:
        result = subprocess.run(
            [sys.executable, "-c", _SCAN_CHILD, os.fspath(root), "1" if contents else "0"],
            capture_output=True,
            timeout=timeout,
            cwd=project,
            env={**os.environ, "PYTHONPATH": os.fspath(project)},
            check=False,
            preexec_fn=limit_memory,
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"scanning {root} took more than {timeout} s") from exc
    if result.returncode != 0:
        raise RuntimeError(f"scanning {root} failed:\n{result.stderr.decode(errors='replace')}")
    scan: Scan = pickle.loads(result.stdout)
    return scan


# --------------------------------------------------------------------------- library side


def _volume_xattrs(volume: Volume, ino: int, errors: list[str]) -> dict[bytes, bytes]:
    try:
        names = list(volume.listxattr(ino))
    except Exception as exc:
        errors.append(f"listxattr: {_describe(exc)}")
        return {}
    result: dict[bytes, bytes] = {}
    for name in names:
        try:
            result[bytes(name)] = bytes(volume.getxattr(ino, name))
        except Exception as exc:
            errors.append(f"getxattr {name!r}: {_describe(exc)}")
    if len(result) != len(names):
        errors.append(f"listxattr: duplicate names {sorted(names)!r}")
    return dict(sorted(result.items()))


def _hash_volume(
    volume: Volume, ino: int, size: int, errors: list[str], chunk: int
) -> tuple[str | None, tuple[str, ...]]:
    hasher = _Hasher()
    offset = 0
    limit = size + chunk  # read a little past the size to catch data beyond EOF
    try:
        while offset <= limit:
            data = volume.read(ino, offset, chunk)
            if len(data) > chunk:
                errors.append(f"read: {len(data)} bytes at {offset} for a request of {chunk}")
                return None, ()
            if not data:
                break
            hasher.update(data)
            offset += len(data)
            if len(data) < chunk and offset < size:
                errors.append(f"read: short read of {len(data)} bytes ending at {offset} < {size}")
                break
    except Exception as exc:
        errors.append(f"read at {offset}: {_describe(exc)}")
        return None, ()
    return hasher.finish()


def entry_of_attr(
    volume: Volume, attr: Attr, *, contents: bool = True, chunk: int = CHUNK
) -> Entry:
    """The :class:`Entry` of one inode through the library API."""
    errors: list[str] = []
    kind = kind_of(attr.mode)
    digest: str | None = None
    pieces: tuple[str, ...] = ()
    target: bytes | None = None
    if kind == "reg" and contents:
        digest, pieces = _hash_volume(volume, attr.ino, attr.size, errors, chunk)
    elif kind == "lnk":
        try:
            target = bytes(volume.readlink(attr.ino))
        except Exception as exc:
            errors.append(f"readlink: {_describe(exc)}")
    xattrs = _volume_xattrs(volume, attr.ino, errors)
    return _entry(kind, attr, digest, pieces, target, xattrs, errors)


def _entry(
    kind: str,
    attr: Attr,
    digest: str | None,
    pieces: tuple[str, ...],
    target: bytes | None,
    xattrs: dict[bytes, bytes],
    errors: list[str],
) -> Entry:
    """One Entry, whichever view (a mounted path or the library) the attributes came from."""
    return Entry(
        kind=kind,
        mode=attr.mode,
        uid=attr.uid,
        gid=attr.gid,
        size=attr.size,
        nlink=attr.nlink,
        rdev=attr.rdev if kind in ("chr", "blk") else 0,
        blocks=attr.blocks,
        atime_ns=attr.atime_ns,
        mtime_ns=attr.mtime_ns,
        ctime_ns=attr.ctime_ns,
        sha256=digest,
        target=target,
        xattrs=xattrs,
        errors=tuple(errors),
        ino=attr.ino,
        pieces=pieces,
    )


def scan_volume(
    volume: Volume, *, use_lookup: bool = False, contents: bool = True, chunk: int = CHUNK
) -> Scan:
    """Walk a volume through the library API, producing the same shape as :func:`scan_path`.

    Children come from ``readdir`` (or, with ``use_lookup``, each name is resolved again
    with ``lookup`` as the kernel does through FUSE).  Directories met twice (a loop in a
    corrupt image) are not entered again.  Driver exceptions become :attr:`Entry.errors`.
    ``contents=False`` skips reading files (``sha256`` stays None).
    """
    result: Scan = {}
    entered: set[int] = set()
    stack: list[tuple[bytes, int, int | None]] = [(b"/", volume.root_ino, None)]
    while stack:
        path, ino, parent = stack.pop()
        extra: list[str] = []
        if use_lookup and parent is not None:
            try:
                found = volume.lookup(parent, path.rsplit(b"/", 1)[1])
                if found != ino:
                    extra.append(f"lookup: ino {found}, readdir said {ino}")
                ino = found
            except Exception as exc:
                extra.append(f"lookup: {_describe(exc)}")
        try:
            attr = volume.getattr(ino)
        except Exception as exc:
            result[path] = Entry(
                "?", 0, 0, 0, 0, 0, errors=(*extra, f"getattr: {_describe(exc)}"), ino=ino
            )
            continue
        if attr.ino != ino:
            extra.append(f"getattr: Attr.ino {attr.ino} for ino {ino}")
        entry = entry_of_attr(volume, attr, contents=contents, chunk=chunk)
        if entry.kind == "dir":
            if ino in entered:
                extra.append("readdir: directory reached twice (loop)")
            else:
                entered.add(ino)
                children: list[tuple[bytes, int]] = []
                try:
                    for dirent in volume.readdir(ino, 0):
                        children.append((bytes(dirent.name), dirent.ino))
                        if len(children) > MAX_DIR_ENTRIES:
                            extra.append("readdir: endless listing")
                            break
                except Exception as exc:
                    extra.append(f"readdir: {_describe(exc)}")
                names = [name for name, _ in children]
                if len(set(names)) != len(names):
                    extra.append("readdir: duplicate names")
                if b"." in names or b".." in names:
                    extra.append("readdir: lists . or ..")
                for name, child in sorted(children, reverse=True):
                    if name not in (b".", b".."):
                        stack.append((_join(path, name), child, ino))
        if extra:
            entry = dataclasses.replace(entry, errors=(*entry.errors, *extra))
        result[path] = entry
    return result


# --------------------------------------------------------------------------- comparison


def show_path(path: bytes) -> str:
    """A path as text, with bytes that are not printable ASCII escaped (b"\\xff")."""
    return repr(path)[2:-1]


def _fmt_time(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    try:
        when = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
        text = when.strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        text = f"{seconds}s"
    return f"{text}.{frac:09d} ({ns})"


def _fmt_bytes(value: bytes | None, limit: int = 60) -> str:
    if value is None:
        return "None"
    shown = repr(value[:limit])
    return shown + (f"...({len(value)} bytes)" if len(value) > limit else "")


def format_value(name: str, value: Any) -> str:
    """A field's value as a human reads it (octal modes, dates, major:minor)."""
    if name == "mode":
        return f"0o{value:o}"
    if name == "rdev":
        return f"{os.major(value)}:{os.minor(value)}"
    if name.endswith("_ns"):
        return _fmt_time(value)
    if name == "target":
        return _fmt_bytes(value)
    return repr(value)


def _ignored(ignore: Iterable[str], kind: str, name: str) -> bool:
    return name in ignore or f"{kind}:{name}" in ignore


def _link_groups(scan: Mapping[bytes, Entry]) -> dict[bytes, frozenset[bytes]]:
    """Each non-directory path -> the paths sharing its inode (one set object per inode:
    a corrupt image may give thousands of names one inode)."""
    by_ino: dict[int, set[bytes]] = {}
    for path, entry in scan.items():
        if entry.kind not in ("dir", "?"):
            by_ino.setdefault(entry.ino, set()).add(path)
    groups = [frozenset(group) for group in by_ino.values()]
    return {path: group for group in groups for path in group}


def _content_hint(expected: Entry, actual: Entry) -> str:
    for index, (a, b) in enumerate(zip(expected.pieces, actual.pieces, strict=False)):
        if a != b:
            return f" (first difference in bytes {index * PIECE}..{(index + 1) * PIECE})"
    if len(expected.pieces) != len(actual.pieces):
        shorter = min(len(expected.pieces), len(actual.pieces))
        return f" (same for the first {shorter * PIECE} bytes, then lengths differ)"
    return ""


def diff_entries(
    path: bytes, expected: Entry, actual: Entry, ignore: Iterable[str] = ()
) -> list[str]:
    """The differences between two entries of one path, one line each."""
    ignore = frozenset(ignore)
    lines: list[str] = []
    where = show_path(path)
    kind = expected.kind
    for name in FIELDS:
        if _ignored(ignore, kind, name):
            continue
        want, got = getattr(expected, name), getattr(actual, name)
        if want == got:
            continue
        if name == "xattrs":
            for key in sorted(set(want) | set(got)):
                if _ignored(ignore, kind, "xattr:" + key.decode(errors="replace")):
                    continue
                a, b = want.get(key), got.get(key)
                if a != b:
                    lines.append(
                        f"{where}: xattr {key!r}: expected {_fmt_bytes(a)}, got {_fmt_bytes(b)}"
                    )
        elif name == "errors":
            lines.extend(f"{where}: error: {message}" for message in got if message not in want)
            lines.extend(f"{where}: expected error: {m}" for m in want if m not in got)
        elif name == "sha256":
            lines.append(
                f"{where}: contents differ{_content_hint(expected, actual)}"
                f" (sha256 expected {want}, got {got})"
            )
        else:
            lines.append(
                f"{where}: {name} expected {format_value(name, want)},"
                f" got {format_value(name, got)}"
            )
    return lines


def diff_scans(
    expected: Mapping[bytes, Entry],
    actual: Mapping[bytes, Entry],
    ignore: Iterable[str] = (),
    *,
    check_ino: bool = False,
) -> list[str]:
    """Human-readable differences between two scans; empty when they agree.

    ``ignore`` names fields not to compare, everywhere (``"ctime_ns"``) or for one kind
    of entry (``"dir:size"``, ``"lnk:blocks"``), one xattr (``"xattr:security.selinux"``),
    ``"links"`` (the grouping of hard links) or ``"paths"`` (entries present on one side
    only).  ``check_ino`` also compares inode numbers.
    """
    ignore = frozenset(ignore)
    lines: list[str] = []
    if "paths" not in ignore:
        lines.extend(
            f"{show_path(p)}: missing ({expected[p].kind})"
            for p in sorted(expected.keys() - actual)
        )
        lines.extend(
            f"{show_path(p)}: unexpected ({actual[p].kind}{', ' if actual[p].errors else ''}"
            f"{'; '.join(actual[p].errors)})"
            for p in sorted(actual.keys() - expected)
        )
    common = sorted(expected.keys() & actual.keys())
    want_groups, got_groups = _link_groups(expected), _link_groups(actual)
    compared_groups: set[tuple[int, int]] = set()
    for path in common:
        want, got = expected[path], actual[path]
        lines.extend(diff_entries(path, want, got, ignore))
        if check_ino and want.ino != got.ino and not _ignored(ignore, want.kind, "ino"):
            lines.append(f"{show_path(path)}: ino expected {want.ino}, got {got.ino}")
        if "links" not in ignore and path in want_groups and path in got_groups:
            pair = (id(want_groups[path]), id(got_groups[path]))
            if pair in compared_groups:
                continue  # the same two groups, already compared through another path
            compared_groups.add(pair)
            a = want_groups[path] & actual.keys()
            b = got_groups[path] & expected.keys()
            if a != b:
                lines.append(f"{show_path(path)}: hard links expected {sorted(a)}, got {sorted(b)}")
    return lines


def assert_scans_equal(
    expected: Mapping[bytes, Entry],
    actual: Mapping[bytes, Entry],
    ignore: Iterable[str] = (),
    *,
    label: str = "",
    limit: int = 30,
    check_ino: bool = False,
) -> None:
    """Fail with the first ``limit`` differences (and how many there were in all)."""
    lines = diff_scans(expected, actual, ignore, check_ino=check_ino)
    if lines:
        head = f"{label}: " if label else ""
        shown = "\n  ".join(lines[:limit])
        more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
        raise AssertionError(
            f"{head}{len(lines)} difference(s) between {len(expected)} expected and "
            f"{len(actual)} actual entries:\n  {shown}{more}"
        )


def assert_same_tree(
    kernel_root: str | os.PathLike[str] | None,
    other_root: str | os.PathLike[str],
    ignore: Iterable[str] = (),
    *,
    expected: Mapping[bytes, Entry] | None = None,
    label: str = "",
    timeout: float | None = 120.0,
) -> None:
    """The FUSE differential check: ``other_root`` shows exactly what ``kernel_root`` shows.

    Pass ``expected`` (a cached kernel scan, see ``ImageCache.kernel_scan``) to skip
    rescanning the kernel mount; ``kernel_root`` may then be None.  ``other_root`` is
    scanned in a child process that is killed after ``timeout`` seconds (TimeoutError);
    None scans it in this process.
    """
    if expected is None:
        if kernel_root is None:
            raise ValueError("assert_same_tree needs kernel_root or expected")
        expected = scan_path(kernel_root)
    want = expected
    if timeout is None:
        actual = scan_path(other_root)
    else:
        actual = scan_path_isolated(other_root, timeout=timeout)
    assert_scans_equal(want, actual, ignore, label=label)


def select(scan: Mapping[bytes, Entry], keep: Callable[[bytes, Entry], bool]) -> dict[bytes, Entry]:
    """The entries of ``scan`` for which ``keep(path, entry)`` holds."""
    return {path: entry for path, entry in scan.items() if keep(path, entry)}


def without(scan: Mapping[bytes, Entry], *prefixes: bytes) -> dict[bytes, Entry]:
    """``scan`` minus the given paths and everything below them (e.g. ``b"/lost+found"``)."""
    return select(
        scan,
        lambda p, _: not any(p == x or p.startswith(x.rstrip(b"/") + b"/") for x in prefixes),
    )


@contextmanager
def opened(image: str | os.PathLike[str]) -> Iterator[Volume]:
    """The driver's volume of ``image`` (found by probing), its descriptor closed after."""
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield open_volume(BlockReader(fd))
    finally:
        os.close(fd)
