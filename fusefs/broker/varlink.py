"""Varlink framing on a Unix stream socket, with file descriptors.

A message is one JSON object followed by a NUL byte. A call is ``{"method": NAME,
"parameters": {...}}``; a reply is ``{"parameters": {...}}`` or, for a failure,
``{"error": NAME, "parameters": {...}}``. Descriptors travel with SCM_RIGHTS beside a
message, and its parameters name them by their index among the ones that came with it
(as systemd's varlink does: ``varlinkctl --push-fd``).

Everything here is bounded: a message longer than :data:`MAX_MESSAGE` bytes or more than
:data:`MAX_FDS` descriptors end the connection with an error, never an allocation.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE = 64 * 1024
MAX_FDS = 4
_RECV_SIZE = 16 * 1024


class ProtocolError(Exception):
    """The peer broke the framing (too big, not JSON, not an object, closed mid-way)."""


@dataclass
class Message:
    """One received message: its JSON object and the descriptors that came with it."""

    body: dict[str, Any]
    fds: list[int] = field(default_factory=list)

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


class Connection:
    """Reads messages from, and writes them to, one stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._fds: list[int] = []

    def receive(self) -> Message | None:
        """The next message; None when the peer closed between messages."""
        while True:
            end = self._buffer.find(b"\0")
            if end >= 0:
                raw = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                fds, self._fds = self._fds, []
                return Message(self._decode(raw, fds), fds)
            if len(self._buffer) > MAX_MESSAGE:
                self._drop_fds()
                raise ProtocolError(f"message longer than {MAX_MESSAGE} bytes")
            data, fds = self._recv()
            self._fds += fds
            if len(self._fds) > MAX_FDS:
                self._drop_fds()
                raise ProtocolError(f"more than {MAX_FDS} descriptors with one message")
            if not data:
                self._drop_fds()
                if self._buffer:
                    raise ProtocolError("connection closed in the middle of a message")
                return None
            self._buffer += data

    def send(self, body: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(body).encode() + b"\0"
        if fds:
            sent = socket.send_fds(self.sock, [data], fds)
            if sent < len(data):
                self.sock.sendall(data[sent:])
        else:
            self.sock.sendall(data)

    def reply(self, parameters: dict[str, Any], fds: list[int] | None = None) -> None:
        self.send({"parameters": parameters}, fds)

    def error(self, name: str, **parameters: Any) -> None:
        self.send({"error": name, "parameters": parameters})

    def _recv(self) -> tuple[bytes, list[int]]:
        fds = array.array("i")
        data, ancillary, flags, _ = self.sock.recvmsg(
            _RECV_SIZE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize)
        )
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % fds.itemsize
                fds.frombytes(payload[:usable])
        received = list(fds)
        if flags & socket.MSG_CTRUNC:
            for fd in received:
                os.close(fd)
            raise ProtocolError(f"more than {MAX_FDS} descriptors with one message")
        return data, received

    def _drop_fds(self) -> None:
        Message({}, self._fds).close_fds()
        self._fds = []

    @staticmethod
    def _decode(raw: bytes, fds: list[int]) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            Message({}, fds).close_fds()
            raise ProtocolError(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            Message({}, fds).close_fds()
            raise ProtocolError("a message must be a JSON object")
        return body
