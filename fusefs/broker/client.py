"""The client side of the broker, for programs::

    from fusefs.broker.client import BrokerClient

    with BrokerClient() as broker, open("disk.img", "rb") as image:
        mounted = broker.mount(image.fileno(), directory="/home/me/mnt")
        ...
        broker.unmount(mounted.id)

``mount(..., detached=True)`` returns instead a detached mount fd (``mounted.mount_fd``)
to attach with move_mount(2) in a mount namespace the caller controls. Errors are
:class:`BrokerError`, named as the interface names them (``PolicyDenied``, ...).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from fusefs.broker import DEFAULT_SOCKET
from fusefs.broker.varlink import Connection, ProtocolError

INTERFACE = "io.pyfsmount.Broker"


class BrokerError(Exception):
    """The broker refused a call: ``name`` (without the interface) and its parameters."""

    def __init__(self, name: str, parameters: dict[str, Any]) -> None:
        self.name = name.rsplit(".", 1)[-1]
        self.parameters = parameters
        detail = parameters.get("reason") or ", ".join(f"{k}={v}" for k, v in parameters.items())
        if "parameter" in parameters and "reason" in parameters:
            detail = f"{parameters['parameter']}: {detail}"
        super().__init__(f"{self.name}: {detail}" if detail else self.name)


@dataclass(frozen=True)
class Mounted:
    id: int
    type: str
    label: str | None
    #: The detached mount's fd (the caller's to close), or None for a mount at a directory.
    mount_fd: int | None


class BrokerClient:
    """One connection to the broker; calls are answered in order."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 120.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.connection = Connection(self.sock)

    def call(
        self, method: str, parameters: dict[str, Any], fds: list[int] | None = None
    ) -> tuple[dict[str, Any], list[int]]:
        """One call; its reply's parameters and descriptors (BrokerError if refused)."""
        self.connection.send({"method": method, "parameters": parameters}, fds)
        try:
            reply = self.connection.receive()
        except ProtocolError as exc:
            raise BrokerError("ProtocolError", {"reason": str(exc)}) from None
        if reply is None:
            raise BrokerError("Disconnected", {"reason": "the broker closed the connection"})
        if "error" in reply.body:
            reply.close_fds()
            raise BrokerError(str(reply.body["error"]), reply.body.get("parameters") or {})
        return reply.body.get("parameters") or {}, reply.fds

    def mount(
        self,
        image_fd: int,
        directory: str | None = None,
        detached: bool = False,
        **options: Any,
    ) -> Mounted:
        """Mount the image open at ``image_fd`` at ``directory``, or detached."""
        fds = [image_fd]
        parameters: dict[str, Any] = {"image": 0, **options}
        directory_fd = None
        if directory is not None:
            directory_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(directory_fd)
            parameters["directory"] = 1
        if detached:
            parameters["detached"] = True
        try:
            reply, received = self.call(f"{INTERFACE}.Mount", parameters, fds)
        finally:
            if directory_fd is not None:
                os.close(directory_fd)
        mount_fd = received[0] if received else None
        for extra in received[1:]:
            os.close(extra)
        return Mounted(int(reply["id"]), str(reply["type"]), reply.get("label"), mount_fd)

    def list(self) -> list[dict[str, Any]]:
        reply, _ = self.call(f"{INTERFACE}.List", {})
        mounts = reply.get("mounts", [])
        return mounts if isinstance(mounts, list) else []

    def unmount(self, mount_id: int) -> None:
        self.call(f"{INTERFACE}.Unmount", {"id": mount_id})

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
