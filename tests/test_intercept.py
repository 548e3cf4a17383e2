"""The interceptor, for real: util-linux mount(8) and raw mount(2) under pyfsmount-intercept.

Each test runs ``tests/intercept_caller.py`` as root of new user and mount namespaces
under the interceptor; the mount it makes is looked at from inside (mountinfo, a full
scan) and compared with the kernel's own mount of the same image. Afterwards no mount,
driver or template is left on the host.
"""

from __future__ import annotations

import errno
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.launcher import PROJECT, SAMPLE_IMAGE, pids_running, test_user, user_ids, wait_for
from tests.support.escalation import privileged_files_image
from tests.support.images import ImageCache
from tests.support.scan import assert_scans_equal

__all__ = ["test_user"]  # a fixture

TARGET = "/mnt"  # inside the caller's own mount namespace


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    yield
    wait_for(lambda: not pids_running(b"fusefs.template"), what="drivers and template to end")
    assert "fuse.pyfsmount" not in Path("/proc/self/mounts").read_text()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any user may write to (the unprivileged callers' images and results)."""
    path = Path(tempfile.mkdtemp(prefix="pyfsmount-intercept-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def unprivileged(user: str) -> tuple[str, ...]:
    """A command prefix: the caller is the test user, root of user and mount namespaces
    it made itself (as in an unprivileged container): the kernel would let it mount
    there, but not open what its host uid cannot."""
    uid, gid = user_ids(user)
    drop = ("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups")
    return (*drop, "unshare", "--user", "--map-root-user", "--mount")


def intercepted(
    tmp_path: Path,
    *command: str,
    options: tuple[str, ...] = (),
    userns: bool = True,
    caller_prefix: tuple[str, ...] = (),
    target: str = TARGET,
) -> dict[str, Any]:
    """Run one mount under the interceptor; what the caller saw, and the supervisor's log.

    With ``userns`` the caller is root of new user and mount namespaces (its own uid alone
    mapped: files of other owners show as nobody there); without, it runs as host root in
    a private mount namespace, where a scan can be compared with the kernel's.
    ``caller_prefix`` runs the caller under another command (another user, say).
    """
    out = tmp_path / "result.pickle"
    intercept = [sys.executable, "-m", "fusefs.intercept", "-v", *options, "--"]
    if userns:
        intercept.insert(3, "--userns")
    else:
        intercept = ["unshare", "--mount", "--propagation", "private", *intercept]
    caller = [
        *caller_prefix,
        *(sys.executable, "-m", "tests.intercept_caller", str(out), target, *command),
    ]
    done = subprocess.run(
        [*intercept, *caller], cwd=PROJECT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    with out.open("rb") as f:
        result: dict[str, Any] = pickle.load(f)
    result["log"] = done.stderr
    return result


@pytest.mark.parametrize(
    ("mount_options", "options"),
    [
        (("-t", "ext4", "-o", "loop,ro"), ()),
        (("-o", "loop"), ()),
        (("-t", "ext4", "-o", "ro"), ()),
        (("-t", "ext4", "-o", "loop,ro"), ("--host-loop",)),
    ],
    ids=["typed-loop", "probed-loop", "typed-file", "host-loop-device"],
)
def test_mount8_of_an_ext4_image_becomes_a_pyfsmount_mount_equal_to_the_kernels(
    images: ImageCache,
    tmp_path: Path,
    no_leftovers: None,
    mount_options: tuple[str, ...],
    options: tuple[str, ...],
) -> None:
    """mount(8) sets up a loop device first: an emulated one (a stand-in), or with
    --host-loop a real one, whose backing file the redirect reads."""
    image = images.get("standard", "ext4")
    seen = intercepted(
        tmp_path, "mount", *mount_options, str(image), TARGET, options=options, userns=False
    )
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
    image = fat_image(tmp_path)
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


@pytest.mark.parametrize(
    ("source", "target"),
    [("/no-such.img", TARGET), (str(SAMPLE_IMAGE), "/no-such-dir")],
    ids=["source", "target"],
)
def test_a_missing_source_or_target_gets_enoent(
    tmp_path: Path, no_leftovers: None, source: str, target: str
) -> None:
    seen = intercepted(tmp_path, "direct", source, "ext4", target=target)
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


def fat_image(directory: Path) -> Path:
    """A small FAT image holding NOTE.TXT ("on FAT\\n"), readable by anyone."""
    image = directory / "fat.img"
    subprocess.run(["mkfs.fat", "-C", str(image), "4096"], check=True, capture_output=True)
    note = directory / "NOTE.TXT"
    note.write_text("on FAT\n")
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(["mcopy", "-i", str(image), str(note), "::/NOTE.TXT"], check=True, env=env)
    image.chmod(0o644)
    return image


# The new mount API: fsopen, fsconfig, fsmount, move_mount.


@pytest.mark.parametrize("userns", [False, True], ids=["host-root", "userns-root"])
def test_the_new_mount_api_sequence_gives_a_pyfsmount_mount_equal_to_the_kernels(
    images: ImageCache, tmp_path: Path, no_leftovers: None, userns: bool
) -> None:
    """fsopen("ext4") .. fsmount give a detached pyfsmount mount; the caller attaches it
    itself with move_mount (in its own user namespace too)."""
    image = images.get("standard", "ext4")
    seen = intercepted(tmp_path, "newapi", str(image), "ext4", "ro", userns=userns)
    assert (seen["step"], seen["errno"]) == (None, 0), seen["log"]
    assert seen["mountinfo"][seen["mountinfo"].index("-") + 1] == "fuse.pyfsmount"
    kernel = images.kernel_scan("standard", "ext4")
    if userns:  # owners other than the caller show as nobody: compare the names
        assert sorted(seen["scan"]) == sorted(kernel)
    else:
        assert_scans_equal(kernel, seen["scan"], label="new mount API")
    assert "emulated context" in seen["log"] and "move_mount: passed to the kernel" in seen["log"]


def test_the_new_mount_api_of_an_allowed_type_is_the_kernels(
    tmp_path: Path, no_leftovers: None
) -> None:
    seen = intercepted(tmp_path, "newapi", "none", "tmpfs", options=("--allow", "tmpfs"))
    assert (seen["step"], seen["errno"]) == (None, 0), seen["log"]
    assert seen["mountinfo"][seen["mountinfo"].index("-") + 1] == "tmpfs"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("none", "btrfs"), ("fsopen", errno.EPERM)),
        (("none", "NULL"), ("fsopen", errno.EFAULT)),
        (("/no-such.img", "ext4"), ("fsconfig create", errno.ENOENT)),
        ((str(PROJECT / "README.md"), "ext4"), ("fsconfig create", errno.EINVAL)),
        ((str(SAMPLE_IMAGE), "ext4", "sandbox=off"), ("fsconfig create", errno.EINVAL)),
        ((str(SAMPLE_IMAGE), "ext4", "source=again"), ("fsconfig source", errno.EINVAL)),
    ],
    ids=[
        "type-denied",
        "api-probe",
        "no-source",
        "not-an-image",
        "pyfsmount-option",
        "second-source",
    ],
)
def test_the_new_mount_api_refuses_as_the_kernel_would(
    tmp_path: Path, no_leftovers: None, command: tuple[str, ...], expected: tuple[str, int]
) -> None:
    seen = intercepted(tmp_path, "newapi", *command)
    assert (seen["step"], seen["errno"]) == expected, seen["log"]
    assert seen["mountinfo"] is None


def test_reading_an_emulated_context_fails_as_reading_a_real_one_does(
    tmp_path: Path, no_leftovers: None
) -> None:
    """libmount (2.39+) reads the kernel's messages from the context fd after every call
    until read() returns -1: a read that returned 0 would loop it forever."""
    seen = intercepted(tmp_path, "newapi-read", str(SAMPLE_IMAGE), "ext4")
    assert seen["read"] < 0


def test_a_context_closed_without_a_mount_ends_its_driver(
    tmp_path: Path, no_leftovers: None
) -> None:
    seen = intercepted(tmp_path, "newapi-unmounted", str(SAMPLE_IMAGE), "ext4")
    assert (seen["step"], seen["errno"]) == (None, 0), seen["log"]
    assert "fs context for ext4 closed (created)" in seen["log"]


# Data options, and who may mount.


@pytest.mark.parametrize("api", ["direct", "newapi"])
def test_data_options_reach_the_driver(tmp_path: Path, no_leftovers: None, api: str) -> None:
    image = fat_image(tmp_path)
    seen = intercepted(tmp_path, api, str(image), "vfat", "umask=077", "codepage=850")
    assert seen["errno"] == 0, seen["log"]
    note = seen["scan"][b"/NOTE.TXT"]
    assert (note.mode & 0o777, note.uid) == (0o700, 0)


@pytest.mark.parametrize("data", ["sandbox=off", "allow_other", "uid=5", "no_such_option"], ids=str)
def test_data_options_the_caller_may_not_give_get_einval(
    tmp_path: Path, no_leftovers: None, data: str
) -> None:
    """pyfsmount's own options are not the caller's; uid=5 is not mapped in its
    namespace (only its own uid is); an unknown option is refused, as by the kernel."""
    seen = intercepted(tmp_path, "direct", str(fat_image(tmp_path)), "vfat", data)
    assert (seen["returncode"], seen["errno"]) == (-1, errno.EINVAL), seen["log"]
    assert seen["mountinfo"] is None


def test_a_caller_that_may_not_mount_gets_eperm(
    open_dir: Path, test_user: str, no_leftovers: None
) -> None:
    """An ordinary user, in the interceptor's mount namespace: the kernel would refuse
    it, and so does the interceptor, though it could mount."""
    uid, gid = user_ids(test_user)
    prefix = ("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups")
    seen = intercepted(
        open_dir, "direct", str(SAMPLE_IMAGE), "ext4", userns=False, caller_prefix=prefix
    )
    assert (seen["returncode"], seen["errno"]) == (-1, errno.EPERM)
    assert "the caller may not mount" in seen["log"]


def test_an_unprivileged_container_mounts_what_its_user_can_read(
    open_dir: Path, test_user: str, no_leftovers: None
) -> None:
    image = open_dir / "sample.img"
    shutil.copyfile(SAMPLE_IMAGE, image)
    image.chmod(0o644)
    seen = intercepted(
        open_dir, "direct", str(image), "ext4", userns=False, caller_prefix=unprivileged(test_user)
    )
    assert (seen["returncode"], seen["errno"]) == (0, 0), seen["log"]
    assert b"/README.txt" in seen["scan"]
    image.chmod(0o600)
    seen = intercepted(
        open_dir, "direct", str(image), "ext4", userns=False, caller_prefix=unprivileged(test_user)
    )
    assert (seen["returncode"], seen["errno"]) == (-1, errno.EACCES), seen["log"]


def test_a_source_swapped_during_the_call_is_mounted_only_as_its_caller_may(
    images: ImageCache, open_dir: Path, test_user: str, no_leftovers: None
) -> None:
    """A symlink swapped between a readable image and one the caller's user may not
    read: each mount is of the image opened, as the caller, at one instant; never of
    the secret one."""
    readable, secret = open_dir / "readable.img", open_dir / "secret.img"
    shutil.copyfile(SAMPLE_IMAGE, readable)
    readable.chmod(0o644)
    shutil.copyfile(images.get("standard", "ext4"), secret)
    secret.chmod(0o600)
    assert b"/README.txt" not in images.kernel_scan("standard", "ext4")
    seen = intercepted(
        open_dir,
        *("race", str(readable), str(secret), "ext4", "24"),
        userns=False,
        caller_prefix=unprivileged(test_user),
    )
    outcomes = seen["outcomes"]
    mounted = [o for o in outcomes if isinstance(o, list)]
    assert all("README.txt" in names for names in mounted), outcomes
    assert set(o for o in outcomes if isinstance(o, int)) == {errno.EACCES}, outcomes
    assert mounted, outcomes  # both sides of the race were met


def test_callers_killed_mid_call_leave_nothing_behind(tmp_path: Path, no_leftovers: None) -> None:
    """Killed before, during or after their mount was made: the supervisor goes on
    serving, the mounts that were made go with the namespace, every driver ends."""
    seen = intercepted(tmp_path, "killed", str(SAMPLE_IMAGE), "ext4")
    assert seen["errno"] == 0, seen["log"]
    assert b"/README.txt" in seen["scan"]
    assert "Traceback" not in seen["log"]


def test_a_caller_that_clears_nodev_still_cannot_open_the_images_devices(
    open_dir: Path, test_user: str, no_leftovers: None
) -> None:
    """The caller owns its mount namespace, so mount_setattr(2) may clear nodev and
    nosuid on the mount it got; its device nodes must stay closed all the same."""
    image = privileged_files_image(open_dir)
    seen = intercepted(
        open_dir,
        "escalate",
        str(image),
        "ext4",
        userns=False,
        caller_prefix=unprivileged(test_user),
    )
    assert seen["errno"] == 0, seen["log"]
    escalation = seen["escalation"]
    assert escalation["setattr"] == 0  # the flags were cleared: the test means something
    assert escalation["device"] == errno.EACCES
    assert escalation["euid"] == escalation["own_euid"]


# Loop devices, emulated.


def loop_devices_backed_by(image: Path) -> list[str]:
    """The host's loop devices attached to ``image``."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        if backing.read_text().strip() == str(image):
            found.append(backing.parent.parent.name)
    return found


@pytest.mark.parametrize(
    "script",
    [
        "mount -o loop,ro {image} {target}",
        "mount {image} {target}",
        "mount -t ext4 -o loop {image} {target} && umount {target} && "
        "mount -o loop,ro {image} {target} && umount {target} && mount {image} {target}",
        "losetup -f --show -r {image} > /tmp/dev && mount -t ext4 $(cat /tmp/dev) {target}",
    ],
    ids=["loop", "probed-file", "again-and-again", "losetup"],
)
def test_an_unprivileged_container_mounts_with_loop_devices_it_may_not_set_up(
    images: ImageCache, open_dir: Path, test_user: str, no_leftovers: None, script: str
) -> None:
    """mount(8)'s loop setup goes to stand-ins for /dev/loop-control and /dev/loopN; the
    mount ends up a pyfsmount mount of the image, and no loop device is ever set up."""
    image = open_dir / "standard.img"
    shutil.copyfile(images.get("standard", "ext4"), image)
    image.chmod(0o644)
    command = script.format(image=image, target=TARGET).replace("/tmp/dev", f"{open_dir}/dev")
    seen = intercepted(
        open_dir,
        *("sh", "-c", command),
        userns=False,
        caller_prefix=unprivileged(test_user),
    )
    assert seen["returncode"] == 0, seen["stderr"] + seen["log"]
    assert seen["mountinfo"][seen["mountinfo"].index("-") + 1] == "fuse.pyfsmount"
    kernel = images.kernel_scan("standard", "ext4")
    top = {path for path in kernel if path.count(b"/") == 1}
    # All the kernel shows, but what the caller's user may not read (dirs/no-perms/...).
    assert top <= set(seen["scan"]) <= set(kernel)
    assert "emulated, attached to" in seen["log"]
    assert loop_devices_backed_by(image) == []


def test_an_unprivileged_container_mounts_a_squashfs_image_by_its_probed_type(
    images: ImageCache, open_dir: Path, test_user: str, no_leftovers: None
) -> None:
    image = open_dir / "standard.sqfs"
    shutil.copyfile(images.get("standard", "sq-gzip"), image)
    image.chmod(0o644)
    seen = intercepted(
        open_dir,
        *("mount", "-o", "loop", str(image), TARGET),
        userns=False,
        caller_prefix=unprivileged(test_user),
    )
    assert seen["returncode"] == 0, seen["stderr"] + seen["log"]
    assert "'/dev/loop0', '/mnt', 'squashfs', 0x0): redirected" in seen["log"]
    kernel = images.kernel_scan("standard", "sq-gzip")
    assert {path for path in kernel if path.count(b"/") == 1} <= set(seen["scan"])


def test_a_loop_offset_is_where_the_file_system_starts(
    images: ImageCache, tmp_path: Path, no_leftovers: None
) -> None:
    """(With -t: blkid would probe /dev/loopN, which shows the whole image.)"""
    padded = tmp_path / "padded.img"
    padded.write_bytes(b"\0" * 1048576 + images.get("standard", "ext4").read_bytes())
    seen = intercepted(
        tmp_path,
        *("mount", "-t", "ext4", "-o", "loop,ro,offset=1048576", str(padded), TARGET),
        userns=False,
    )
    assert seen["returncode"] == 0, seen["stderr"] + seen["log"]
    assert_scans_equal(images.kernel_scan("standard", "ext4"), seen["scan"], label="offset")
    assert "(offset 1048576)" in seen["log"]


def test_without_loop_devices_in_dev_the_interceptor_runs_without_stand_ins(
    tmp_path: Path,
) -> None:
    """A /dev with no loop-control (a container's): nothing to cover, no refusal; mount(2)
    of an image file is redirected as anywhere else."""
    out = tmp_path / "result.pickle"
    host_dev = tmp_path / "host-dev"
    host_dev.mkdir()
    nodes = ["null", "zero", "full", "random", "urandom", "fuse", "tty"]
    script = "\n".join(
        [
            "set -e",
            f"mount --bind /dev {host_dev}",
            "mount -t tmpfs -o mode=0755 none /dev",
            *(f"touch /dev/{n} && mount --bind {host_dev}/{n} /dev/{n}" for n in nodes),
            f"umount -l {host_dev}",
            " ".join(
                [
                    sys.executable,
                    *("-m", "fusefs.intercept", "-v", "--"),
                    *(sys.executable, "-m", "tests.intercept_caller", str(out), TARGET),
                    *("direct", str(SAMPLE_IMAGE), "ext4"),
                ]
            ),
        ]
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with out.open("rb") as f:
        seen = pickle.load(f)
    assert (seen["returncode"], seen["errno"]) == (0, 0), done.stderr
    assert b"/README.txt" in seen["scan"]
    wait_for(lambda: not pids_running(b"fusefs.template"), what="drivers and template to end")
