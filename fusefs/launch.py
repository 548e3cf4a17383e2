"""One mount, end to end: open the image, start its driver process, mount, supervise.

The launcher (this module) never parses the image.  It opens it read-only, starts
``python -m fusefs.driver`` with only that descriptor and a control socket, and waits
for the driver's verdict.  Only once the driver has opened the volume is the FUSE
mount made (the only privileged step) and its channel passed to the driver.  The
launcher then stays as a small supervisor: when the driver ends (unmounted, killed,
crashed) it makes sure no dead mount is left behind; when it is told to stop
(SIGTERM, SIGINT, SIGHUP) it unmounts, which ends the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Protocol

from fusefs.control import ControlError, control_pair, recv_message, send_message
from fusefs.mount import (
    MountError,
    MountRequest,
    check_mountpoint,
    find_our_mount,
    is_mounted,
    mount_fuse,
    tune_readahead,
    unmount,
)
from fusefs.options import MountOptions
from fusefs.template import Template, TemplateError, module_command

log = logging.getLogger("pyfsmount")

#: How long a driver may take to validate an image before the mount is refused.
OPEN_TIMEOUT = 60.0
#: How long a driver may take to stop once its mount is gone.
STOP_TIMEOUT = 10.0

#: What the sandbox's waiting parent says when seccomp killed the driver.
SECCOMP_KILL_LINE = re.compile(r"driver \(pid (\d+)\) killed by seccomp")

EXIT_USAGE = 1  # mount(8): incorrect invocation or permissions
EXIT_FAILURE = 32  # mount(8): mount failure


class LaunchError(Exception):
    """The mount could not be made; the message is the one line the user sees."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Process(Protocol):
    """What the launcher needs of a driver process: ``subprocess.Popen`` for one it
    started itself, :class:`fusefs.template.TemplateDriver` for one a template forked."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


@dataclass
class DriverProcess:
    """A running driver process, its control socket and the tail of its log."""

    process: Process
    control: socket.socket
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    log_thread: threading.Thread | None = None

    def forward_log(self, log_fd: int) -> None:
        """Relay the driver's stderr lines (the read end of its pipe) into our log."""
        with open(log_fd, "rb") as stream:
            self._forward_lines(stream)

    def _forward_lines(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.log_tail.append(line)
            level_name, sep, text = line.partition(": ")
            level = logging.getLevelName(level_name) if sep else None
            if not isinstance(level, int):  # not a log record: a traceback, a print
                level, text = logging.WARNING, line
            log.log(level, "%s", text)

    def seccomp_victim(self) -> int | None:
        """The host pid of a driver the sandbox reported killed by seccomp, if any."""
        for line in reversed(self.log_tail):
            match = SECCOMP_KILL_LINE.search(line)
            if match:
                return int(match.group(1))
        return None

    def last_words(self) -> str:
        return self.log_tail[-1] if self.log_tail else ""

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        if self.log_thread is not None:
            self.log_thread.join(timeout=1.0)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


def driver_config(options: MountOptions) -> dict[str, object]:
    """What the driver process is told about its mount (plain JSON values)."""
    return {
        "fs_type": options.fs_type,
        "offset": options.offset,
        "partition": options.partition,
        "driver_options": options.driver_options,
        "uid": options.uid,
        "gid": options.gid,
        "umask": options.umask,
        "debug": options.debug,
        "sandbox": options.sandbox,
        "max_memory": options.max_memory,
        "busy_poll_us": options.busy_poll_us,
        "request_timeout": options.request_timeout,
    }


def start_driver(
    image_fd: int, options: MountOptions, listing: bool = False, template: Template | None = None
) -> DriverProcess:
    """Start a driver process holding only the image and its end of the control socket:
    forked by ``template`` if one is given, else a fresh ``python -m fusefs.driver``.

    With ``listing`` it describes the image's partitions and exits instead of serving.
    """
    ours, theirs = control_pair()
    log_r, log_w = os.pipe2(os.O_CLOEXEC)
    process: Process
    with theirs:
        try:
            if template is not None:
                try:
                    process = template.start(theirs.fileno(), image_fd, log_w)
                except TemplateError as exc:
                    raise LaunchError(str(exc)) from None
            else:
                process = subprocess.Popen(
                    module_command("fusefs.driver", str(theirs.fileno()), str(image_fd)),
                    pass_fds=(theirs.fileno(), image_fd),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log_w,
                    start_new_session=True,  # a terminal's ^C goes to the launcher
                    env=driver_environment(),
                )
        except BaseException:
            os.close(log_r)
            ours.close()
            raise
        finally:
            os.close(log_w)
    driver = DriverProcess(process, ours)
    driver.log_thread = threading.Thread(target=driver.forward_log, args=(log_r,), daemon=True)
    driver.log_thread.start()
    send_message(ours, {**driver_config(options), "list": listing})
    return driver


def driver_environment() -> dict[str, str]:
    """The driver inherits only what Python needs to find the project.

    ``PYFSMOUNT_TEST_*`` variables reach it too: the test suite's attack payloads
    (fusefs.sandbox runs one only when such a variable names it; nothing sets them
    outside the tests).
    """
    keep = ("PATH", "PYTHONPATH", "LANG", "LC_ALL")
    return {
        name: value
        for name, value in os.environ.items()
        if name in keep or name.startswith("PYFSMOUNT_TEST_")
    }


def open_image(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise LaunchError(f"{path}: {exc.strerror}", EXIT_USAGE) from None


def await_verdict(driver: DriverProcess) -> dict[str, object]:
    """The driver's answer to opening the volume, within OPEN_TIMEOUT."""
    driver.control.settimeout(OPEN_TIMEOUT)
    try:
        reply, _ = recv_message(driver.control)
    except TimeoutError:
        driver.kill()
        raise LaunchError(f"the driver took over {OPEN_TIMEOUT:.0f} s to open the image") from None
    except (ControlError, OSError):
        code = driver.wait()
        victim = driver.seccomp_victim()
        reason = f"the driver died ({describe_exit(code, victim)})"
        if victim is None and driver.last_words():
            reason += f": {driver.last_words()}"
        raise LaunchError(reason) from None
    finally:
        driver.control.settimeout(None)
    return reply


def describe_exit(code: int, seccomp_victim: int | None = None) -> str:
    """``exit status 2``, ``killed by SIGKILL``, ``killed by seccomp: syscall ptrace``."""
    if code == -signal.SIGSYS and seccomp_victim is not None:
        from fusefs.sandbox import driver_killed_by  # rarely needed; imports take start time

        name = driver_killed_by(seccomp_victim)
        return f"killed by seccomp: syscall {name or 'unknown (kernel log not readable)'}"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@dataclass
class Mount:
    """A mount being served: its target, kernel device id and driver."""

    target: str
    device: str | None
    driver: DriverProcess
    stop_requested: bool = False

    def request_stop(self) -> None:
        """Unmount; the driver then sees its channel close and exits."""
        self.stop_requested = True
        if self.device is not None and is_mounted(self.target, self.device):
            try:
                unmount(self.target, lazy=True)
            except MountError as exc:
                log.error("%s", exc)

    def supervise(self) -> int:
        """Wait for the driver to end; leave no dead mount behind; return an exit code."""
        code = self.driver.wait()
        left_over = self.device is not None and is_mounted(self.target, self.device)
        if left_over:
            if not self.stop_requested:
                log.error(
                    "driver for %s ended (%s); unmounting",
                    self.target,
                    describe_exit(code, self.driver.seccomp_victim()),
                )
            try:
                unmount(self.target, lazy=True)
            except MountError as exc:
                log.error("%s", exc)
        elif code != 0:
            log.error("driver for %s ended (%s)", self.target, describe_exit(code))
        return 0 if code == 0 or (self.stop_requested and code < 0) else EXIT_FAILURE


def make_mount(
    image: str, target: str, options: MountOptions, template: Template | None = None
) -> Mount:
    """Open, validate, mount and hand over: return once the mount is being served.

    With a ``template``, the driver is forked from it instead of started afresh."""
    target = os.path.realpath(target)  # canonical now: once mounted, resolving it would block
    try:
        check_mountpoint(target)
    except MountError as exc:
        raise LaunchError(str(exc), EXIT_USAGE) from None
    image_fd = open_image(image)
    try:
        driver, _ = open_in_driver(image_fd, options, image, template)
    finally:
        os.close(image_fd)  # only the driver keeps the image open
    request = MountRequest(
        target=target,
        source=options.fsname or os.path.abspath(image),
        flags=options.flags,
        allow_other=options.allow_other,
    )
    try:
        fuse_fd = mount_fuse(request)
    except MountError as exc:
        abandon(driver)
        raise LaunchError(str(exc)) from None
    mount = serve(driver, fuse_fd, target, find_our_mount(target))
    raise_readahead(mount)
    return mount


def open_in_driver(
    image_fd: int, options: MountOptions, name: str, template: Template | None = None
) -> tuple[DriverProcess, dict[str, object]]:
    """A driver that has opened the volume on ``image_fd`` (the caller still closes its
    copy), and its verdict (``fs_type``, ``label``); LaunchError with the driver's reason
    if it refused the image."""
    driver = start_driver(image_fd, options, template=template)
    verdict = await_verdict(driver)
    if not verdict.get("ok"):
        driver.wait()
        raise LaunchError(f"{name}: {verdict.get('error', 'refused')}")
    return driver, verdict


def abandon(driver: DriverProcess) -> None:
    """No mount after all: the driver, waiting for its channel, exits."""
    with contextlib.suppress(ControlError, OSError):
        send_message(driver.control, {"abort": True})
    driver.wait()


def serve(driver: DriverProcess, fuse_fd: int, target: str, device: str | None) -> Mount:
    """Hand the mounted channel ``fuse_fd`` to the driver (closing ours) and return once
    it serves: the driver alone holds the channel, so if it dies the mount fails fast."""
    mount = Mount(target, device, driver)
    try:
        send_message(driver.control, {"fuse": True}, [fuse_fd])
    finally:
        os.close(fuse_fd)
    try:
        reply, _ = recv_message(driver.control)
    except (ControlError, OSError):
        reply = {}
    if not reply.get("serving"):
        mount.supervise()
        raise LaunchError(f"the driver failed to serve the mount: {driver.last_words()}")
    return mount


#: How long the first request may take before read-ahead tuning is given up.
FIRST_REQUEST_TIMEOUT = 5.0


def raise_readahead(mount: Mount) -> None:
    """Raise the mount's read-ahead once the kernel has taken the driver's INIT reply.

    The kernel sets the read-ahead from that reply (the lesser of the two, and libfuse
    answers the kernel's own 128 KiB), so a value written earlier is undone. The first
    request on a mount waits for INIT: a stat of the root, on a thread so that a hung
    driver delays the launcher by the timeout at most.
    """
    if mount.device is None or os.geteuid() != 0:
        return  # only root may write /sys/class/bdi
    answered = threading.Event()

    def first_request() -> None:
        with contextlib.suppress(OSError):
            os.stat(mount.target)
        answered.set()

    threading.Thread(target=first_request, name="first-request", daemon=True).start()
    if answered.wait(FIRST_REQUEST_TIMEOUT):
        tune_readahead(mount.device)
    else:
        log.warning("%s: no answer to a first request; read-ahead left as it is", mount.target)


def list_partitions(image: str, options: MountOptions) -> list[str]:
    """``--list``: the image's partitions and file systems, as a confined driver reads them.

    The table is untrusted input like any other on-disk structure, so it is parsed by a
    driver process in the sandbox, never by the launcher.
    """
    image_fd = open_image(image)
    try:
        driver = start_driver(image_fd, options, listing=True)
    finally:
        os.close(image_fd)
    verdict = await_verdict(driver)
    driver.wait()
    if not verdict.get("ok"):
        raise LaunchError(f"{image}: {verdict.get('error', 'refused')}")
    listing = verdict.get("listing")
    return [str(line) for line in listing] if isinstance(listing, list) else []


def install_stop_handlers(mount: Mount) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: unmounting %s", signal.Signals(signum).name, mount.target)
        mount.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)


def run_foreground(image: str, target: str, options: MountOptions) -> int:
    """``-f``: mount, serve until unmounted or interrupted, then return the exit code."""
    mount = make_mount(image, target, options)
    install_stop_handlers(mount)
    log.debug("serving %s at %s", image, target)
    return mount.supervise()


def run_background(
    image: str, target: str, options: MountOptions, to_background_log: Callable[[], None]
) -> int:
    """Mount, then leave a detached supervisor and return 0 once the mount is ready."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            status = ready.read()
        os.waitpid(pid, 0)  # the intermediate child exits at once
        if status.startswith(b"ok"):
            return 0
        code, _, message = status.decode(errors="replace").partition(" ")
        if message:
            print(f"pyfsmount: {message}", file=sys.stderr)
        return int(code) if code.isdigit() else EXIT_FAILURE
    # Child: become a session leader, fork once more so the supervisor is no session
    # leader (it can never regain a terminal), and let the intermediate exit.
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    reported = False

    def report(status: bytes) -> None:
        nonlocal reported
        if not reported:
            os.write(ready_w, status)
            os.close(ready_w)
            reported = True

    exit_code = EXIT_FAILURE
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        try:
            mount = make_mount(image, target, options)
        except LaunchError as exc:
            exit_code = exc.exit_code
            report(f"{exc.exit_code} {exc}".encode())
            os._exit(exit_code)
        install_stop_handlers(mount)
        to_background_log()
        report(b"ok")
        exit_code = mount.supervise()
    except BaseException as exc:  # a bug: say so where someone can see it
        log.exception("supervisor failed")
        report(f"{EXIT_FAILURE} internal error: {exc!r}".encode())
    finally:
        os._exit(exit_code)
