"""The broker, for real: a broker process on a temporary socket, unprivileged callers.

Callers run as the test user (``tests/broker_caller.py``), or in this process for the
malformed input that no client would send. After every test: no mount, no driver and
no template left, and the broker holds no more descriptors than before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fusefs.broker.varlink import MAX_MESSAGE
from tests.launcher import (
    PROJECT,
    SAMPLE_IMAGE,
    force_unmount,
    mount_options,
    mounted_fs_type,
    pids_running,
    test_user,
    user_ids,
    wait_for,
)
from tests.support.escalation import privileged_files_image

__all__ = ["test_user"]

SQUASHFS_IMAGE = PROJECT / "images" / "sample-squashfs.img"
README = "README.txt"


@dataclass
class RunningBroker:
    socket: Path
    process: subprocess.Popen[bytes]
    log: Path

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def settled_descriptors(self) -> int:
        """The broker's descriptors once the connections of earlier calls are closed."""
        count = -1
        while count != self.descriptors():
            count = self.descriptors()
            time.sleep(0.1)
        return count

    def logged(self) -> str:
        return self.log.read_text()


class Workspace:
    """A directory every user can reach, with the images and the broker of one test."""

    def __init__(self, root: Path, user: str) -> None:
        self.root = root
        self.user = user
        self.uid, self.gid = user_ids(user)
        self.brokers: list[RunningBroker] = []

    def image(self, fs: str) -> Path:
        path = self.root / f"{fs}.img"
        if not path.exists():
            if fs == "ext4":
                shutil.copy(SAMPLE_IMAGE, path)
            elif fs == "squashfs":
                shutil.copy(SQUASHFS_IMAGE, path)
            else:
                make_fat_image(path)
            path.chmod(0o644)
        return path

    def directory(self, name: str, owner: int | None = None) -> Path:
        path = self.root / name
        path.mkdir()
        os.chown(path, self.uid if owner is None else owner, self.gid)
        return path

    def start_broker(self, policy: str | None = None) -> RunningBroker:
        sock = self.root / "broker.sock"
        command = [sys.executable, "-m", "fusefs.broker", "--socket", str(sock)]
        if policy is not None:
            policy_file = self.root / "policy.toml"
            policy_file.write_text(policy)
            command += ["--policy", str(policy_file)]
        log = self.root / f"broker{len(self.brokers)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT)
        broker = RunningBroker(sock, process, log)
        self.brokers.append(broker)
        wait_for(lambda: answers(sock) or process.poll() is not None, what="the broker")
        assert process.poll() is None, broker.logged()
        return broker

    def call(self, *args: str) -> dict[str, Any]:
        """tests/broker_caller.py as the test user; its JSON answer."""
        result = subprocess.run(
            ["runuser", "-u", self.user, "--", sys.executable, "-m", "tests.broker_caller", *args],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    def as_user(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", self.user, "--", *command], capture_output=True, text=True
        )


def make_fat_image(path: Path) -> None:
    subprocess.run(
        ["mkfs.fat", "-C", "-n", "BROKER", str(path), "4096"], check=True, capture_output=True
    )
    readme = path.with_suffix(".txt")
    readme.write_text("This is a FAT image for the broker.\n")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mcopy", "-i", str(path), str(readme), f"::/{README}"], check=True, env=env)
    readme.unlink()


def answers(sock: Path) -> bool:
    try:
        reply, _ = raw_call(sock, b'{"method":"org.varlink.service.GetInfo"}\0')
    except OSError:
        return False
    return "parameters" in reply


def raw_call(sock: Path, data: bytes, fds: list[int] | None = None) -> tuple[dict[str, Any], int]:
    """Send ``data`` as it is; the first reply (empty if none came) and the bytes read."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(sock))
        if fds:
            socket.send_fds(s, [data], fds)
        else:
            s.sendall(data)
        received = b""
        while b"\0" not in received:
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
    body = received.split(b"\0", 1)[0]
    return (json.loads(body) if body else {}), len(received)


def our_mounts(root: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(str(root))]


@pytest.fixture
def workspace(test_user: str) -> Iterator[Workspace]:
    root = Path(tempfile.mkdtemp(prefix="pyfsmount-broker-"))
    root.chmod(0o755)
    space = Workspace(root, test_user)
    try:
        yield space
    finally:
        for broker in space.brokers:
            if broker.process.poll() is None:
                broker.process.terminate()
                broker.process.wait(timeout=10)
        for mounted in our_mounts(root):
            force_unmount(mounted)
        wait_for(lambda: not pids_running(b"fusefs.template"), what="drivers and template")
        shutil.rmtree(root)
    assert not our_mounts(root)


# -- mounting, both ways -------------------------------------------------------------------


@pytest.mark.parametrize("fs", ["ext4", "squashfs", "vfat"])
def test_a_caller_mounts_an_image_at_its_own_directory(workspace: Workspace, fs: str) -> None:
    broker = workspace.start_broker()
    target = workspace.directory("mnt")
    mounted = workspace.call("mount", str(broker.socket), str(workspace.image(fs)), str(target))
    assert mounted["type"] == fs
    assert mounted_fs_type(target) == "fuse.pyfsmount"
    readme = workspace.as_user("cat", str(target / README))
    assert readme.returncode == 0 and readme.stdout.startswith("This is")
    assert {"ro", "nosuid", "nodev"} <= mount_options(target)
    (listed,) = workspace.call("list", str(broker.socket))["mounts"]
    assert (listed["id"], listed["target"], listed["uid"]) == (
        mounted["id"],
        str(target),
        workspace.uid,
    )
    assert workspace.call("unmount", str(broker.socket), str(mounted["id"])) == {"ok": True}
    assert mounted_fs_type(target) is None
    wait_for(lambda: workspace.call("list", str(broker.socket))["mounts"] == [], what="forget")
    assert f"uid={workspace.uid}" in broker.logged()


@pytest.mark.parametrize("fs", ["ext4", "squashfs", "vfat"])
def test_a_detached_mount_is_attached_in_the_callers_own_namespace(
    workspace: Workspace, fs: str
) -> None:
    broker = workspace.start_broker()
    attach_here = workspace.directory("attach")
    answer = workspace.call(
        "detached", str(broker.socket), str(workspace.image(fs)), str(attach_here)
    )
    assert README in answer["listing"]
    assert mounted_fs_type(attach_here) is None  # attached in the caller's namespace only
    # The caller has exited: its namespace and its fd are gone, so is the mount.
    wait_for(lambda: workspace.call("list", str(broker.socket))["mounts"] == [], what="the end")
    wait_for(lambda: len(pids_running(b"fusefs.template")) == 1, what="the driver to exit")


def test_a_detached_mounts_holder_cannot_open_devices_or_gain_setuid_after_clearing_flags(
    workspace: Workspace,
) -> None:
    """The holder of a detached mount attaches it where it owns the mount namespace, so it
    may clear nodev and nosuid (mount_setattr); the image's world-open device node and
    setuid-root program must stay harmless all the same."""
    broker = workspace.start_broker()
    image = privileged_files_image(workspace.directory("hostile"))
    answer = workspace.call(
        "escalate", str(broker.socket), str(image), str(workspace.directory("attach"))
    )
    assert answer["setattr"] == 0  # the flags were cleared: the test means something
    assert answer["device"] == errno.EACCES
    assert answer["euid"] == answer["own_euid"], answer


# -- policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "fs", "reason"),
    [
        ('[filesystems]\nallowed = ["ext4"]\n', "squashfs", "squashfs is not an allowed"),
        ("[images]\nmax_size = 4096\n", "ext4", "more than 4096"),
        ("[callers]\nuids = [4242]\n", "ext4", "may not use this broker"),
        (
            '[filesystems]\nallowed = []\ntrusted_only = ["ext4"]\n'
            '[images]\ntrusted_directories = ["/nonexistent"]\n',
            "ext4",
            "must be under a trusted directory",
        ),
    ],
)
def test_a_request_the_policy_refuses_mounts_nothing(
    workspace: Workspace, policy: str, fs: str, reason: str
) -> None:
    broker = workspace.start_broker(policy)
    target = workspace.directory("mnt")
    answer = workspace.call("mount", str(broker.socket), str(workspace.image(fs)), str(target))
    assert answer["error"] == "PolicyDenied", answer
    assert reason in answer["parameters"]["reason"]
    assert mounted_fs_type(target) is None
    assert "PolicyDenied" in broker.logged()


def test_images_under_a_trusted_directory_may_be_of_trusted_only_types(
    workspace: Workspace,
) -> None:
    image = workspace.image("ext4")
    policy = (
        '[filesystems]\nallowed = []\ntrusted_only = ["ext4"]\n'
        f'[images]\ntrusted_directories = ["{workspace.root}"]\n'
    )
    broker = workspace.start_broker(policy)
    target = workspace.directory("mnt")
    assert workspace.call("mount", str(broker.socket), str(image), str(target))["type"] == "ext4"
    force_unmount(target)


def test_mounts_per_user_are_counted(workspace: Workspace) -> None:
    broker = workspace.start_broker("[limits]\nmounts_per_user = 1\n")
    first, second = workspace.directory("one"), workspace.directory("two")
    image = str(workspace.image("ext4"))
    assert "id" in workspace.call("mount", str(broker.socket), image, str(first))
    answer = workspace.call("mount", str(broker.socket), image, str(second))
    assert answer["error"] == "PolicyDenied" and "limit per user" in answer["parameters"]["reason"]
    assert mounted_fs_type(second) is None
    force_unmount(first)


def test_a_directory_the_caller_does_not_own_is_refused(workspace: Workspace) -> None:
    broker = workspace.start_broker()
    target = workspace.directory("roots", owner=0)
    answer = workspace.call("mount", str(broker.socket), str(workspace.image("ext4")), str(target))
    assert answer["error"] == "PolicyDenied" and "caller's own" in answer["parameters"]["reason"]
    assert mounted_fs_type(target) is None


def test_an_image_the_driver_refuses_is_refused_with_its_reason(workspace: Workspace) -> None:
    broker = workspace.start_broker()
    junk = workspace.root / "junk.img"
    junk.write_bytes(b"\x5a" * 65536)
    junk.chmod(0o644)
    answer = workspace.call("mount", str(broker.socket), str(junk), str(workspace.directory("m")))
    assert answer["error"] == "ImageRefused"
    assert "no supported file system" in answer["parameters"]["reason"]


# -- malformed input -----------------------------------------------------------------------


def mount_call(**parameters: Any) -> bytes:
    body = {"method": "io.pyfsmount.Broker.Mount", "parameters": parameters}
    return json.dumps(body).encode() + b"\0"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"this is not json\0", "org.varlink.service.InvalidParameter"),
        (b"[1, 2, 3]\0", "org.varlink.service.InvalidParameter"),
        (b'{"method": 42}\0', "io.pyfsmount.Broker.InvalidParameter"),
        (b'{"method": "io.pyfsmount.Broker.Nope"}\0', "org.varlink.service.MethodNotFound"),
        (mount_call(image="zero"), "io.pyfsmount.Broker.InvalidParameter"),
        (mount_call(image=0, directory=1), "io.pyfsmount.Broker.InvalidParameter"),
        (
            mount_call(image=0, detached=True, readOnly=False),
            "io.pyfsmount.Broker.InvalidParameter",
        ),
        (mount_call(image=0, detached="yes"), "io.pyfsmount.Broker.InvalidParameter"),
        (mount_call(image=0, detached=True, surprise=1), "io.pyfsmount.Broker.InvalidParameter"),
    ],
)
def test_malformed_requests_get_a_named_error(
    workspace: Workspace, data: bytes, error: str
) -> None:
    broker = workspace.start_broker()
    before = broker.settled_descriptors()
    reply, _ = raw_call(broker.socket, data)
    assert reply["error"] == error, reply
    assert answers(broker.socket)
    wait_for(lambda: broker.descriptors() == before, what="the broker to close what it got")


@pytest.mark.parametrize("kind", ["directory", "socket", "write-only"])
def test_an_image_descriptor_that_is_no_image_is_refused(workspace: Workspace, kind: str) -> None:
    broker = workspace.start_broker()
    before = broker.settled_descriptors()
    if kind == "directory":
        fd = os.open(workspace.root, os.O_RDONLY | os.O_DIRECTORY)
    elif kind == "socket":
        fd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).detach()
    else:
        fd = os.open(workspace.image("ext4"), os.O_WRONLY)
    try:
        reply, _ = raw_call(broker.socket, mount_call(image=0, detached=True), [fd])
    finally:
        os.close(fd)
    assert reply["error"] == "io.pyfsmount.Broker.InvalidParameter"
    assert reply["parameters"]["parameter"] == "image"
    wait_for(lambda: broker.descriptors() == before, what="the broker to close what it got")


def test_a_huge_message_ends_the_connection_and_nothing_else(workspace: Workspace) -> None:
    broker = workspace.start_broker()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(broker.socket))
        s.settimeout(20)
        # The broker hangs up after MAX_MESSAGE bytes, as it should.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(b"x" * (10 * 1024 * 1024))
        reply = s.recv(65536)
    assert b"longer than" in reply or reply == b""
    assert str(MAX_MESSAGE) in broker.logged()
    assert answers(broker.socket)


def test_a_message_cut_midway_is_dropped(workspace: Workspace) -> None:
    broker = workspace.start_broker()
    before = broker.settled_descriptors()
    image = os.open(workspace.image("ext4"), os.O_RDONLY)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(broker.socket))
        socket.send_fds(s, [mount_call(image=0, detached=True)[:25]], [image])
    os.close(image)
    wait_for(lambda: "in the middle of a message" in broker.logged(), what="the log line")
    wait_for(lambda: broker.descriptors() == before, what="the broker to close the image")
    assert answers(broker.socket)


def test_a_thousand_requests_in_a_burst_are_all_answered(workspace: Workspace) -> None:
    broker = workspace.start_broker()
    burst = b'{"method":"io.pyfsmount.Broker.List"}\0' * 1000
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(broker.socket))
        s.settimeout(30)
        s.sendall(burst)
        received = b""
        while received.count(b"\0") < 1000:
            chunk = s.recv(1 << 16)
            assert chunk, "the broker hung up"
            received += chunk
    replies = [json.loads(r) for r in received.split(b"\0")[:1000]]
    assert all(r == {"parameters": {"mounts": []}} for r in replies)


# -- callers and brokers that die ----------------------------------------------------------


def test_a_caller_gone_before_its_reply_leaks_nothing(workspace: Workspace) -> None:
    broker = workspace.start_broker()
    image = os.open(workspace.image("ext4"), os.O_RDONLY)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(broker.socket))
        socket.send_fds(s, [mount_call(image=0, detached=True)], [image])
    os.close(image)
    # The mount fd could not be delivered: it is closed, the mount and its driver end.
    wait_for(lambda: "mounted image" in broker.logged(), what="the mount")
    wait_for(lambda: "ended, driver exit" in broker.logged(), what="the driver to end")
    wait_for(lambda: len(pids_running(b"fusefs.template")) == 1, what="only the template")


def test_mounts_outlive_a_killed_broker_and_a_new_one_takes_them_over(
    workspace: Workspace,
) -> None:
    broker = workspace.start_broker()
    target = workspace.directory("mnt")
    workspace.call("mount", str(broker.socket), str(workspace.image("ext4")), str(target))
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait()
    time.sleep(0.2)
    readme = workspace.as_user("cat", str(target / README))
    assert readme.returncode == 0 and readme.stdout.startswith("This is")
    restarted = workspace.start_broker()
    (adopted,) = workspace.call("list", str(restarted.socket))["mounts"]
    assert (adopted["target"], adopted["type"], adopted["driverPid"]) == (str(target), "ext4", None)
    other = workspace.directory("other")
    squashfs = str(workspace.image("squashfs"))
    answer = workspace.call("mount", str(restarted.socket), squashfs, str(other))
    assert answer["type"] == "squashfs"
    assert workspace.call("unmount", str(restarted.socket), str(adopted["id"])) == {"ok": True}
    assert mounted_fs_type(target) is None
    force_unmount(other)


# -- the command line ----------------------------------------------------------------------


def test_pyfsmount_via_the_broker_needs_no_privilege(workspace: Workspace) -> None:
    broker = workspace.start_broker('[filesystems]\nallowed = ["ext4"]\n')
    target = workspace.directory("mnt")
    command = [sys.executable, "-m", "fusefs", "--broker", "--broker-socket", str(broker.socket)]
    done = workspace.as_user(*command, str(workspace.image("ext4")), str(target))
    assert (done.returncode, done.stderr) == (0, "")
    assert mounted_fs_type(target) == "fuse.pyfsmount"
    other = workspace.directory("other")
    refused = workspace.as_user(*command, str(workspace.image("squashfs")), str(other))
    assert refused.returncode == 32
    assert refused.stderr.strip().splitlines() == [
        "pyfsmount: the broker refused: PolicyDenied: squashfs is not an allowed file system type"
    ]
    force_unmount(target)


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)
def test_the_broker_serves_a_socket_systemd_passes_it(workspace: Workspace) -> None:
    sock = workspace.root / "activated.sock"
    command = ["systemd-socket-activate", "-l", str(sock)]
    command += [sys.executable, "-m", "fusefs.broker", "--socket", "/nonexistent/unused"]
    with subprocess.Popen(command, cwd=PROJECT, stderr=subprocess.PIPE) as activator:
        try:
            wait_for(sock.exists, what="the socket")
            reply, _ = raw_call(sock, b'{"method":"org.varlink.service.GetInfo"}\0')
            assert "io.pyfsmount.Broker" in reply["parameters"]["interfaces"]
            description, _ = raw_call(
                sock,
                b'{"method":"org.varlink.service.GetInterfaceDescription",'
                b'"parameters":{"interface":"io.pyfsmount.Broker"}}\0',
            )
            assert "method Mount(" in description["parameters"]["description"]
        finally:
            activator.terminate()
