"""The control channel between a launcher and its driver process.

One SOCK_SEQPACKET socketpair per mount carries small JSON messages, one per packet,
and passes file descriptors (the /dev/fuse channel) with SCM_RIGHTS.  The driver reads
only what this module parses: a message is a JSON object, nothing else.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

MAX_MESSAGE = 64 * 1024
MAX_FDS = 4


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


Watched = TypeVar("Watched", int, socket.socket, _HasFileno)


def wait_readable(watched: Sequence[Watched], timeout: float | None = None) -> list[Watched]:
    """Those of ``watched`` (descriptors, or objects with ``fileno()``) that are readable
    or hung up, waiting up to ``timeout`` seconds (None: for ever).

    poll(2), not select(2): a broker or template holding a few descriptors per mount
    passes descriptor 1024 (FD_SETSIZE) within a few hundred mounts, where
    ``select.select`` fails.
    """
    by_fd = {item if isinstance(item, int) else item.fileno(): item for item in watched}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    events = poller.poll(None if timeout is None else timeout * 1000)
    return [by_fd[fd] for fd, _ in events]


class ControlError(Exception):
    """The peer closed the channel or sent something that is not a message."""


def control_pair() -> tuple[socket.socket, socket.socket]:
    """(launcher end, driver end); neither is inherited by default."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_message(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> None:
    data = json.dumps(message).encode()
    if len(data) > MAX_MESSAGE:
        raise ControlError("control message too large")
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The next message and the descriptors that came with it."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if not data:
        for fd in fds:
            socket.close(fd)
        raise ControlError("peer closed the control channel")
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            socket.close(fd)
        raise ControlError("truncated control message")
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise ControlError(f"malformed control message: {exc}") from None
    if not isinstance(message, dict):
        raise ControlError("control message is not an object")
    return message, fds
