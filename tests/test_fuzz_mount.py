"""Hostile images through a real mount: refused with one line, or served soundly.

The same mutations as tests/test_fuzz_library.py, fewer of them (a mount costs about
half a second), each mounted with the real ``pyfsmount`` command and walked through the
kernel by a child process under a deadline: every directory listed, every entry
lstat'ed, every symlink read, every regular file read at its start, middle and end,
every xattr read.  Then:

* a refused mount exits 32 with one line on stderr, and is refused exactly when the
  library refuses to open the image;
* every request of the walk was answered (the walk ends in time: nothing hangs);
* the driver process is still alive and the mount still answers ``stat`` and
  ``statfs`` on its root (statfs always reaches the daemon; attributes may be cached);
* every regular file that the library reads from the mutated image exactly as from the
  pristine one (the mutation did not touch it) reads identically through FUSE.

Derandomized, no database; ``PYFSMOUNT_FUZZ_EXAMPLES=N`` runs N examples per format.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.launcher import (
    PROJECT,
    force_unmount,
    mounted_fs_type,
    mountpoint,
    pids_mentioning,
    run_pyfsmount,
    wait_for,
)
from tests.support.fuzzing import (
    FORMATS,
    apply,
    check_image,
    intact_files,
    mutations,
    seed,
    seed_names,
    seed_unavailable,
)

__all__ = ["mountpoint"]

pytestmark = pytest.mark.skipif(
    not Path("/dev/fuse").exists() or os.geteuid() != 0, reason="needs root and /dev/fuse"
)

#: Examples per format (its seeds drawn in turn): about 1 s each.
EXAMPLES = int(os.environ.get("PYFSMOUNT_FUZZ_EXAMPLES", "0")) or 15
#: Seconds the whole walk of one mount may take: the seeds hold ~150 inodes and a
#: request over its CPU budget is abandoned by the daemon after 5 s (request_timeout).
WALK_TIMEOUT = 60.0
#: Seconds a single request may take, as the walk measures it.
REQUEST_TIMEOUT = 15.0

#: The child that walks a mount through the kernel.  argv[1] is the mount point; stdin
#: holds the JSON list of paths to read whole.  It prints a JSON report: sha256 of the
#: files read whole, errno counts, the slowest request.
WALKER = r"""
import hashlib, json, os, stat, sys, time
root = sys.argv[1]
whole = set(json.load(sys.stdin))
report = {"sha256": {}, "errors": {}, "entries": 0, "slowest": [0.0, ""]}

def call(what, fn, *args):
    started = time.monotonic()
    try:
        return fn(*args)
    except OSError as exc:
        key = f"{what}: {os.strerror(exc.errno or 0)}"
        report["errors"][key] = report["errors"].get(key, 0) + 1
        return None
    finally:
        took = time.monotonic() - started
        if took > report["slowest"][0]:
            report["slowest"] = [took, f"{what} {args[0] if args else ''}"]

def listxattr(path):
    return os.listxattr(path, follow_symlinks=False)

def getxattr(path, name):
    return os.getxattr(path, name, follow_symlinks=False)

def read_file(rel, full, size):
    fd = call("open", os.open, full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if fd is None:
        return
    try:
        for offset in (0, size // 2, max(0, size - 5000)):
            call("read", os.pread, fd, 65536, offset)
        if rel in whole:
            digest, offset = hashlib.sha256(), 0
            while True:
                piece = call("read", os.pread, fd, 1 << 20, offset)
                if not piece:
                    break
                digest.update(piece)
                offset += len(piece)
            report["sha256"][rel] = digest.hexdigest()
    finally:
        os.close(fd)

seen = set()
stack = [""]
while stack and report["entries"] < 5000:
    rel = stack.pop()
    full = root + rel
    names = call("listdir", os.listdir, full) or []
    for name in names[:5000]:
        report["entries"] += 1
        child_rel, child = rel + "/" + name, full + "/" + name
        st = call("lstat", os.lstat, child)
        for xattr in call("listxattr", listxattr, child) or []:
            call("getxattr", getxattr, child, xattr)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            stack.append(child_rel)
        elif stat.S_ISLNK(st.st_mode):
            call("readlink", os.readlink, child)
        elif stat.S_ISREG(st.st_mode):
            read_file(child_rel, child, st.st_size)
for rel in sorted(whole - set(report["sha256"])):  # by path, as the library found them
    st = call("stat", os.stat, root + rel)
    if st is not None:
        read_file(rel, root + rel, st.st_size)
json.dump(report, sys.stdout)
"""

#: The child that asks the mount's root for stat and statfs after the walk.
PROBE = r"""
import errno, os, sys
os.stat(sys.argv[1])
try:
    os.statvfs(sys.argv[1])
except OSError as exc:  # a corrupt free-space count is EIO; a dead daemon is not
    if exc.errno != errno.EIO:
        raise
"""


def child(code: str, *args: str, stdin: str = "", timeout: float) -> str:
    """Run ``code`` in a fresh interpreter; a child that does not finish in time fails
    the test (the mount stopped answering)."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", code, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=PROJECT,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the mount stopped answering (no end after {timeout} s)") from exc
    assert result.returncode == 0, result.stderr
    return result.stdout


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (the sandboxed driver runs under its supervisor)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        for kid in parents.get(pending.pop(), []):
            found.append(kid)
            pending.append(kid)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def driver_processes(target: Path) -> list[int]:
    """The driver processes serving the mount at ``target``."""
    return [
        pid
        for supervisor in pids_mentioning(target)
        for pid in children_of(supervisor)
        if b"fusefs.driver" in cmdline(pid)
    ]


def mount_and_walk(image: Path, target: Path, opened: bool, intact: dict[bytes, bytes]) -> None:
    """Mount ``image`` at ``target`` and check what the module docstring promises."""
    result = run_pyfsmount(str(image), str(target), timeout=60)
    if result.returncode != 0:
        assert result.returncode == 32, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert mounted_fs_type(target) is None
        assert not opened, f"the library opens the image, the mount refused it: {lines}"
        return
    try:
        assert opened, "the library refuses the image, the mount took it"
        drivers = driver_processes(target)
        assert drivers, "no driver process found for the mount"
        paths = [os.fsdecode(path) for path in intact]
        walked = child(WALKER, str(target), stdin=json.dumps(paths), timeout=WALK_TIMEOUT)
        report = json.loads(walked)
        slowest, request = report["slowest"]
        assert slowest < REQUEST_TIMEOUT, f"{request} took {slowest:.1f} s"
        assert all(alive(pid) for pid in drivers), f"the driver died; walk: {report['errors']}"
        child(PROBE, str(target), timeout=10)
        for path, contents in intact.items():
            got = report["sha256"].get(os.fsdecode(path))
            assert got == hashlib.sha256(contents).hexdigest(), (
                f"{path!r} reads differently through FUSE ({report['errors']})"
            )
    finally:
        force_unmount(target)
        wait_for(lambda: not pids_mentioning(target), what=f"the daemons of {target} to exit")


@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param(fmt, marks=pytest.mark.skipif(bool(seed_unavailable(fmt)), reason="tools"))
        for fmt in FORMATS
    ],
)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # One mount point for all examples: each example unmounts what it mounted.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_mutated_image_is_refused_cleanly_or_served_soundly(
    fmt: str, data: st.DataObject, mountpoint: Path, tmp_path: Path
) -> None:
    name = data.draw(st.sampled_from(seed_names(fmt)), label="seed")
    s = seed(name)
    mutated = apply(s, data.draw(mutations(s), label="mutations"))
    opened = check_image(mutated).opened  # detected as the mount detects it; the property holds
    intact = intact_files(s, mutated)
    image = tmp_path / "mutated.img"
    image.write_bytes(mutated)
    mount_and_walk(image, mountpoint, opened, intact)
    event("mounted" if opened else "refused")
    event(f"files compared: {len(intact) // 25 * 25}+")


def test_a_pristine_seed_is_served_whole(mountpoint: Path, tmp_path: Path) -> None:
    """The check itself: untouched, every file of a seed reads identically."""
    if seed_unavailable("ext4"):
        pytest.skip("no ext4 seeds here")
    s = seed("ext4-csum")
    image = tmp_path / "pristine.img"
    image.write_bytes(s.image)
    intact = intact_files(s, s.image)
    assert len(intact) >= 425
    mount_and_walk(image, mountpoint, True, intact)
