"""The real pyfsmount driver, seen from outside while it serves a mount: it is a cell.

tests/test_sandbox.py proves the sandbox itself, attack by attack, on a representative
driver; this file checks that the driver process the launcher really starts is confined
the same way, by default, and that an attack inside it is reported by the launcher.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from fusefs.driver import host_reclaims_free_memory
from tests.launcher import (
    SAMPLE_IMAGE,
    driver_pids,
    force_unmount,
    mount_image,
    mounted_fs_type,
    mountpoint,
    payload_env,
    pids_mentioning,
    poisoned_directory,
    run_pyfsmount,
    sample_copy,
)

__all__ = ["mountpoint"]

NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts")


def serving_driver(target: Path) -> int:
    """The host pid of the process that parses the image (the innermost driver)."""
    supervisor = pids_mentioning(target)
    assert len(supervisor) == 1
    family = {supervisor[0]}
    for _ in range(3):
        family |= {pid for pid in driver_pids() if parent_of(pid) in family}
    leaves = [pid for pid in family - {supervisor[0]} if not children_of(pid, family)]
    assert len(leaves) == 1, family
    return leaves[0]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])


def children_of(pid: int, among: set[int]) -> list[int]:
    return [p for p in among if p != pid and parent_of(p) == pid]


def status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def assert_confined(pid: int, address_space: int) -> None:
    """Seccomp on, no new privileges, no capability, not root, every namespace its own,
    and an address-space limit of ``address_space`` bytes."""
    status = status_fields(pid)
    assert status["Seccomp"] == "2"
    assert status["NoNewPrivs"] == "1"
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, caps
    assert status["Uid"].split()[0] != "0"
    for ns in NAMESPACES:
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    limits = Path(f"/proc/{pid}/limits").read_text()
    limit = rf"Max address space\s+{address_space}\s+{address_space}"
    assert re.search(limit, limits), limits


def test_the_serving_driver_is_confined(mountpoint: Path) -> None:
    mount_image(SAMPLE_IMAGE, mountpoint, "max_memory=300M")
    assert (mountpoint / "docs" / "numbers.txt").read_text().startswith("1\n2\n")
    pid = serving_driver(mountpoint)
    assert_confined(pid, address_space=314572800)
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"Max file size\s+0\s+0", limits), limits
    assert re.search(r"Max core file size\s+0\s+0", limits), limits


def image_descriptors(pid: int, image: Path) -> list[tuple[int, bool]]:
    """(access mode, O_DIRECT) of each descriptor ``pid`` holds on ``image``."""
    flags = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == str(image):
            fdinfo = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            value = int(fdinfo.split("flags:")[1].split()[0], 8)
            flags.append((value & os.O_ACCMODE, bool(value & os.O_DIRECT)))
    return sorted(flags)


def test_the_serving_driver_holds_only_its_image_and_channels(
    mountpoint: Path, tmp_path: Path
) -> None:
    image = sample_copy(tmp_path, cached=False)
    mount_image(image, mountpoint)
    os.listdir(mountpoint)
    pid = serving_driver(mountpoint)
    targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    paths = sorted(t for t in targets if t.startswith("/"))
    # The image; the same image opened again for random reads without read-ahead, and
    # for bulk reads ahead of sequential readers (drivers/readahead.py), with O_DIRECT
    # where the host takes free memory back: all three read-only.
    assert paths == sorted([str(image)] * 3 + ["/dev/fuse", "/dev/null", "/dev/null"]), targets
    plain, bulk = (os.O_RDONLY, False), (os.O_RDONLY, host_reclaims_free_memory())
    assert image_descriptors(pid, image) == sorted([plain, plain, bulk])
    others = {re.sub(r"\[\d+\]", "", t) for t in targets if not t.startswith("/")}
    assert others <= {"pipe:", "socket:", "anon_inode:[eventpoll]"}, targets
    # Its root is an empty directory: no host path exists for it.
    assert os.listdir(f"/proc/{pid}/root") == []


def test_bulk_reads_go_around_the_page_cache_only_where_the_host_takes_free_memory(
    tmp_path: Path,
) -> None:
    """A VM whose balloon reports free pages to its host makes new page cache slow to
    fill: there (only) a driver reads file data ahead with O_DIRECT (fusefs.driver.open_bulk)."""
    order, balloon, buddyinfo = tmp_path / "order", tmp_path / "balloon", tmp_path / "buddyinfo"
    counts = " ".join(["7"] * 11)  # orders 0 to 10, as on x86-64
    buddyinfo.write_text(f"Node 0, zone DMA {counts}\nNode 0, zone Normal {counts}\n")
    balloon.mkdir()

    def reclaims() -> bool:
        return host_reclaims_free_memory(order, balloon, buddyinfo)

    assert not reclaims()  # a kernel without free page reporting
    order.write_text("5\n")
    assert not reclaims()  # and no balloon device to report to
    (balloon / "virtio3").mkdir()
    assert reclaims()
    order.write_text("11\n")  # one past the largest order: reporting paused (benchmarks/)
    assert not reclaims()


def test_a_driver_reads_an_image_in_the_page_cache_from_there(
    mountpoint: Path, tmp_path: Path
) -> None:
    """An image just written is all in the page cache: its driver opens no O_DIRECT
    descriptor, which would make it read the image from the disk again."""
    image = sample_copy(tmp_path, cached=True)
    mount_image(image, mountpoint)
    assert (mountpoint / "README.txt").read_bytes()
    pid = serving_driver(mountpoint)
    plain = (os.O_RDONLY, False)
    assert image_descriptors(pid, image) == [plain, plain]


def test_the_driver_imports_nothing_from_the_working_directory(
    mountpoint: Path, tmp_path: Path
) -> None:
    # Root running pyfsmount in a directory another user can write (/tmp, a home): a
    # fusefs/driver.py there must not run as root. The launcher is started as its console
    # script starts (-P: its own directory, not the working one, on sys.path).
    directory, marker = poisoned_directory(tmp_path)
    command = [sys.executable, "-P", "-m", "fusefs", str(SAMPLE_IMAGE), str(mountpoint)]
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert (mountpoint / "README.txt").exists()


def test_an_attack_inside_the_driver_is_killed_and_reported(mountpoint: Path) -> None:
    marker = mountpoint.parent / "executed"
    result = run_pyfsmount(
        str(SAMPLE_IMAGE),
        str(mountpoint),
        env=payload_env("execve_sh", PYFSMOUNT_TEST_MARKER=str(marker)),
    )
    assert result.returncode == 32
    assert "killed by seccomp" in result.stderr and "execve" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert mounted_fs_type(mountpoint) is None


def test_opening_a_host_file_inside_the_driver_fails(mountpoint: Path) -> None:
    result = run_pyfsmount(str(SAMPLE_IMAGE), str(mountpoint), env=payload_env("open_etc_passwd"))
    assert result.returncode == 32
    assert '"open": "EACCES"' in result.stderr, result.stderr
    assert mounted_fs_type(mountpoint) is None


def test_sandbox_off_is_loudly_warned_and_really_off(mountpoint: Path) -> None:
    result = run_pyfsmount("-o", "sandbox=off", str(SAMPLE_IMAGE), str(mountpoint))
    assert result.returncode == 0
    assert "WARNING: sandbox=off" in result.stderr
    pid = serving_driver(mountpoint)
    assert status_fields(pid)["Seccomp"] == "0"


def test_a_memory_bomb_ends_at_the_budget_and_other_mounts_keep_serving(
    mountpoint: Path, tmp_path: Path
) -> None:
    mount_image(SAMPLE_IMAGE, mountpoint)
    bombed = tmp_path / "bombed"
    bombed.mkdir()
    try:
        bomb = run_pyfsmount(
            "-o",
            "max_memory=256M",
            str(SAMPLE_IMAGE),
            str(bombed),
            env=payload_env("memory_bomb"),
        )
        assert bomb.returncode == 32
        allocated = re.search(r'"allocated_mib": (\d+)', bomb.stderr)
        assert allocated and int(allocated.group(1)) < 256, bomb.stderr
        assert mounted_fs_type(bombed) is None
    finally:
        force_unmount(bombed)
    assert (mountpoint / "docs" / "notes" / "one.txt").read_text() == "first note\n"
