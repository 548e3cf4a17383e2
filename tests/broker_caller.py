"""A caller of the broker, run by the tests as an unprivileged user; prints one JSON line.

python -m tests.broker_caller mount SOCKET IMAGE DIR [TYPE]
python -m tests.broker_caller detached SOCKET IMAGE ATTACH_DIR
python -m tests.broker_caller escalate SOCKET IMAGE ATTACH_DIR   (tests.support.escalation)
python -m tests.broker_caller list SOCKET
python -m tests.broker_caller unmount SOCKET ID
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

from fusefs.broker.client import BrokerClient, BrokerError
from tests.support.escalation import try_escalation

CLONE_NEWNS, CLONE_NEWUSER = 0x20000, 0x10000000
SYS_MOVE_MOUNT, MOVE_MOUNT_F_EMPTY_PATH, AT_FDCWD = 429, 4, -100


def attach(mount_fd: int, directory: str) -> None:
    """Attach a detached mount in a user and mount namespace of our own."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    flags = MOVE_MOUNT_F_EMPTY_PATH
    if libc.syscall(SYS_MOVE_MOUNT, mount_fd, b"", AT_FDCWD, directory.encode(), flags) != 0:
        raise OSError(ctypes.get_errno(), "move_mount")


def run(action: str, socket_path: str, args: list[str]) -> dict[str, Any]:
    with BrokerClient(socket_path) as broker:
        if action == "list":
            return {"mounts": broker.list()}
        if action == "unmount":
            broker.unmount(int(args[0]))
            return {"ok": True}
        with open(args[0], "rb") as image:
            if action == "mount":
                options = {"type": args[2]} if len(args) > 2 else {}
                mounted = broker.mount(image.fileno(), directory=args[1], **options)
                return {"id": mounted.id, "type": mounted.type}
            mounted = broker.mount(image.fileno(), detached=True)
    assert mounted.mount_fd is not None
    attach(mounted.mount_fd, args[1])
    os.close(mounted.mount_fd)
    if action == "escalate":
        return try_escalation(args[1])
    return {"id": mounted.id, "type": mounted.type, "listing": sorted(os.listdir(args[1]))}


def main() -> None:
    action, socket_path, *args = sys.argv[1:]
    try:
        result = run(action, socket_path, args)
    except BrokerError as exc:
        result = {"error": exc.name, "parameters": exc.parameters}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
