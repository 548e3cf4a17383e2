"""The driver template: drivers forked from a pre-imported process, as confined as any other.

These tests launch in the test process itself (``make_mount(..., template=...)``), as
the broker does; the drivers are separate processes, so reading the mounts from here is
safe.
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefs.launch import LaunchError, Mount, make_mount
from fusefs.options import parse_options
from fusefs.template import Template
from tests.launcher import (
    SAMPLE_IMAGE,
    mounted_fs_type,
    mountpoint,
    payload_env,
    pids_running,
    poisoned_directory,
    sample_copy,
    wait_for,
)
from tests.test_confinement import assert_confined, status_fields

__all__ = ["mountpoint"]

README_TEXT = b"This is the pyfsmount sample image."


@pytest.fixture
def template() -> Iterator[Template]:
    with Template() as started:
        yield started
    wait_for(lambda: not template_processes(), what="the template and its drivers to exit")


def template_processes() -> list[int]:
    """Every live process running ``fusefs.template`` (the template and forked drivers)."""
    return pids_running(b"fusefs.template")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def serve_in_background(mount: Mount) -> tuple[threading.Thread, list[int]]:
    """Supervise ``mount`` on a thread, as a broker would; the exit code lands in the list."""
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(mount.supervise()), daemon=True)
    thread.start()
    return thread, codes


def unmount_and_collect(mount: Mount, thread: threading.Thread, codes: list[int]) -> int:
    mount.request_stop()
    thread.join(timeout=15)
    assert not thread.is_alive(), "the supervisor did not see its driver end"
    return codes[0]


def test_a_forked_driver_serves_a_real_mount_and_ends_cleanly(
    template: Template, mountpoint: Path
) -> None:
    before = open_fds()
    mount = make_mount(str(SAMPLE_IMAGE), str(mountpoint), parse_options([]), template=template)
    thread, codes = serve_in_background(mount)
    assert mounted_fs_type(mountpoint) == "fuse.pyfsmount"
    assert (mountpoint / "README.txt").read_bytes().startswith(README_TEXT)
    assert unmount_and_collect(mount, thread, codes) == 0
    assert mounted_fs_type(mountpoint) is None
    assert len(template_processes()) == 1  # the driver is gone, the template stays
    mount.driver.control.close()
    assert open_fds() == before


def test_a_forked_driver_is_confined_like_any_other(
    template: Template, mountpoint: Path, tmp_path: Path
) -> None:
    options = parse_options(["max_memory=300M"])
    image = sample_copy(tmp_path, cached=False)
    mount = make_mount(str(image), str(mountpoint), options, template=template)
    thread, codes = serve_in_background(mount)
    os.listdir(mountpoint)
    # The template made the driver pid 1 of a pid namespace of its own and waits for it
    # itself: the forked process serves, with no waiting parent inside the sandbox.
    serving = mount.driver.process.pid
    status = status_fields(serving)
    assert status["NSpid"].split() == [str(serving), "1"]
    assert status["PPid"] == str(template.process.pid)
    assert [pid for pid in template_processes() if status_fields(pid)["PPid"] == str(serving)] == []
    assert_confined(serving, address_space=314572800)
    fds = os.listdir(f"/proc/{serving}/fd")
    held = sorted(t for t in (os.readlink(f"/proc/{serving}/fd/{fd}") for fd in fds) if t[0] == "/")
    assert held == sorted([str(image)] * 3 + ["/dev/fuse", "/dev/null", "/dev/null"])
    assert unmount_and_collect(mount, thread, codes) == 0


def test_a_forked_driver_killed_by_seccomp_is_reported_with_its_syscall(
    mountpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = mountpoint.parent / "executed"
    for name, value in payload_env("execve_sh", PYFSMOUNT_TEST_MARKER=str(marker)).items():
        monkeypatch.setenv(name, value)  # read by the template, run by every driver it forks
    with (
        Template() as template,
        pytest.raises(LaunchError, match="killed by seccomp: syscall execve"),
    ):
        make_mount(str(SAMPLE_IMAGE), str(mountpoint), parse_options([]), template=template)
    assert not marker.exists()
    assert mounted_fs_type(mountpoint) is None
    wait_for(lambda: not template_processes(), what="the template to exit")


def test_a_launcher_holding_descriptors_past_1024_still_mounts_and_collects(
    template: Template, mountpoint: Path
) -> None:
    # A broker holds a few descriptors per mount: past a few hundred mounts its new ones
    # are numbered above FD_SETSIZE (1024), which select(2) cannot watch.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), max(hard, 1200)))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        mount = make_mount(str(SAMPLE_IMAGE), str(mountpoint), parse_options([]), template=template)
        assert mount.driver.control.fileno() > 1024
        thread, codes = serve_in_background(mount)
        assert (mountpoint / "README.txt").read_bytes().startswith(README_TEXT)
        assert unmount_and_collect(mount, thread, codes) == 0
        mount.driver.control.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_template_imports_nothing_from_the_working_directory(
    mountpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, marker = poisoned_directory(tmp_path)
    monkeypatch.chdir(directory)
    with Template() as template:
        mount = make_mount(str(SAMPLE_IMAGE), str(mountpoint), parse_options([]), template=template)
        thread, codes = serve_in_background(mount)
        assert (mountpoint / "README.txt").read_bytes().startswith(README_TEXT)
        assert unmount_and_collect(mount, thread, codes) == 0
        mount.driver.control.close()
    assert not marker.exists()


def test_an_unconfined_driver_is_refused(template: Template, mountpoint: Path) -> None:
    options = parse_options(["sandbox=off"])
    with pytest.raises(LaunchError, match="sandbox=off is refused by the template"):
        make_mount(str(SAMPLE_IMAGE), str(mountpoint), options, template=template)
    assert mounted_fs_type(mountpoint) is None


def test_a_refused_image_leaves_the_template_serving(
    template: Template, mountpoint: Path, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(1 << 20))
    with pytest.raises(LaunchError, match="no supported file system"):
        make_mount(str(blank), str(mountpoint), parse_options([]), template=template)
    assert mounted_fs_type(mountpoint) is None
    mount = make_mount(str(SAMPLE_IMAGE), str(mountpoint), parse_options([]), template=template)
    thread, codes = serve_in_background(mount)
    assert (mountpoint / "README.txt").read_bytes().startswith(README_TEXT)
    assert unmount_and_collect(mount, thread, codes) == 0


def test_mounts_outlive_the_template(tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    target.mkdir()
    with Template() as template:
        mount = make_mount(str(SAMPLE_IMAGE), str(target), parse_options([]), template=template)
    thread, codes = serve_in_background(mount)
    try:
        assert (target / "README.txt").read_bytes().startswith(README_TEXT)
    finally:
        unmount_and_collect(mount, thread, codes)
    assert mounted_fs_type(target) is None
    wait_for(lambda: not template_processes(), what="the orphaned driver to exit")


def test_drivers_started_at_once_each_get_their_own_mount(
    template: Template, tmp_path: Path
) -> None:
    targets = [tmp_path / f"mnt{i}" for i in range(4)]
    mounts: list[Mount] = []
    errors: list[BaseException] = []

    def launch(target: Path) -> None:
        target.mkdir()
        try:
            mounts.append(
                make_mount(str(SAMPLE_IMAGE), str(target), parse_options([]), template=template)
            )
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    launchers = [threading.Thread(target=launch, args=(t,)) for t in targets]
    for launcher in launchers:
        launcher.start()
    for launcher in launchers:
        launcher.join()
    supervisors = [serve_in_background(mount) for mount in mounts]
    try:
        assert not errors
        for target in targets:
            assert (target / "README.txt").read_bytes().startswith(README_TEXT)
    finally:
        codes = [unmount_and_collect(m, *s) for m, s in zip(mounts, supervisors, strict=True)]
    assert codes == [0] * len(targets)
