"""Running the real ``pyfsmount`` command in tests, and cleaning up after it.

Mounts are always made by a separate process (never in the test process, which would
deadlock reading its own mount), and every test leaves no mount and no daemon behind,
even when it fails.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fusefs.mount import unescape_mountinfo

PROJECT = Path(__file__).resolve().parent.parent
PYFSMOUNT = [sys.executable, "-m", "fusefs"]
SAMPLE_IMAGE = PROJECT / "images" / "sample-ext4.img"
TEST_USER = "pyfsmount-test"


def sample_copy(directory: Path, cached: bool) -> Path:
    """A copy of the sample image that no other test reads, left in the page cache or
    evicted from it: a driver reads a cached image through the cache, any other around
    it with O_DIRECT (fusefs.driver.image_cached), and holds descriptors to match."""
    copy = directory / "sample-copy.img"
    copy.write_bytes(SAMPLE_IMAGE.read_bytes())
    fd = os.open(copy, os.O_RDONLY)
    try:
        os.fsync(fd)
        if not cached:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return copy


@dataclass(frozen=True)
class MountInfo:
    fs_type: str
    source: str
    options: frozenset[str]  # per-mount and super-block options together


def mount_at(path: str | os.PathLike[str]) -> MountInfo | None:
    """The topmost mount exactly at ``path``, from /proc/self/mountinfo (never stats it)."""
    target = os.fsencode(os.path.realpath(path))
    found = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            if unescape_mountinfo(fields[4]) == target:
                tail = fields.index(b"-")
                options = fields[5].split(b",") + fields[tail + 3].split(b",")
                found = MountInfo(
                    fields[tail + 1].decode(),
                    os.fsdecode(unescape_mountinfo(fields[tail + 2])),
                    frozenset(o.decode() for o in options),
                )
    return found


def mounted_fs_type(path: str | os.PathLike[str]) -> str | None:
    info = mount_at(path)
    return None if info is None else info.fs_type


def mount_options(path: str | os.PathLike[str]) -> frozenset[str]:
    info = mount_at(path)
    return frozenset() if info is None else info.options


def mount_source(path: str | os.PathLike[str]) -> str | None:
    info = mount_at(path)
    return None if info is None else info.source


def wait_for(predicate: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def driver_pids() -> list[int]:
    """Every pyfsmount driver process on the machine."""
    return pids_running(b"fusefs.driver", zombies=True)


def pids_running(needle: bytes, zombies: bool = False) -> list[int]:
    """Processes whose command line contains ``needle`` (not yet reaped ones too, if asked)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if needle in cmdline and (zombies or state != "Z"):
            pids.append(int(entry))
    return pids


def pids_mentioning(path: str | os.PathLike[str]) -> list[int]:
    """Processes whose command line names ``path`` (the detached pyfsmount supervisor)."""
    needle = os.fsencode(os.path.realpath(path))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().split(") ")[-1][0]
        except OSError:
            continue
        if b"fusefs" in cmdline and needle in cmdline and state != "Z":
            pids.append(int(entry))
    return pids


def force_unmount(path: str | os.PathLike[str]) -> None:
    while mounted_fs_type(path) is not None:
        subprocess.run(["umount", "-l", os.fspath(path)], check=False, capture_output=True)


def run_pyfsmount(
    *args: str, user: str | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [*PYFSMOUNT, *args]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def payload_env(payload: str, **more: str) -> dict[str, str]:
    """The environment that makes every driver run ``payload`` of tests/sandbox_payloads.py.

    Drivers start with ``python -P``: the working directory is not on their sys.path, so
    the project (where ``tests`` lives, uninstalled) is named in PYTHONPATH.
    """
    return {"PYFSMOUNT_TEST_PAYLOAD": payload, "PYTHONPATH": str(PROJECT), **more}


def poisoned_directory(root: Path) -> tuple[Path, Path]:
    """(directory, marker): a directory holding a ``fusefs`` package of someone else's,
    which leaves ``marker`` behind if any process imports it."""
    directory, marker = root / "poisoned", root / "poisoned-imported"
    (directory / "fusefs").mkdir(parents=True)
    payload = f"open({str(marker)!r}, 'w').close()\nraise SystemExit(99)\n"
    for module in ("__init__.py", "driver.py", "template.py"):
        (directory / "fusefs" / module).write_text(payload)
    return directory, marker


def mount_image(
    image: str | os.PathLike[str], target: str | os.PathLike[str], *options: str
) -> subprocess.CompletedProcess[str]:
    """``pyfsmount [-o OPT]... IMAGE TARGET``, which must succeed."""
    args = [arg for option in options for arg in ("-o", option)]
    result = run_pyfsmount(*args, os.fspath(image), os.fspath(target))
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """An empty directory to mount on; whatever is mounted there is gone afterwards."""
    target = tmp_path / "mnt"
    target.mkdir()
    try:
        yield target
    finally:
        force_unmount(target)
        wait_for(lambda: not pids_mentioning(target), what=f"daemons of {target} to exit")


@pytest.fixture(scope="session")
def test_user() -> str:
    """An unprivileged account for the tests that run pyfsmount as an ordinary user."""
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
        )
    return TEST_USER


def user_ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def as_user(user: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", *command], capture_output=True, text=True, check=False
    )
