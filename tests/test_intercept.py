"""The interceptor, for real: util-linux mount(8) and raw mount(2) under pyfsmount-intercept.

Each test runs ``tests/intercept_caller.py`` as root of new user and mount namespaces
under the interceptor; the mount it makes is looked at from inside (mountinfo, a full
scan) and compared with the kernel's own mount of the same image. Afterwards no mount,
driver or template is left on the host.
"""

from __future__ import annotations

import errno
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.launcher import PROJECT, SAMPLE_IMAGE, pids_running, wait_for
from tests.support.images import ImageCache
from tests.support.scan import assert_scans_equal

TARGET = "/mnt"  # inside the caller's own mount namespace


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    yield
    wait_for(lambda: not pids_running(b"fusefs.template"), what="drivers and template to end")
    assert "fuse.pyfsmount" not in Path("/proc/self/mounts").read_text()


def intercepted(
    tmp_path: Path, *command: str, options: tuple[str, ...] = (), userns: bool = True
) -> dict[str, Any]:
    """Run one mount under the interceptor; what the caller saw, and the supervisor's log.

    With ``userns`` the caller is root of new user and mount namespaces (its own uid alone
    mapped: files of other owners show as nobody there); without, it runs as host root in
    a private mount namespace, where a scan can be compared with the kernel's.
    """
    out = tmp_path / "result.pickle"
    intercept = [sys.executable, "-m", "fusefs.intercept", "-v", *options, "--"]
    if userns:
        intercept.insert(3, "--userns")
    else:
        intercept = ["unshare", "--mount", "--propagation", "private", *intercept]
    caller = [sys.executable, "-m", "tests.intercept_caller", str(out), TARGET, *command]
    done = subprocess.run(
        [*intercept, *caller], cwd=PROJECT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    with out.open("rb") as f:
        result: dict[str, Any] = pickle.load(f)
    result["log"] = done.stderr
    return result


@pytest.mark.parametrize(
    "mount_options",
    [("-t", "ext4", "-o", "loop,ro"), ("-o", "loop"), ("-t", "ext4", "-o", "ro")],
    ids=["typed-loop", "probed-loop", "typed-file"],
)
def test_mount8_of_an_ext4_image_becomes_a_pyfsmount_mount_equal_to_the_kernels(
    images: ImageCache, tmp_path: Path, no_leftovers: None, mount_options: tuple[str, ...]
) -> None:
    image = images.get("standard", "ext4")
    seen = intercepted(tmp_path, "mount", *mount_options, str(image), TARGET, userns=False)
    assert seen["returncode"] == 0, seen
    assert seen["mountinfo"][seen["mountinfo"].index("-") + 1] == "fuse.pyfsmount"
    assert "redirected to pyfsmount" in seen["log"]
    assert_scans_equal(images.kernel_scan("standard", "ext4"), seen["scan"], label="intercepted")


def test_a_direct_mount2_call_of_a_squashfs_file_is_redirected(
    images: ImageCache, tmp_path: Path, no_leftovers: None
) -> None:
    image = images.get("standard", "sq-gzip")
    seen = intercepted(tmp_path, "direct", str(image), "squashfs", userns=False)
    assert (seen["returncode"], seen["errno"]) == (0, 0)
    assert_scans_equal(images.kernel_scan("standard", "sq-gzip"), seen["scan"], label="direct")


def test_a_vfat_image_is_redirected(tmp_path: Path, no_leftovers: None) -> None:
    image = tmp_path / "fat.img"
    subprocess.run(["mkfs.fat", "-C", str(image), "4096"], check=True, capture_output=True)
    note = tmp_path / "NOTE.TXT"
    note.write_text("on FAT\n")
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(["mcopy", "-i", str(image), str(note), "::/NOTE.TXT"], check=True, env=env)
    seen = intercepted(tmp_path, "mount", "-t", "vfat", "-o", "loop,ro", str(image), TARGET)
    assert seen["returncode"] == 0, seen
    assert seen["scan"][b"/NOTE.TXT"].size == len("on FAT\n")


def test_a_type_the_policy_allows_is_mounted_by_the_kernel(
    tmp_path: Path, no_leftovers: None
) -> None:
    seen = intercepted(
        tmp_path, "mount", "-t", "tmpfs", "none", TARGET, options=("--allow", "tmpfs")
    )
    assert seen["returncode"] == 0, seen
    assert seen["mountinfo"][seen["mountinfo"].index("-") + 1] == "tmpfs"
    assert "passed to the kernel" in seen["log"]


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (("direct", "none", "tmpfs"), ()),
        (("direct", str(SAMPLE_IMAGE), "ext4"), ("--redirect", "squashfs")),
        (("direct", str(SAMPLE_IMAGE), "btrfs"), ()),
    ],
    ids=["tmpfs-not-allowed", "ext4-not-redirected", "btrfs"],
)
def test_any_other_mount_is_refused_with_eperm(
    tmp_path: Path, no_leftovers: None, command: tuple[str, ...], options: tuple[str, ...]
) -> None:
    seen = intercepted(tmp_path, *command, options=options)
    assert (seen["returncode"], seen["errno"]) == (-1, errno.EPERM)
    assert seen["mountinfo"] is None
    assert "denied (EPERM)" in seen["log"]


def test_a_missing_source_or_target_gets_enoent(tmp_path: Path, no_leftovers: None) -> None:
    seen = intercepted(tmp_path, "direct", str(tmp_path / "no-such.img"), "ext4")
    assert (seen["returncode"], seen["errno"]) == (-1, errno.ENOENT)
    assert seen["mountinfo"] is None


def test_an_image_no_driver_accepts_gets_einval(tmp_path: Path, no_leftovers: None) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x5a" * 65536)
    seen = intercepted(tmp_path, "direct", str(junk), "ext4")
    assert (seen["returncode"], seen["errno"]) == (-1, errno.EINVAL)
    assert "no supported file system" in seen["log"] or "ext4" in seen["log"]


def test_remount_and_umount_of_a_redirected_mount(tmp_path: Path, no_leftovers: None) -> None:
    """A read-only remount is a no-op, a read-write one is refused (EROFS, as for a
    write-protected device), and umount removes the mount and ends its driver."""
    script = (
        f"mount -t ext4 -o ro {SAMPLE_IMAGE} {TARGET} && mount -i -o remount,ro {TARGET} && "
        f"! mount -i -o remount,rw {TARGET} 2>/dev/null && cat {TARGET}/README.txt && "
        f"umount {TARGET} && ! grep -q ' {TARGET} ' /proc/self/mountinfo"
    )
    out = subprocess.run(
        [sys.executable, "-m", "fusefs.intercept", "-v", "--userns", "--", "sh", "-c", script],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("This is the pyfsmount sample image.")
    assert "remount of a pyfsmount mount: Read-only file system" in out.stderr
    assert "ended (" not in out.stderr  # the driver ended cleanly, once unmounted
