"""The broker service: one thread per connection, one confined driver per mount.

Every request is answered and logged in one line (who, what image by device and inode,
which type, the decision). A refused request mounts nothing. Mounts at a target stay
after the caller disconnects (as with fusermount3) until unmounted; a detached mount
lives as long as the caller holds its fd or has attached it; either way the driver
exits when its mount is gone, and the broker's supervisor thread forgets it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import stat
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusefs.broker.policy import TYPE_NAMES, Policy
from fusefs.broker.varlink import Connection, Message, ProtocolError
from fusefs.launch import LaunchError, Mount, abandon, open_in_driver, serve
from fusefs.mount import (
    MountError,
    MountRequest,
    find_our_mount,
    is_mounted,
    mount_as_root,
    mount_detached,
    unescape_mountinfo,
    unmount,
)
from fusefs.options import MS_NODEV, MS_NOSUID, MS_RDONLY, MountOptions
from fusefs.template import Template

log = logging.getLogger("pyfsmount.broker")

INTERFACE = "io.pyfsmount.Broker"
DESCRIPTION = (Path(__file__).parent / f"{INTERFACE}.varlink").read_text()
#: Connections served at once; more wait in the listen backlog.
MAX_CONNECTIONS = 64
#: A connection that sends nothing for this long is closed.
IDLE_TIMEOUT = 30.0
BLKGETSIZE64 = 0x80081272


class CallError(Exception):
    """A request refused with a varlink error ``name`` and its parameters."""

    def __init__(self, name: str, **parameters: Any) -> None:
        super().__init__(f"{name} {parameters}")
        self.name = name
        self.parameters = parameters


def denied(reason: str) -> CallError:
    return CallError(f"{INTERFACE}.PolicyDenied", reason=reason)


def invalid(parameter: str, reason: str) -> CallError:
    return CallError(f"{INTERFACE}.InvalidParameter", parameter=parameter, reason=reason)


@dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"uid={self.uid} pid={self.pid}"


@dataclass
class BrokerMount:
    id: int
    owner: int
    fs_type: str
    image: str  # "major:minor:inode"
    target: str | None  # None: detached
    #: None for a mount an earlier broker made (adopted from mountinfo: see adopt_mounts).
    mount: Mount | None
    done: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.owner,
            "type": self.fs_type,
            "image": self.image,
            "target": self.target,
            "detached": self.target is None,
            "driverPid": None if self.mount is None else self.mount.driver.process.pid,
        }


#: The mount source the broker gives its mounts: ``pyfsmount-broker:TYPE:DEV:INO``.
SOURCE_PREFIX = "pyfsmount-broker:"
#: How often mounts adopted from an earlier broker are checked for being gone.
ADOPTED_CHECK_INTERVAL = 2.0


class Broker:
    """Serves the broker protocol on ``listener`` until :meth:`stop`."""

    def __init__(self, listener: socket.socket, policy: Policy, template: Template | None) -> None:
        self.listener = listener
        self.policy = policy
        self.template = template
        self.mounts: dict[int, BrokerMount] = {}
        self.lock = threading.Lock()
        self.next_id = 1
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.stopping = threading.Event()
        self.adopt_mounts()

    def adopt_mounts(self) -> None:
        """Take over the mounts at directories that an earlier broker made (their source
        names them), so that list and unmount work across a restart. Their drivers are
        not ours to supervise: a watcher forgets each once it is unmounted."""
        adopted = []
        for target, device, source, owner in broker_mounts():
            fs_type, _, image = source[len(SOURCE_PREFIX) :].partition(":")
            with self.lock:
                entry = BrokerMount(self.next_id, owner, fs_type, image, target, None)
                self.next_id += 1
                self.mounts[entry.id] = entry
            adopted.append((entry, device))
            log.info("adopted mount %d (uid %d) at %s", entry.id, owner, target)
        if adopted:
            threading.Thread(target=self._watch_adopted, args=(adopted,), daemon=True).start()

    def _watch_adopted(self, adopted: list[tuple[BrokerMount, str]]) -> None:
        while adopted and not self.stopping.wait(ADOPTED_CHECK_INTERVAL):
            for entry, device in list(adopted):
                if entry.target is None or not is_mounted(entry.target, device):
                    adopted.remove((entry, device))
                    self._forget(entry)

    # -- the accept loop -----------------------------------------------------------------

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                if self.stopping.is_set():
                    return
                raise
            self.slots.acquire()
            threading.Thread(target=self._serve_connection, args=(sock,), daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)

    def _serve_connection(self, sock: socket.socket) -> None:
        try:
            with sock:
                sock.settimeout(IDLE_TIMEOUT)
                pid, uid, gid = struct.unpack(
                    "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                )
                self._converse(Connection(sock), Caller(pid, uid, gid))
        except Exception:
            log.exception("connection failed")
        finally:
            self.slots.release()

    def _converse(self, connection: Connection, caller: Caller) -> None:
        while True:
            try:
                message = connection.receive()
            except ProtocolError as exc:
                log.warning("%s: protocol error: %s", caller, exc)
                with contextlib.suppress(OSError):
                    connection.error("org.varlink.service.InvalidParameter", parameter=str(exc))
                return
            except (TimeoutError, OSError):
                return
            if message is None:
                return
            try:
                self._answer(connection, caller, message)
            except OSError:
                return  # the caller went away; what was mounted stays (or goes, detached)
            finally:
                message.close_fds()

    def _answer(self, connection: Connection, caller: Caller, message: Message) -> None:
        method = message.body.get("method")
        parameters = message.body.get("parameters", {})
        try:
            if not isinstance(parameters, dict):
                raise invalid("parameters", "must be an object")
            if not isinstance(method, str):
                raise invalid("method", "must be a string")
            if not self.policy.caller_allowed(caller.uid, caller.gid):
                raise denied(f"uid {caller.uid} may not use this broker")
            handler = self._methods().get(method)
            if handler is None:
                raise CallError("org.varlink.service.MethodNotFound", method=method)
            reply, fds = handler(caller, parameters, message)
        except CallError as exc:
            log.info("%s: %s refused: %s %s", caller, method, exc.name, exc.parameters)
            connection.error(exc.name, **exc.parameters)
            return
        try:
            connection.reply(reply, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _methods(self) -> dict[str, Any]:
        return {
            f"{INTERFACE}.Mount": self.call_mount,
            f"{INTERFACE}.List": self.call_list,
            f"{INTERFACE}.Unmount": self.call_unmount,
            "org.varlink.service.GetInfo": self.call_get_info,
            "org.varlink.service.GetInterfaceDescription": self.call_get_description,
        }

    # -- methods --------------------------------------------------------------------------

    def call_get_info(self, caller: Caller, parameters: dict[str, Any], message: Message) -> Any:
        return {
            "vendor": "pyfsmount",
            "product": "pyfsmount-broker",
            "version": "1",
            "url": "https://example.invalid/pyfsmount",
            "interfaces": ["org.varlink.service", INTERFACE],
        }, []

    def call_get_description(
        self, caller: Caller, parameters: dict[str, Any], message: Message
    ) -> Any:
        if parameters.get("interface") != INTERFACE:
            raise CallError(
                "org.varlink.service.InterfaceNotFound", interface=parameters.get("interface")
            )
        return {"description": DESCRIPTION}, []

    def call_list(self, caller: Caller, parameters: dict[str, Any], message: Message) -> Any:
        with self.lock:
            mine = [m for m in self.mounts.values() if caller.uid in (0, m.owner)]
        return {"mounts": [m.describe() for m in mine]}, []

    def call_unmount(self, caller: Caller, parameters: dict[str, Any], message: Message) -> Any:
        wanted = _int(parameters, "id", required=True)
        assert wanted is not None
        with self.lock:
            found = self.mounts.get(wanted)
        if found is None or caller.uid not in (0, found.owner):
            raise CallError(f"{INTERFACE}.NoSuchMount", id=wanted)
        if found.target is None:
            raise invalid("id", "a detached mount ends when its fd is closed and it is detached")
        if found.mount is None:  # adopted: no driver of ours to wait for
            try:
                unmount(found.target)
            except MountError as exc:
                raise CallError(f"{INTERFACE}.MountFailed", reason=str(exc)) from None
            self._forget(found)
        else:
            found.mount.request_stop()
            found.done.wait(10)
        log.info("%s: unmounted %d at %s", caller, found.id, found.target)
        return {}, []

    def call_mount(self, caller: Caller, parameters: dict[str, Any], message: Message) -> Any:
        request = self._mount_request(caller, parameters, message)
        image_fd = _reopen_read_only(request["image_fd"])
        try:
            driver, verdict = open_in_driver(image_fd, request["options"], "image", self.template)
        except LaunchError as exc:
            raise CallError(f"{INTERFACE}.ImageRefused", reason=str(exc)) from None
        finally:
            os.close(image_fd)
        fs_type = str(verdict.get("fs_type"))
        refusal = self.policy.type_refusal(fs_type, request["trusted"])
        if refusal is None:
            refusal = self._count_refusal(caller)
        if refusal is not None:
            abandon(driver)
            raise denied(refusal)
        mount_request = MountRequest(
            target=request["target"] or "",
            source=f"{SOURCE_PREFIX}{fs_type}:{request['image']}",
            flags=MS_RDONLY | MS_NOSUID | MS_NODEV,
            allow_other=request["allow_other"],
            owner=(caller.uid, caller.gid),
        )
        fds: list[int] = []
        try:
            if request["target"] is None:
                fuse_fd, mount_fd = mount_detached(mount_request)
                fds.append(mount_fd)
                device = None
            else:
                fuse_fd = mount_as_root(mount_request)
                device = find_our_mount(request["target_path"])
        except MountError as exc:
            abandon(driver)
            raise CallError(f"{INTERFACE}.MountFailed", reason=str(exc)) from None
        try:
            mount = serve(driver, fuse_fd, request["target_path"] or "", device)
        except LaunchError as exc:
            for fd in fds:
                os.close(fd)
            raise CallError(f"{INTERFACE}.MountFailed", reason=str(exc)) from None
        entry = self._remember(caller, fs_type, request, mount)
        log.info(
            "%s: mounted image %s (%s) %s as %d",
            caller,
            request["image"],
            fs_type,
            f"at {request['target_path']}" if request["target"] else "detached",
            entry.id,
        )
        reply: dict[str, Any] = {"id": entry.id, "type": fs_type, "label": verdict.get("label")}
        if fds:
            reply["mountFileDescriptor"] = 0
        return reply, fds

    # -- the parts of a mount request ---------------------------------------------------

    def _mount_request(
        self, caller: Caller, parameters: dict[str, Any], message: Message
    ) -> dict[str, Any]:
        """Check the parameters and the image; everything call_mount needs, or CallError."""
        known = {"image", "directory", "detached", "type", "partition", "offset", "uid", "gid"}
        known |= {"allowOther", "readOnly"}
        unknown = set(parameters) - known
        if unknown:
            raise invalid(sorted(unknown)[0], "unknown parameter")
        if parameters.get("readOnly", True) is not True:
            raise invalid("readOnly", "pyfsmount mounts read-only")
        image_fd = _fd(message, parameters, "image", required=True)
        assert image_fd is not None
        detached = parameters.get("detached", False)
        if not isinstance(detached, bool):
            raise invalid("detached", "must be true or false")
        directory_fd = _fd(message, parameters, "directory", required=not detached)
        if detached and directory_fd is not None:
            raise invalid("directory", "a mount is either detached or at a directory")
        if detached and not self.policy.detached_results:
            raise denied("detached mounts are not allowed here")
        if not detached and not self.policy.target_results:
            raise denied("mounts at a directory are not allowed here")
        image, size, path = _describe_image(image_fd)
        if size > self.policy.max_size:
            raise denied(f"the image is {size} bytes, more than {self.policy.max_size}")
        trusted = path is not None and self.policy.is_trusted(path)
        target_path = None
        if directory_fd is not None:
            target_path = _check_target(directory_fd, caller)
        allow_other = parameters.get("allowOther", False)
        if not isinstance(allow_other, bool):
            raise invalid("allowOther", "must be true or false")
        if allow_other and detached:
            # Its superblock belongs to a user namespace of its own (mount_detached), and
            # FUSE's allow_other admits only that namespace's processes: none.
            raise invalid("allowOther", "not available for a detached mount")
        if allow_other and caller.uid != 0 and not _user_allow_other():
            raise denied("allowOther needs user_allow_other in /etc/fuse.conf")
        fs_type = parameters.get("type", "auto")
        if not isinstance(fs_type, str) or (fs_type != "auto" and fs_type not in TYPE_NAMES):
            raise invalid("type", "not a file system type pyfsmount knows")
        options = MountOptions(
            fs_type=None if fs_type == "auto" else fs_type,
            offset=_int(parameters, "offset") or 0,
            partition=_int(parameters, "partition"),
            uid=_int(parameters, "uid"),
            gid=_int(parameters, "gid"),
            max_memory=self.policy.memory_per_mount,
        )
        return {
            "image_fd": image_fd,
            "image": image,
            "trusted": trusted,
            "target": None if directory_fd is None else f"/proc/self/fd/{directory_fd}",
            "target_path": target_path,
            "allow_other": allow_other,
            "options": options,
        }

    def _count_refusal(self, caller: Caller) -> str | None:
        with self.lock:
            total = len(self.mounts)
            own = sum(1 for m in self.mounts.values() if m.owner == caller.uid)
        if total >= self.policy.mounts_total:
            return f"the broker holds {total} mounts, its limit"
        if own >= self.policy.mounts_per_user:
            return f"uid {caller.uid} holds {own} mounts, the limit per user"
        return None

    def _remember(
        self, caller: Caller, fs_type: str, request: dict[str, Any], mount: Mount
    ) -> BrokerMount:
        with self.lock:
            entry = BrokerMount(
                self.next_id, caller.uid, fs_type, request["image"], request["target_path"], mount
            )
            self.next_id += 1
            self.mounts[entry.id] = entry
        threading.Thread(target=self._supervise, args=(entry,), daemon=True).start()
        return entry

    def _supervise(self, entry: BrokerMount) -> None:
        assert entry.mount is not None
        code = entry.mount.supervise()
        entry.mount.driver.control.close()
        self._forget(entry)
        log.info("mount %d (uid %d) ended, driver exit %d", entry.id, entry.owner, code)

    def _forget(self, entry: BrokerMount) -> None:
        with self.lock:
            self.mounts.pop(entry.id, None)
        entry.done.set()

    def unmount_all(self) -> None:
        """For tests and shutdown by hand: unmount every target mount this broker made."""
        with self.lock:
            entries = list(self.mounts.values())
        for entry in entries:
            if entry.target is not None:
                with contextlib.suppress(MountError):
                    unmount(entry.target)


# -- checks of what the caller sent ------------------------------------------------------


def broker_mounts() -> list[tuple[str, str, str, int]]:
    """(target, major:minor, source, owner uid) of every broker mount at a directory in
    this mount namespace, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            tail = fields[fields.index(b"-") + 1 :]
            if len(tail) < 3 or tail[0] != b"fuse.pyfsmount":
                continue
            source = os.fsdecode(unescape_mountinfo(tail[1]))
            options = dict(o.partition(b"=")[::2] for o in tail[2].split(b","))
            if source.startswith(SOURCE_PREFIX) and options.get(b"user_id", b"").isdigit():
                target = os.fsdecode(unescape_mountinfo(fields[4]))
                found.append((target, fields[2].decode(), source, int(options[b"user_id"])))
    return found


def _int(parameters: dict[str, Any], name: str, required: bool = False) -> int | None:
    value = parameters.get(name)
    if value is None:
        if required:
            raise invalid(name, "required")
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise invalid(name, "must be a non-negative integer")
    return value


def _fd(message: Message, parameters: dict[str, Any], name: str, required: bool) -> int | None:
    """The descriptor a parameter names by its index among those sent."""
    index = _int(parameters, name, required)
    if index is None:
        return None
    if index >= len(message.fds):
        raise invalid(name, f"names descriptor {index}, but {len(message.fds)} came")
    return message.fds[index]


def _describe_image(fd: int) -> tuple[str, int, str | None]:
    """("dev:ino", size, path if the fd's path still names the same file)."""
    try:
        st = os.fstat(fd)
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as exc:
        raise invalid("image", exc.strerror or "unusable descriptor") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise invalid("image", "not a regular file or a block device")
    if mode == os.O_WRONLY:
        raise invalid("image", "not open for reading")
    size = st.st_size
    if stat.S_ISBLK(st.st_mode):
        buffer = bytearray(8)
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, BLKGETSIZE64, buffer)
            size = int.from_bytes(buffer, "little")
    path: str | None = os.readlink(f"/proc/self/fd/{fd}")
    try:
        named = os.stat(path) if path else None
    except OSError:
        named = None
    if named is None or (named.st_dev, named.st_ino) != (st.st_dev, st.st_ino):
        path = None  # deleted, renamed or in another namespace: trusted by no directory
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}:{st.st_ino}", size, path


def _reopen_read_only(fd: int) -> int:
    """The driver gets a read-only descriptor of its own, whatever the caller sent."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise invalid("image", f"cannot be reopened read-only: {exc.strerror}") from None


def _check_target(fd: int, caller: Caller) -> str:
    """fusermount3's rule: the caller owns the directory and may write to it."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise invalid("directory", exc.strerror or "unusable descriptor") from None
    if not stat.S_ISDIR(st.st_mode):
        raise invalid("directory", "not a directory")
    if caller.uid != 0 and (st.st_uid != caller.uid or not st.st_mode & stat.S_IWUSR):
        raise denied("the mount directory must be the caller's own, and writable")
    return os.readlink(f"/proc/self/fd/{fd}")


def _user_allow_other() -> bool:
    try:
        lines = Path("/etc/fuse.conf").read_text().splitlines()
    except OSError:
        return False
    return any(line.strip() == "user_allow_other" for line in lines)
