"""Mount life cycle through the real command: ready on return, clean on every way out."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefs.busypoll import DEFAULT_WINDOW_US
from fusefs.options import OptionError, parse_options
from fusefs.watchdog import DEFAULT_TIMEOUT
from tests.launcher import (
    PROJECT,
    PYFSMOUNT,
    SAMPLE_IMAGE,
    as_user,
    driver_pids,
    force_unmount,
    mount_image,
    mount_options,
    mount_source,
    mounted_fs_type,
    mountpoint,
    pids_mentioning,
    run_pyfsmount,
    test_user,
    user_ids,
    wait_for,
)

__all__ = ["mountpoint", "test_user"]

README_TEXT = b"This is the pyfsmount sample image."


def mount_sample(target: Path, *options: str) -> None:
    assert mount_image(SAMPLE_IMAGE, target, *options).stderr == ""


def daemon_of(target: Path) -> tuple[int, int]:
    """(supervisor pid, driver pid) serving the mount at ``target``."""
    supervisors = pids_mentioning(target)
    assert len(supervisors) == 1, supervisors
    children = [pid for pid in driver_pids() if parent_of(pid) == supervisors[0]]
    assert len(children) == 1, children
    return supervisors[0], children[0]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])


def assert_gone(target: Path) -> None:
    wait_for(lambda: mounted_fs_type(target) is None, what=f"{target} to be unmounted")
    wait_for(lambda: not pids_mentioning(target), what=f"the daemon of {target} to exit")


def test_mount_is_ready_when_the_command_returns(mountpoint: Path) -> None:
    mount_sample(mountpoint)
    assert mounted_fs_type(mountpoint) == "fuse.pyfsmount"
    assert (mountpoint / "README.txt").read_bytes().startswith(README_TEXT)
    assert mount_source(mountpoint) == str(SAMPLE_IMAGE)
    assert {"ro", "nosuid", "nodev", "default_permissions"} <= mount_options(mountpoint)


def test_umount_ends_the_daemon(mountpoint: Path) -> None:
    mount_sample(mountpoint)
    _, driver = daemon_of(mountpoint)
    subprocess.run(["umount", str(mountpoint)], check=True)
    assert_gone(mountpoint)
    wait_for(lambda: driver not in driver_pids(), what="the driver to exit")


def test_fusermount_unmount_ends_the_daemon(mountpoint: Path) -> None:
    mount_sample(mountpoint)
    subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
    assert_gone(mountpoint)


@pytest.mark.parametrize("who", ["supervisor", "driver"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_daemon_unmounts(mountpoint: Path, who: str, signum: int) -> None:
    mount_sample(mountpoint)
    supervisor, driver = daemon_of(mountpoint)
    os.kill(supervisor if who == "supervisor" else driver, signum)
    assert_gone(mountpoint)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("busy_poll", ["busy_poll=200", "busy_poll=0"])
def test_an_idle_driver_uses_no_cpu(mountpoint: Path, busy_poll: str) -> None:
    """Busy polling stops a moment after the last request: idle means asleep."""
    mount_sample(mountpoint, busy_poll)
    _, driver = daemon_of(mountpoint)
    for path in mountpoint.rglob("*"):
        path.lstat()
    before = cpu_seconds(driver)
    time.sleep(1.0)
    assert cpu_seconds(driver) - before < 0.05


def test_busy_poll_takes_microseconds() -> None:
    assert parse_options(["busy_poll=500"]).busy_poll_us == 500
    assert parse_options([]).busy_poll_us == DEFAULT_WINDOW_US
    for bad in ("busy_poll=-1", "busy_poll=2000000", "busy_poll=1ms", "busy_poll"):
        with pytest.raises(OptionError):
            parse_options([bad])


def test_request_timeout_takes_seconds() -> None:
    assert parse_options(["request_timeout=0.5"]).request_timeout == 0.5
    assert parse_options(["request_timeout=0"]).request_timeout == 0
    assert parse_options([]).request_timeout == DEFAULT_TIMEOUT
    for bad in ("request_timeout=-1", "request_timeout=5s", "request_timeout=1e9"):
        with pytest.raises(OptionError):
            parse_options([bad])


def test_a_killed_driver_leaves_no_dead_mount(mountpoint: Path) -> None:
    mount_sample(mountpoint)
    _, driver = daemon_of(mountpoint)
    os.kill(driver, signal.SIGKILL)
    assert_gone(mountpoint)


def test_foreground_serves_until_unmounted(mountpoint: Path) -> None:
    process = subprocess.Popen(
        [*PYFSMOUNT, "-f", str(SAMPLE_IMAGE), str(mountpoint)],
        cwd=PROJECT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: mounted_fs_type(mountpoint) is not None, what="the mount")
        assert (mountpoint / "docs" / "notes" / "one.txt").read_text() == "first note\n"
        assert process.poll() is None
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")


def test_debug_logs_every_request(mountpoint: Path) -> None:
    process = subprocess.Popen(
        [*PYFSMOUNT, "-d", str(SAMPLE_IMAGE), str(mountpoint)],
        cwd=PROJECT,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: mounted_fs_type(mountpoint) is not None, what="the mount")
    os.listdir(mountpoint)
    (mountpoint / "README.txt").read_bytes()
    assert not (mountpoint / "no-such-name").exists()
    subprocess.run(["umount", str(mountpoint)], check=True)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    for request in ("lookup", "readdir", "open", "read"):
        assert f"pyfsmount: {request}(" in stderr, stderr


def test_owner_and_umask_overrides(mountpoint: Path) -> None:
    mount_sample(mountpoint, "uid=4242,gid=4343,umask=027")
    st = os.stat(mountpoint / "bin" / "hello")
    assert (st.st_uid, st.st_gid) == (4242, 4343)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert stat.S_ISREG(st.st_mode)


def test_fsname_names_the_source_in_the_mount_table(mountpoint: Path) -> None:
    mount_sample(mountpoint, "fsname=backup-disk")
    assert mount_source(mountpoint) == "backup-disk"


def test_offset_finds_the_file_system_inside_a_larger_image(
    mountpoint: Path, tmp_path: Path
) -> None:
    padded = tmp_path / "padded.img"
    with padded.open("wb") as out:
        out.write(b"\0" * (1 << 20))
        out.write(SAMPLE_IMAGE.read_bytes())
    mount_image(padded, mountpoint, "offset=1M")
    assert (mountpoint / "README.txt").read_bytes().startswith(README_TEXT)


@pytest.fixture
def installed_command() -> Iterator[None]:
    """pyfsmount on the PATH that mount(8) gives helpers, as README's install step does.

    mount(8) runs mount.fuse3 without the caller's PATH, so the helper finds
    ``pyfsmount`` only in the system directories.
    """
    link = Path("/usr/local/sbin/pyfsmount")
    entry_point = Path(PYFSMOUNT[0]).parent / "pyfsmount"
    assert entry_point.exists(), "the pyfsmount entry point is not installed in the virtualenv"
    made = not link.exists() and not link.is_symlink()
    if made:
        link.symlink_to(entry_point)
    try:
        yield
    finally:
        if made:
            link.unlink()


def test_a_block_device_mounts_like_an_image_file(mountpoint: Path, tmp_path: Path) -> None:
    image = tmp_path / "device.img"
    shutil.copy(SAMPLE_IMAGE, image)
    device = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        result = run_pyfsmount(device, str(mountpoint))
        assert result.returncode == 0, result.stderr
        assert (mountpoint / "README.txt").read_bytes().startswith(README_TEXT)
        assert mount_source(mountpoint) == device
    finally:
        force_unmount(mountpoint)
        wait_for(lambda: not pids_mentioning(mountpoint), what="the daemon to exit")
        subprocess.run(["losetup", "-d", device], check=False)


def test_mount_helper_and_fstab(mountpoint: Path, tmp_path: Path, installed_command: None) -> None:
    subprocess.run(
        ["mount", "-t", "fuse.pyfsmount", str(SAMPLE_IMAGE), str(mountpoint), "-o", "ro"],
        check=True,
    )
    assert (mountpoint / "README.txt").read_bytes().startswith(README_TEXT)
    subprocess.run(["umount", str(mountpoint)], check=True)
    assert_gone(mountpoint)

    fstab = tmp_path / "fstab"
    fstab.write_text(f"{SAMPLE_IMAGE} {mountpoint} fuse.pyfsmount ro,nofail,noatime 0 0\n")
    subprocess.run(["mount", "--fstab", str(fstab), str(mountpoint)], check=True)
    assert mounted_fs_type(mountpoint) == "fuse.pyfsmount"
    assert {"noatime", "ro"} <= mount_options(mountpoint)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pyfsmount-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            if child.is_dir():
                force_unmount(child)
        shutil.rmtree(path)


@pytest.fixture
def fuse_device_for_users() -> Iterator[None]:
    """/dev/fuse with Debian's usual mode 0666 (its udev rule), for the test's duration.

    This machine has no udev and leaves /dev/fuse 0600, where fusermount3 (which opens
    it with the caller's file uid) fails for every ordinary user.
    """
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


def test_ordinary_user_mounts_through_fusermount(
    shared_dir: Path, test_user: str, fuse_device_for_users: None
) -> None:
    uid, gid = user_ids(test_user)
    image = shared_dir / "sample.img"
    shutil.copy(SAMPLE_IMAGE, image)
    os.chown(image, uid, gid)
    target = shared_dir / "mnt"
    target.mkdir()
    os.chown(target, uid, gid)
    result = run_pyfsmount(str(image), str(target), user=test_user)
    assert result.returncode == 0, result.stderr
    try:
        listing = as_user(test_user, "ls", str(target / "docs"))
        assert listing.returncode == 0 and "numbers.txt" in listing.stdout, listing.stderr
        # Without allow_other, not even root may enter another user's FUSE mount.
        with pytest.raises(PermissionError):
            os.listdir(target)
        supervisor = pids_mentioning(target)
        assert [Path(f"/proc/{pid}").stat().st_uid for pid in supervisor] == [uid]
    finally:
        as_user(test_user, "fusermount3", "-u", str(target))
    assert_gone(target)


def test_allow_other_still_enforces_the_image_permissions(shared_dir: Path, test_user: str) -> None:
    mountpoint = shared_dir / "mnt"
    mountpoint.mkdir()
    mount_sample(mountpoint, "allow_other")
    # README.txt is root's, mode 0644; docs/ belongs to uid 1000 and is 0755.
    readable = as_user(test_user, "cat", str(mountpoint / "README.txt"))
    assert readable.returncode == 0, readable.stderr
    denied = as_user(test_user, "touch", str(mountpoint / "README.txt"))
    assert denied.returncode != 0
    private = as_user(test_user, "ls", str(mountpoint / "lost+found"))  # mode 0700 root
    assert private.returncode != 0 and "Permission denied" in private.stderr


def test_reads_fail_with_eio_not_a_hang_when_the_image_shrinks(
    mountpoint: Path, tmp_path: Path
) -> None:
    """An image truncated under a live mount answers EIO; the mount and daemon stay up."""
    image = tmp_path / "shrinking.img"
    shutil.copy(SAMPLE_IMAGE, image)
    mount_image(image, mountpoint)
    os.truncate(image, 64 * 1024)
    with pytest.raises(OSError) as failure:
        (mountpoint / "docs" / "numbers.txt").read_bytes()
    assert failure.value.errno == errno.EIO
    assert mounted_fs_type(mountpoint) == "fuse.pyfsmount"
    assert os.stat(mountpoint).st_mode  # the root (cached or not) still answers
