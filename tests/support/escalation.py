"""What the holder of a pyfsmount mount could get from a hostile image by changing the
mount's flags, for the broker and interceptor tests.

A caller that owns its mount namespace may clear nodev and nosuid on any mount there
with mount_setattr(2). The image then offers a character device open to all (1:5, the
kernel's zero) and a set-user-ID-root program (a copy of id(1)): neither may work,
because the FUSE superblock belongs to a user namespace of its own.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from fusefs.mount import AT_FDCWD, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, SYS_MOUNT_SETATTR, MountAttr

DEVICE, SETUID_PROGRAM = "zero", "id"


def privileged_files_image(directory: Path) -> Path:
    """An ext4 image (readable by anyone) of a world-open device node and a setuid-root
    program."""
    tree = directory / "privileged-tree"
    tree.mkdir()
    os.mknod(tree / DEVICE, 0o20666, os.makedev(1, 5))
    os.chmod(tree / DEVICE, 0o666)
    shutil.copyfile("/usr/bin/id", tree / SETUID_PROGRAM)
    os.chmod(tree / SETUID_PROGRAM, 0o4755)
    image = directory / "privileged.img"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(image), "4M"],
        check=True,
        capture_output=True,
    )
    image.chmod(0o644)
    return image


def try_escalation(mount_point: str) -> dict[str, object]:
    """Clear nodev and nosuid on the mount at ``mount_point``, then open the device and
    run the setuid program: the errno of each step (0: it worked) and the euid the
    program reports, beside our own."""
    libc = ctypes.CDLL(None, use_errno=True)
    attributes = MountAttr(0, MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID, 0, 0)
    rc = libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_long(AT_FDCWD),
        mount_point.encode(),
        ctypes.c_long(0),
        ctypes.byref(attributes),
        ctypes.c_long(ctypes.sizeof(attributes)),
    )
    result: dict[str, object] = {"setattr": ctypes.get_errno() if rc else 0}
    try:
        os.close(os.open(os.path.join(mount_point, DEVICE), os.O_RDONLY))
        result["device"] = 0
    except OSError as exc:
        result["device"] = exc.errno
    program = [os.path.join(mount_point, SETUID_PROGRAM), "-u"]
    ran = subprocess.run(program, capture_output=True, text=True, check=False)
    result["euid"], result["own_euid"] = ran.stdout.strip(), str(os.geteuid())
    return result
